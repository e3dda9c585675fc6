"""The ``fedmatch`` command: look at run directories and manage the local SuperLink."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedmatch.results import format_domain_table


def _show(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir).expanduser()
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        print(f"error: {summary_path} does not exist (the run did not finish?)", file=sys.stderr)
        return 1
    summary = json.loads(summary_path.read_text())
    config = json.loads((run_dir / "config.json").read_text())["run_config"]
    print(f"run directory: {run_dir.resolve()}")
    print(
        f"strategy {config['strategy']}, {summary['final_round']} rounds, "
        f"{config['dataset']} data, {config['partitioning']} partitioning, seed {config['seed']}"
    )
    print(format_domain_table(summary))
    if summary.get("seconds_per_round") is not None:
        print(
            f"{summary['seconds_per_round']:.1f} s per round; "
            f"{summary['bytes_down_total'] / 1e6:.1f} MB down, "
            f"{summary['bytes_up_total'] / 1e6:.1f} MB up in total"
        )
    return 0


def _stop_superlink(args: argparse.Namespace) -> int:
    from fedmatch.localrun import local_superlink_port, local_superlinks, stale_reason, stop_tree

    # --if-stale looks at whichever SuperLink the next `flwr run` would use: the one
    # answering on the local port, whatever FLWR_HOME started it.
    port = local_superlink_port() if args.if_stale else None
    stopped = 0
    for pid in local_superlinks(args.flwr_home, port):
        if args.if_stale:
            reason = stale_reason(pid, str(Path(sys.executable).parent))
            if reason is None:
                continue
            print(f"restarting the local SuperLink (pid {pid}): {reason}")
        stop_tree(pid)
        stopped += 1
    if not args.if_stale:
        print(f"stopped {stopped} local SuperLink(s)" if stopped else "no local SuperLink running")
    return 0


def _report(args: argparse.Namespace) -> int:
    from fedmatch.report import ReportError, build_report, find_run_dirs

    runs_dir = Path(args.runs_dir).expanduser()
    run_dirs = find_run_dirs(runs_dir)
    out_dir = Path(args.out).expanduser() if args.out else runs_dir / "report"
    try:
        report = build_report(
            run_dirs, out_dir, target_accuracy=args.target_accuracy, strict=args.strict
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"report of {len(report.runs)} run(s): {report.markdown} (and report.html, summary.csv)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedmatch", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print a finished run's per-domain accuracy table")
    show.add_argument("run_dir")
    show.set_defaults(func=_show)
    stop = sub.add_parser(
        "stop-superlink",
        help="stop the background SuperLink `flwr run` started (needed after changing env vars)",
    )
    stop.add_argument("--flwr-home", default=None, help="only the one of this FLWR_HOME")
    stop.add_argument(
        "--if-stale",
        action="store_true",
        help="only SuperLinks whose environment cannot run fedmatch (used by `make demo`)",
    )
    stop.set_defaults(func=_stop_superlink)
    report = sub.add_parser(
        "report", help="report.md/.html, plots and summary.csv from run directories"
    )
    report.add_argument("runs_dir", help="a run directory, or a folder of run directories")
    report.add_argument("--out", default=None, help="output folder (default RUNS_DIR/report)")
    report.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help="for the rounds-to-target column (default 0.9 x the best final accuracy)",
    )
    report.add_argument(
        "--strict",
        action="store_true",
        help="refuse runs with different data/model/rounds instead of grouping them",
    )
    report.set_defaults(func=_report)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
