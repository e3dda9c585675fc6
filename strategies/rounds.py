"""What the round loop checks and logs after each round: finiteness and a progress line."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord

from fedmatch.results import SERVER, MetricRow


class NonFiniteError(RuntimeError):
    """A loss or the global model became inf/NaN: the run stops and is marked failed."""


def check_finite(server_round: int, arrays: ArrayRecord, rows: Iterable[MetricRow]) -> None:
    """Raise ``NonFiniteError`` naming what went inf/NaN this round (losses, then weights).

    A diverged run would otherwise go on training NaNs and end with a normal-looking
    summary; stopping at the first bad round keeps every earlier round's results.
    """
    bad_losses = sorted(
        {
            f"{row.metric} of client {row.client}"
            for row in rows
            if row.metric.endswith("loss") and not np.isfinite(row.value)
        }
    )
    bad_arrays = [name for name, array in arrays.items() if not np.isfinite(array.numpy()).all()]
    if bad_losses or bad_arrays:
        what = ", ".join(bad_losses[:5] + [f"global weights {n!r}" for n in bad_arrays[:5]])
        raise NonFiniteError(
            f"round {server_round}: non-finite values ({what}); the run stops here. "
            "Lower the learning rate (lr, or the method's own step sizes) or check the data."
        )


def progress_line(server_round: int, last_round: int, rows: list[MetricRow], seconds: float) -> str:
    """One log line: train loss, client/server accuracy (mean, worst domain), bytes, time."""

    def values(metric: str, server: bool) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for row in rows:
            if row.metric == metric and (row.client == SERVER) == server:
                out.setdefault(row.domain, []).append(row.value)
        return out

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    parts = [f"round {server_round}/{last_round}"]
    losses = [v for vs in values("train-loss", False).values() for v in vs]
    if losses:
        parts.append(f"train loss {mean(losses):.3f}")
    for label, server in (("client acc", False), ("server acc", True)):
        per_domain = {d: mean(v) for d, v in values("test-accuracy", server).items()}
        if per_domain:
            worst = min(per_domain, key=per_domain.get)
            parts.append(
                f"{label} {mean(list(per_domain.values())):.3f} "
                f"(worst {worst} {per_domain[worst]:.3f})"
            )
    down = sum(r.value for r in rows if r.metric == "bytes-down")
    up = sum(r.value for r in rows if r.metric == "bytes-up")
    parts.append(f"down {down / 1e6:.2f} MB up {up / 1e6:.2f} MB")
    parts.append(f"{seconds:.1f} s")
    return " | ".join(parts)
