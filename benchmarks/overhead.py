"""How much wall time per round do fedmatch + Flower add over a plain PyTorch loop?

The same federated job is run twice:

1. **Through Flower**: a real ``flwr run . --stream`` simulation (Ray backend,
   ``num-supernodes=<clients>``, ``client-resources-num-cpus=<c>``) in a private
   FLWR_HOME with free ports, so it never meets a SuperLink someone else started.
   Per-round time is the mean of the ``round-seconds`` rows the ServerApp writes to
   ``metrics.jsonl`` (it times train + client evaluation + server evaluation of each
   round).  The end-to-end wall time of the ``flwr run`` command is also measured;
   ``wall − Σ round-seconds`` is everything that is not a round: CLI, SuperLink and
   simulation start, Ray and actor start, the clients loading their data, the
   initial server evaluation (round 0, full variant only), saving the final model,
   and tear-down.
2. **A plain PyTorch loop in one process**: the same data (``load_client_data`` with
   the same RunConfig), the same initial weights (``model_from_config`` with
   ``derive_seed(seed, 0)``, as the ServerApp does), the same SGD hyper-parameters and
   per-client shuffling seeds, a hand-written ``for x, y in loader`` loop with
   ``torch.optim.SGD`` (not fedmatch's ``train_local``), clients one after another, and
   FedAvg weighted by training-set sizes.  Each round is timed with
   ``time.perf_counter``.

Two variants keep the work per round identical on both sides:

- ``train-only``: Flower with ``server-eval=false fraction-evaluate=0.0``; the plain loop
  only trains and averages.
- ``full``: Flower's defaults (every client evaluates the global model on its test split,
  the server evaluates it on every domain's test split); the plain loop does the same
  evaluations each round (and the round-0 server evaluation outside the timed rounds).

Threads: Flower runs each virtual client in a Ray actor with ``num_cpus=<c>``; Ray sets
``OMP_NUM_THREADS`` to the actor's CPU count when it is unset, so with ``c=1`` two actors
train in parallel on the two cores with one torch thread each.  A small Ray probe (same Ray,
same mechanism) reports the actor's ``torch.get_num_threads()``.  The plain loop is sequential
and uses ``torch.set_num_threads(<plain-threads>)`` (default 2: the whole machine).

Accuracy (sanity check, outside all timings): the final global model of each side (Flower's
``model.pt``) is evaluated on every domain's test split; both should be similar and well
above chance (0.1).

Usage::

    python benchmarks/overhead.py [--rounds 3] [--clients 5] [--model-width 64] \
        [--train-subset 0] [--cpus-per-client 1] [--variants train-only,full]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fedmatch.config import RunConfig  # noqa: E402
from fedmatch.data.loaders import load_client_data, load_domains, to_tensors  # noqa: E402
from fedmatch.factories.models import model_from_config  # noqa: E402
from fedmatch.localrun import PrivateFlower  # noqa: E402
from fedmatch.results import read_metrics  # noqa: E402
from fedmatch.seeding import derive_seed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Scripts beside this one, not a package:
from overhead_load import TAG_VAR, ForeignCpu, Phase  # noqa: E402
from overhead_report import Measurement, fmt_seconds, print_report  # noqa: E402

VARIANTS = ("train-only", "full")
EVAL_BATCH_SIZE = 256  # what the ClientApp and the ServerApp use

# Runs in a fresh interpreter: a Ray actor with the clients' CPU share reports its threads.
RAY_PROBE = """
import json, sys
import ray
ray.init(address="local", num_cpus=int(sys.argv[1]), include_dashboard=False,
         log_to_driver=False, configure_logging=False)

@ray.remote
class Probe:
    def threads(self):
        import os
        import torch
        return {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                "torch_threads": torch.get_num_threads()}

actor = Probe.options(num_cpus=float(sys.argv[2])).remote()
print("PROBE " + json.dumps(ray.get(actor.threads.remote())))
ray.shutdown()
"""


def run_config(args: argparse.Namespace, variant: str, runs_dir: Path) -> dict[str, object]:
    """The run-config overrides of one variant (everything else: pyproject defaults)."""
    config: dict[str, object] = {
        "strategy": "fedavg",
        "partitioning": "domain",
        "model": "convnet",
        "local-epochs": 1,
        "num-server-rounds": args.rounds,
        "model-width": args.model_width,
        "train-subset": args.train_subset,
        "cache-dir": str(args.cache_dir),
        "runs-dir": str(runs_dir),
        "run-name": f"overhead-{variant}",
        "min-available-nodes": args.clients,
    }
    if variant == "train-only":
        config.update({"server-eval": False, "fraction-evaluate": 0.0})
    return config


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def accuracy(model: nn.Module, dataset: TensorDataset) -> tuple[float, int]:
    """Eval-mode accuracy; the loss is computed too, as the apps' evaluation does."""
    model.eval()
    correct, count = 0, 0
    for images, labels in DataLoader(dataset, batch_size=EVAL_BATCH_SIZE):
        logits = model(images)
        F.cross_entropy(logits, labels, reduction="sum")
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    return correct / count, count


def accuracy_per_domain(model: nn.Module, test_sets: dict[str, TensorDataset]) -> dict[str, float]:
    return {name: accuracy(model, data)[0] for name, data in test_sets.items()}


# ----------------------------------------------------------------------------- Flower


def probe_actor_threads(
    cpus_per_client: float, tag: str, timeout: float = 300
) -> dict[str, object]:
    """``OMP_NUM_THREADS`` and ``torch.get_num_threads()`` inside a Ray actor like Flower's."""
    env = {**os.environ, TAG_VAR: tag}
    env.pop("RAY_ADDRESS", None)
    env.pop("OMP_NUM_THREADS", None)
    node_cpus = os.cpu_count() or 1
    try:
        result = subprocess.run(
            [sys.executable, "-c", RAY_PROBE, str(node_cpus), str(cpus_per_client)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": "ray probe timed out"}
    for line in result.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line.removeprefix("PROBE "))
    return {"error": (result.stdout + result.stderr)[-500:]}


def run_flower(
    args: argparse.Namespace,
    variant: str,
    work: Path,
    test_sets: dict[str, TensorDataset],
) -> Measurement:
    """One ``flwr run`` in its own FLWR_HOME; its SuperLink tree is stopped afterwards."""
    runs_dir = work / f"runs-flower-{variant}"
    config = run_config(args, variant, runs_dir)
    flower = PrivateFlower.create(work / f"flwr-home-{variant}", {TAG_VAR: args.tag})
    try:
        start = time.perf_counter()
        result = flower.run(
            config,
            num_supernodes=args.clients,
            cpus_per_client=args.cpus_per_client,
            timeout=args.flower_timeout,
        )
        wall = time.perf_counter() - start
    finally:
        flower.stop()
    log_path = work / f"flwr-run-{variant}.log"
    log_path.write_text(result.stdout + result.stderr)
    run_dir = runs_dir / str(config["run-name"])
    if not (run_dir / "summary.json").exists():
        raise RuntimeError(
            f"`flwr run` ({variant}) wrote no summary.json (exit {result.returncode}); "
            f"last output:\n{(result.stdout + result.stderr)[-4000:]}"
        )
    rows = read_metrics(run_dir)
    round_seconds = [
        r.value for r in sorted(rows, key=lambda r: r.round) if r.metric == "round-seconds"
    ]
    train_per_round = [
        sum(r.value for r in rows if r.metric == "train-seconds" and r.round == rnd)
        for rnd in range(1, args.rounds + 1)
    ]
    model = model_from_config(RunConfig.from_flower(_app_config(config)))
    model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
    return Measurement(
        round_seconds=round_seconds,
        train_seconds_per_round=train_per_round,
        accuracy_per_domain=accuracy_per_domain(model, test_sets),
        wall_seconds=wall,
    )


def _app_config(overrides: dict[str, object]) -> dict[str, object]:
    """Flower's view of the run config: RunConfig defaults with the overrides applied."""
    return {**RunConfig().to_flower(), **overrides}


# ----------------------------------------------------------------------------- plain loop


def run_plain(
    args: argparse.Namespace, variant: str, work: Path, test_sets: dict[str, TensorDataset]
) -> Measurement:
    """FedAvg as a plain sequential PyTorch loop in this process."""
    cfg = RunConfig.from_flower(_app_config(run_config(args, variant, work / "runs-plain")))
    evaluate_each_round = variant == "full"
    clients = [load_client_data(cfg, pid, args.clients) for pid in range(args.clients)]
    weights = [len(c.train) for c in clients]
    global_model = model_from_config(cfg, init_seed=derive_seed(cfg.seed, 0))
    local_model = copy.deepcopy(global_model)

    if evaluate_each_round:  # the ServerApp's round-0 evaluation, outside the rounds
        accuracy_per_domain(global_model, test_sets)

    round_seconds, train_per_round = [], []
    for server_round in range(1, cfg.num_server_rounds + 1):
        start = time.perf_counter()
        global_state = {k: v.clone() for k, v in global_model.state_dict().items()}
        summed = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        train_seconds = 0.0
        for pid, client in enumerate(clients):
            local_model.load_state_dict(global_state)
            local_model.train()
            seed = derive_seed(cfg.seed, server_round, pid)  # the ClientApp's shuffling seed
            torch.manual_seed(seed)
            loader = DataLoader(
                client.train,
                batch_size=cfg.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
            optimizer = torch.optim.SGD(
                local_model.parameters(),
                lr=cfg.lr,
                momentum=cfg.momentum,
                weight_decay=cfg.weight_decay,
            )
            train_start = time.perf_counter()
            for _ in range(cfg.local_epochs):
                for x, y in loader:
                    loss = F.cross_entropy(local_model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
            train_seconds += time.perf_counter() - train_start
            for k, v in local_model.state_dict().items():
                summed[k] += v.double() * weights[pid]
        total = sum(weights)
        global_model.load_state_dict(
            {k: (v / total).to(global_state[k].dtype) for k, v in summed.items()}
        )
        if evaluate_each_round:
            for client in clients:  # client-side evaluation on each client's test split
                accuracy(global_model, client.test)
            accuracy_per_domain(global_model, test_sets)  # server-side evaluation
        round_seconds.append(time.perf_counter() - start)
        train_per_round.append(train_seconds)
        print(
            f"  plain {variant} round {server_round}/{cfg.num_server_rounds}: "
            f"{round_seconds[-1]:.1f} s (training {train_seconds:.1f} s)",
            flush=True,
        )
    return Measurement(
        round_seconds=round_seconds,
        train_seconds_per_round=train_per_round,
        accuracy_per_domain=accuracy_per_domain(global_model, test_sets),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=5, help="virtual clients (SuperNodes)")
    parser.add_argument("--model-width", type=int, default=64)
    parser.add_argument("--train-subset", type=int, default=0, help="0 = all training data")
    parser.add_argument("--cpus-per-client", type=float, default=1)
    parser.add_argument("--plain-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma list of train-only, full"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path("~/.cache/fedmatch").expanduser(),
        help="embedded-data cache (built once, before any timing)",
    )
    parser.add_argument("--flower-timeout", type=float, default=1800)
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep run directories and logs in this folder"
    )
    args = parser.parse_args(argv)
    args.cache_dir = args.cache_dir.expanduser().resolve()
    if args.cpus_per_client == int(args.cpus_per_client):
        args.cpus_per_client = int(args.cpus_per_client)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        parser.error(f"--variants: unknown {bad}; use a comma list of {', '.join(VARIANTS)}")
    args.variant_list = variants
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.tag = uuid.uuid4().hex
    torch.set_num_threads(args.plain_threads)
    loads = [("start", os.getloadavg())]
    sampler = ForeignCpu(args.tag).start()
    phases: list[Phase] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fedmatch-overhead-") as tmp:
            work = args.keep.resolve() if args.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            # Build the data cache (and the server-side test sets) before anything is timed.
            base = RunConfig.from_flower(_app_config(run_config(args, "full", work / "runs")))
            test_sets = {d.name: to_tensors(d.x_test, d.y_test) for d in load_domains(base)}
            print(f"data ready in {args.cache_dir}: domains {', '.join(test_sets)}", flush=True)
            probe = probe_actor_threads(args.cpus_per_client, args.tag)
            print(f"Ray actor probe: {probe}", flush=True)

            results: dict[str, tuple[Measurement, Measurement]] = {}
            for variant in args.variant_list:
                print(f"flower {variant}: flwr run ...", flush=True)
                with Phase(sampler, f"flower {variant}") as phase:
                    flower = run_flower(args, variant, work, test_sets)
                phases.append(phase)
                print(
                    f"  flower {variant}: rounds {fmt_seconds(flower.round_seconds)} s, "
                    f"wall {flower.wall_seconds:.1f} s; {phase.describe()}",
                    flush=True,
                )
                loads.append((f"after flower {variant}", os.getloadavg()))
                with Phase(sampler, f"plain {variant}") as phase:
                    plain = run_plain(args, variant, work, test_sets)
                phases.append(phase)
                print(f"  {phase.describe()}", flush=True)
                loads.append((f"after plain {variant}", os.getloadavg()))
                results[variant] = (flower, plain)
            print_report(args, results, probe, loads, phases)
            if args.keep:
                print(f"run directories and `flwr run` logs kept in {work}")
    finally:
        sampler.stop()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
