"""A one-line summary of a FedKA run's final-round target metrics (for ``fedmatch show``)."""

from __future__ import annotations

from fedmatch.results import SERVER, MetricRow

__all__ = ["target_summary"]


def target_summary(rows: list[MetricRow]) -> str | None:
    """``None`` unless the run recorded FedKA's target metrics (``target-accuracy-*``)."""
    server = [r for r in rows if r.client == SERVER and r.metric == "target-accuracy-finetuned"]
    if not server:
        return None
    final = max(r.round for r in server)
    target = server[0].domain
    values = {
        r.metric: r.value
        for r in rows
        if r.client == SERVER and r.round == final and r.domain == target
    }

    def pct(metric: str) -> str:
        return f"{100 * values[metric]:.1f}%" if metric in values else "–"

    group = values.get("group-effect")
    return (
        f"target {target} (held out), round {final}: fine-tuned model "
        f"{pct('target-accuracy-finetuned')}, averaged model {pct('target-accuracy-averaged')}; "
        "pseudo-labels "
        f"{pct('pseudo-label-accuracy')} correct on {pct('pseudo-label-coverage')} of the voted "
        f"images; group effect {'–' if group is None else f'{100 * group:+.1f} points'}"
    )
