"""The official DM's side of ``distill_time_to_accuracy.py``: a checkout of
VICO-UoE/DatasetCondensation imported from a path, and ``main_DM.py``'s training loop.

``main_DM.py`` keeps its loop inside ``main()`` next to dataset download, evaluation and image
saving, so the ~20 lines of the loop body (ConvNet branch) are mirrored in :func:`official_dm`;
every network, augmentation and evaluation they call comes from the checkout itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import torch

OFFICIAL = "official-dm"
OFFICIAL_FILES = ("utils.py", "networks.py")
# main_DM.py's argparse default (not importable: it lives inside its main()).
OFFICIAL_DSA = "color_crop_cutout_flip_scale_rotate"


def load_official(path: str) -> ModuleType:
    """The checkout's ``utils`` module, imported from ``path`` (its directory goes on sys.path:
    ``utils.py`` imports ``networks`` by name)."""
    root = Path(path).expanduser().resolve()
    missing = [name for name in OFFICIAL_FILES if not (root / name).is_file()]
    if missing:
        raise SystemExit(
            f"--official {path}: not a checkout of VICO-UoE/DatasetCondensation, missing "
            f"{', '.join(missing)} in {root}"
        )
    for name in ("utils", "networks"):  # another module of the same name must not shadow it
        held = sys.modules.get(name)
        if held is not None and Path(getattr(held, "__file__", "") or "").parent != root:
            del sys.modules[name]
    sys.path.insert(0, str(root))
    utils = importlib.import_module("utils")
    absent = [
        f
        for f in ("get_network", "evaluate_synset", "ParamDiffAug", "DiffAugment", "get_time")
        if not hasattr(utils, f)
    ]
    if absent:
        raise SystemExit(f"--official {path}: utils.py lacks {', '.join(absent)}")
    # Torch 2 on 1-channel images: DiffAugment's crop returns strides (HW, 1, W, 1), which
    # `.contiguous()` keeps (a 1-channel tensor is "contiguous" either way) but conv reads as
    # channels-last, and ConvNet.embed's `view` then fails.  Re-laying the augmented batch out
    # in memory changes no value; it is the only change made to the checkout's behaviour.
    utils.DiffAugment = _relaid(utils.DiffAugment)
    return utils


def _relaid(augment: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def diff_augment(x: torch.Tensor, strategy: str = "", seed: int = -1, param: Any = None):
        out = augment(x, strategy, seed=seed, param=param)
        standard = [int(np.prod(out.shape[i + 1 :])) for i in range(out.dim())]
        return (
            out
            if list(out.stride()) == standard
            else out.clone(memory_format=torch.contiguous_format)
        )

    return diff_augment


def official_dm(
    utils: ModuleType,
    x: torch.Tensor,
    y: torch.Tensor,
    start: torch.Tensor,
    iterations: int,
    official: SimpleNamespace,
    seed: int,
    on_step: Callable[[int, torch.Tensor], None],
) -> None:
    """main_DM.py's training loop (ConvNet branch, init 'real'), from ``start``;
    ``on_step(k, images)`` at the start (k = 0) and after every iteration k, as fedmatch's."""
    np.random.seed(seed)  # get_images draws with numpy's global generator, as main_DM.py
    indices_class = [torch.nonzero(y == c).flatten().numpy() for c in range(10)]
    ipc, (channel, *im_size) = official.ipc, x.shape[1:]

    def get_images(c: int, n: int) -> torch.Tensor:
        return x[np.random.permutation(indices_class[c])[:n]]

    image_syn = start.clone().requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=official.lr_img, momentum=0.5)
    on_step(0, image_syn.detach())
    for it in range(iterations):
        net = utils.get_network(official.model, channel, 10, tuple(im_size)).to(official.device)
        net.train()
        for param in list(net.parameters()):
            param.requires_grad = False
        loss = torch.tensor(0.0)
        for c in range(10):
            img_real = get_images(c, official.batch_real)
            img_syn = image_syn[c * ipc : (c + 1) * ipc]
            seed_dsa = int(time.time() * 1000) % 100000  # as main_DM.py: one clock seed per class
            img_real = utils.DiffAugment(
                img_real, official.dsa_strategy, seed=seed_dsa, param=official.dsa_param
            )
            img_syn = utils.DiffAugment(
                img_syn, official.dsa_strategy, seed=seed_dsa, param=official.dsa_param
            )
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss += torch.sum((output_real.mean(dim=0) - output_syn.mean(dim=0)) ** 2)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()
        on_step(it + 1, image_syn.detach())


def official_args(utils: ModuleType, args: argparse.Namespace) -> SimpleNamespace:
    """The ``args`` main_DM.py hands to the checkout's functions, at its defaults."""
    return SimpleNamespace(
        method="DM",
        dataset="MNIST",
        model="ConvNet",
        ipc=args.ipc,
        lr_img=1.0,
        lr_net=0.01,
        batch_real=args.batch_real,
        batch_train=256,
        epoch_eval_train=args.official_epochs,
        dsa_strategy=args.official_dsa_strategy,
        dsa=True,
        dsa_param=utils.ParamDiffAug(),
        dc_aug_param=None,
        device="cpu",
    )
