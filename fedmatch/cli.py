"""The ``fedmatch`` command: look at run directories and manage the local SuperLink."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from fedmatch.results import format_domain_table, read_metrics
from fedmatch.target_summary import target_summary


def _show(args: argparse.Namespace) -> int:
    from fedmatch.run_status import run_state

    run_dir = Path(args.run_dir).expanduser()
    state = run_state(run_dir)
    if state.status != "done":
        hint = {
            "failed": "the run failed",
            "interrupted": f"the run was interrupted after round {state.completed_round or 0} "
            "(continue it with resume=true and the same run-name)",
            "incomplete": "the run has not finished (still running, or killed: resume=true "
            "continues it)",
        }.get(state.status, f"{state.status} run directory")
        print(f"error: {hint}: {state.detail}", file=sys.stderr)
        return 1
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        config = json.loads((run_dir / "config.json").read_text())["run_config"]
        header = (
            f"strategy {config['strategy']}, {summary['final_round']} rounds, "
            f"{config['dataset']} data, {config['partitioning']} partitioning, "
            f"seed {config['seed']}"
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"error: {run_dir}: damaged config.json or summary.json ({err!r})", file=sys.stderr)
        return 1
    print(f"run directory: {run_dir.resolve()}")
    print(header)
    fid = summary.get("final_fid_per_domain")
    if fid:
        # The diffusion strategies: final-round FID-digits (not Inception-FID) per domain.
        print(
            "final FID-digits (not Inception-FID): "
            + ", ".join(f"{domain} {value:.2f}" for domain, value in sorted(fid.items()))
        )
    else:
        print(format_domain_table(summary))
    if (line := target_summary(read_metrics(run_dir))) is not None:
        print(line)  # FedKA: the held-out target's final-round metrics
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


def _deploy_local(args: argparse.Namespace) -> int:
    import tempfile

    from fedmatch.deploy_local import deploy_local

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedmatch-deploy-")).resolve()
    return deploy_local(args.nodes, args.run_config, workdir, insecure=args.insecure)


def _bench(args: argparse.Namespace) -> int:
    from fedmatch.bench.planning import BenchError
    from fedmatch.bench.progress import iter_outcome_lines
    from fedmatch.bench.runner import default_out_dir, run_suite
    from fedmatch.bench.suite import Suite, SuiteError
    from fedmatch.logs import setup_logging

    setup_logging()
    # A grid owns a Ray head and a SuperLink: turn termination into KeyboardInterrupt so
    # they are stopped (SIGINT too: shells start background jobs with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    suite_path = Path(args.suite).expanduser()
    try:
        suite = Suite.load(suite_path)
        out_dir = Path(args.out).expanduser() if args.out else default_out_dir(suite)
        result = run_suite(
            suite,
            out_dir,
            suite_text=suite_path.read_text(),
            shared_ray=False if args.no_shared_ray else None,
            report=not args.no_report,
        )
    except (SuiteError, BenchError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    for line in iter_outcome_lines(result):
        print(line)
    return 1 if result.failed else 0


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


def _config(args: argparse.Namespace) -> int:
    from fedmatch import config_reference
    from fedmatch.methods import MethodError

    if args.what == "pyproject":
        print(config_reference.defaults_toml(), end="")
    elif args.what == "docs":
        print(config_reference.reference_markdown(), end="")
    else:
        try:
            print(config_reference.method_listing(args.method), end="")
        except MethodError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


def _check(args: argparse.Namespace) -> int:
    """Validate a run config as `flwr run --run-config` would pass it, without Flower."""
    from fedmatch.config import ConfigError
    from fedmatch.launch import load_run_config

    try:
        cfg = load_run_config(Path(args.app), [args.run_config] if args.run_config else [])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ok: strategy {cfg.strategy!r}, {len(cfg.to_flower())} keys valid")
    return 0


def _run(args: argparse.Namespace) -> int:
    from fedmatch.launch import run
    from fedmatch.logs import setup_logging

    setup_logging()
    return run(
        Path(args.app).resolve(),
        args.run_config or [],
        connection=args.connection,
        federation_config=args.federation_config,
    )


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
    deploy = sub.add_parser(
        "deploy-local",
        help="run the app once on a local deployment: a SuperLink and one SuperNode process "
        "per client (Flower's deployment engine, no Docker), then stop them",
    )
    deploy.add_argument("--nodes", type=int, default=5, help="SuperNodes (partitions); default 5")
    deploy.add_argument("--run-config", default="", help="as for `flwr run --run-config`")
    deploy.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no SuperNode authentication (default: both, with certificates and "
        "keys made in --workdir); any local user can then submit runs or join",
    )
    deploy.add_argument("--workdir", default=None, help="logs, Flower homes (default: a temp dir)")
    deploy.set_defaults(func=_deploy_local)
    bench = sub.add_parser(
        "bench",
        help="run a benchmark suite (a grid of `flwr run` simulations; resumes), then report",
    )
    bench.add_argument("suite", help="suite file, e.g. benchmarks/suites/digits-quick.toml")
    bench.add_argument("--out", default=None, help="output folder (default runs/bench/<name>)")
    bench.add_argument(
        "--no-shared-ray", action="store_true", help="let every cell start its own Ray"
    )
    bench.add_argument("--no-report", action="store_true", help="skip the report at the end")
    bench.set_defaults(func=_bench)
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
    config = sub.add_parser(
        "config",
        help="the registered methods and their run-config keys (list), or the generated "
        "pyproject block / docs reference",
    )
    config.add_argument("what", choices=("list", "pyproject", "docs"))
    config.add_argument("method", nargs="?", default=None, help="list: one method's keys")
    config.set_defaults(func=_config)
    run = sub.add_parser(
        "run",
        help="`flwr run --stream` that Ctrl-C stops (run, simulation and Ray; the run is marked "
        "interrupted and resumable); exits 0 only when the run finished",
    )
    run.add_argument("app", nargs="?", default=".", help="the app directory (default: .)")
    run.add_argument(
        "connection", nargs="?", default=None, help="Flower connection (default: local)"
    )
    run.add_argument(
        "--run-config",
        action="append",
        help='"key=value ..." or a .toml file, as for `flwr run` (repeatable; later wins)',
    )
    run.add_argument("--federation-config", default=None, help="as for `flwr run`")
    run.set_defaults(func=_run)
    check = sub.add_parser(
        "check",
        help="validate a run config (as `flwr run --run-config` takes it) without starting "
        "Flower; exits 2 naming every bad key",
    )
    check.add_argument("--run-config", default="", help='"key=value ..." or a .toml file')
    check.add_argument("--app", default=".", help="the app directory (its pyproject.toml)")
    check.set_defaults(func=_check)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
