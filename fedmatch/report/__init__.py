"""Reports from run directories: tables (pandas), plots (matplotlib), Markdown and HTML.

``build_report(run_dirs, out_dir)`` reads each run's ``config.json``,
``metrics.jsonl`` and ``summary.json`` (see ``fedmatch.results``) and writes into
``out_dir``:

- ``report.md`` and ``report.html`` (self-contained: the plots are embedded as
  base64 PNGs) with, per group of comparable runs, a summary table per strategy
  (mean ± sample std over seeds), four plots, and every run's exact config and the
  command that reproduces it;
- the plots as PNG files;
- ``summary.csv``: one row per run, for users' own analysis.

Accuracy is what ``summary.json`` calls ``mean_accuracy``: per domain, the mean over
that domain's clients of each client's model on its own test split (the "client
models" column of ``fedmatch show``, the one that is meaningful for FedBN); the server's
global-model rows are used only for runs without client evaluation.

Runs are only compared when they used the same data, model and number of rounds
(``GROUP_KEYS``): otherwise they are reported as separate groups, or refused with
``strict=True``.  Inside a group, runs with the same config apart from the seed form

Modules: ``runs`` (reading run directories, grouping comparable runs), ``tables`` (pandas
tables and their text), ``plots`` (matplotlib figures), ``document`` (the Markdown and
HTML writer), ``command`` (the shell command that reproduces a run), ``build``
(``build_report``).
"""

from fedmatch.report.build import RELATIVE_TARGET, Report, build_report
from fedmatch.report.command import reproduce_argv, reproduce_command
from fedmatch.report.runs import (
    GROUP_KEYS,
    NON_VARIANT_KEYS,
    Group,
    ReportError,
    RunData,
    find_run_dirs,
    group_runs,
    load_run,
)
from fedmatch.report.tables import format_variant_table, run_table, variant_table

__all__ = [
    "GROUP_KEYS",
    "NON_VARIANT_KEYS",
    "RELATIVE_TARGET",
    "Group",
    "Report",
    "ReportError",
    "RunData",
    "build_report",
    "find_run_dirs",
    "format_variant_table",
    "group_runs",
    "load_run",
    "reproduce_argv",
    "reproduce_command",
    "run_table",
    "variant_table",
]
