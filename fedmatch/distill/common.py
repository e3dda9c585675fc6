"""Pieces DM and NCFM share: real-batch sampling, synthetic-set init, fresh networks, memory.

Every random choice draws from one ``torch.Generator`` on the CPU, so a distillation is a
function of its seed whatever device it runs on (up to GPU kernel nondeterminism).
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from fedmatch.distill.stats import class_channel_stats, sample_from_stats
from fedmatch.models.registry import build_model

log = logging.getLogger(__name__)

__all__ = [
    "DM_NET",
    "DistillHistory",
    "PeakMemory",
    "RealSampler",
    "check_dataset",
    "convnet_for",
    "draw_seed",
    "fresh_convnet",
    "init_synthetic",
    "measure_peak_memory",
]

# The DM/DC ConvNet: three blocks of 128 channels with instance norm.
DM_NET: Mapping[str, Any] = {"width": 128, "depth": 3, "norm": "instancenorm"}

# real: random real images; noise: N(0, 1); stats: N(μ_c, σ_c) per class and channel of the
# real images (FedLGD's initialisation, ``fedmatch.distill.stats``).
InitMode = Literal["real", "noise", "stats"]


@dataclass
class DistillHistory:
    """What a distillation did: the loss of every step, time and peak memory."""

    method: str
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    # CPU time of the process (all threads) during the run: on a busy machine it shows what
    # the work costs, where wall time also counts the waiting for a core.
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    # "cuda-allocated": torch.cuda.max_memory_allocated during the run; "cpu-rss": the
    # process's peak resident set (reset before the run where Linux allows, else lifetime).
    peak_memory_kind: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else float("nan")

    def window_mean(self, first: bool, window: int = 10) -> float:
        """Mean loss of the first or last ``window`` steps.

        Each step measures the loss in a different random network, so one step's value is
        noisy; a short window is what "the loss at the start/end" means here.
        """
        if not self.losses:
            return float("nan")
        part = self.losses[:window] if first else self.losses[-window:]
        return sum(part) / len(part)

    @property
    def final_loss(self) -> float:
        return self.window_mean(first=False)

    @property
    def initial_loss(self) -> float:
        return self.window_mean(first=True)


def check_dataset(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("cannot distil an empty dataset")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}"
        )


def draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def fresh_convnet(
    net: Mapping[str, Any],
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    seed: int,
    device: torch.device,
) -> nn.Module:
    """A randomly initialised ConvNet (weights a function of ``seed``), frozen, in train mode.

    Its parameters do not require gradients: matching differentiates only through the
    synthetic images, which saves the weight-gradient half of every backward pass.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(
            "convnet",
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            **dict(net),
        )
    model.to(device).train()
    model.requires_grad_(False)
    return model


def convnet_for(
    images: torch.Tensor,
    net: Mapping[str, Any],
    *,
    num_classes: int,
    seed: int,
    device: torch.device,
) -> nn.Module:
    """:func:`fresh_convnet` sized for ``images`` (N, C, H, W): C input channels, H pixels."""
    return fresh_convnet(
        net,
        in_channels=images.shape[1],
        num_classes=num_classes,
        image_size=images.shape[2],
        seed=seed,
        device=device,
    )


class RealSampler:
    """Per step, ``batch_real`` random real images of each class (all of it if fewer)."""

    def __init__(self, labels: torch.Tensor, classes: list[int], batch_real: int) -> None:
        if batch_real < 1:
            raise ValueError(f"batch_real must be at least 1, got {batch_real}")
        labels = labels.cpu()
        self.by_class = [torch.nonzero(labels == c).flatten() for c in classes]
        self.batch_real = batch_real

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """Indices into the dataset, grouped by class (DM's ``get_images`` for every class)."""
        picks = []
        for idx in self.by_class:
            order = torch.randperm(len(idx), generator=generator)[: self.batch_real]
            picks.append(idx[order])
        return torch.cat(picks)


def init_synthetic(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[int],
    ipc: int,
    init: InitMode,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` images per class, class-major: random real images (``init='real'``), N(0, 1)
    (``'noise'``) or noise with each class's per-channel mean and std (``'stats'``).

    A class with fewer than ``ipc`` real images fills the rest with noise: copies of one image
    would receive identical gradients and stay identical forever.
    """
    if ipc < 1:
        raise ValueError(f"ipc must be at least 1, got {ipc}")
    if init not in ("real", "noise", "stats"):
        raise ValueError(f"init must be 'real', 'noise' or 'stats', got {init!r}")
    if init == "stats":
        stats = class_channel_stats(images, labels, max(classes) + 1)
        return sample_from_stats(stats, classes, ipc, (images.shape[2], images.shape[3]), generator)
    shape = (len(classes) * ipc, *images.shape[1:])
    syn = torch.randn(shape, generator=generator)
    syn_labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(ipc)
    if init == "real":
        cpu_labels = labels.cpu()
        for k, c in enumerate(classes):
            idx = torch.nonzero(cpu_labels == c).flatten()
            chosen = idx[torch.randperm(len(idx), generator=generator)[:ipc]]
            if len(chosen) < ipc:
                log.warning(
                    "class %d has %d real images < ipc=%d: the rest start from noise",
                    c,
                    len(chosen),
                    ipc,
                )
            syn[k * ipc : k * ipc + len(chosen)] = images[chosen.to(images.device)].cpu()
    return syn, syn_labels


# ----------------------------------------------------------------------------- memory


@dataclass
class PeakMemory:
    bytes: int = 0
    kind: str = ""


def _reset_rss_peak() -> bool:
    # Writing "5" to clear_refs resets VmHWM (Linux >= 4.0); containers may forbid it.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # ru_maxrss is in KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@contextmanager
def measure_peak_memory(device: torch.device) -> Iterator[PeakMemory]:
    """Peak memory of the block: CUDA bytes allocated on a GPU, else the process's peak RSS.

    On the CPU the peak RSS includes everything the process holds (Python, torch, data), and
    where the peak cannot be reset it is the process's lifetime peak; ``kind`` says which.
    """
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.bytes = int(torch.cuda.max_memory_allocated(device))
        result.kind = "cuda-allocated"
        return
    reset = _reset_rss_peak()
    yield result
    result.bytes = _rss_peak_bytes()
    result.kind = "cpu-rss" if reset else "cpu-rss-lifetime"


class Stopwatch:
    """Wall and process CPU time of a block, synchronising CUDA so queued kernels count."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def __enter__(self) -> Stopwatch:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._start = time.perf_counter()
        self._cpu_start = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
        self.cpu_seconds = time.process_time() - self._cpu_start
