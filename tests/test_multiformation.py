"""Multi-formation (IDC's decode, NCFM's ρ = 2): layout, gradients, and both distillers."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from fedmatch.distill.dm import distill_dm
from fedmatch.distill.multiformation import decode, decode_images, encode, init_stored
from fedmatch.distill.ncfm import distill_ncfm
from fedmatch.factories.distill import distill_from_config
from tests.flower_harness import make_config
from tests.test_distill import TINY_NET, toy_digits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bar_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """test_distill's toy digits (class c: a bright bar at row band c), one channel."""
    images, labels = toy_digits(n_per_class=12)
    return images[:, :1].contiguous(), labels


def test_decode_cuts_a_grid_and_upsamples_each_block():
    stored = torch.arange(2 * 16, dtype=torch.float).reshape(2, 1, 4, 4)
    images, labels = decode(stored, torch.tensor([3, 5]), 2)
    assert images.shape == (8, 1, 4, 4)
    assert labels.tolist() == [3, 3, 3, 3, 5, 5, 5, 5]
    # Row 1 is block (0, 1) of image 0: [[2, 3], [6, 7]], bilinearly upsampled (half-pixel
    # centres, edges clamped): the corners keep the block's values.
    block = stored[0, 0, :2, 2:]
    assert images[1, 0, 0, 0] == block[0, 0] and images[1, 0, -1, -1] == block[1, 1]
    # Row 6 is block (1, 0) of image 1, and the mean of an upsampled block is its mean.
    assert torch.isclose(images[6].mean(), stored[1, 0, 2:, :2].mean())
    torch.testing.assert_close(decode_images(stored, 1), stored)


def test_decode_is_differentiable_and_every_pixel_gets_a_gradient():
    stored = torch.randn(3, 2, 8, 8, requires_grad=True)
    decode_images(stored, 2).square().sum().backward()
    assert stored.grad is not None and bool((stored.grad != 0).all())


def test_encode_tiles_downsampled_images_that_decode_back():
    images = torch.rand(8, 1, 12, 12)
    stored = encode(images, 2)
    assert stored.shape == (2, 1, 12, 12)
    # Tile (1, 0) of stored image 1 is image 4·1 + 2 averaged over 2x2 pixels.
    torch.testing.assert_close(stored[1, :, 6:, :6], F.avg_pool2d(images[6:7], 2)[0])
    expected = F.interpolate(F.avg_pool2d(images, 2), size=(12, 12), mode="bilinear")
    torch.testing.assert_close(decode_images(stored, 2), expected)


def test_factor_must_divide_the_image_size():
    images, labels = bar_digits()
    with pytest.raises(ValueError, match=r"factor \(multi-formation\) = 5 .*12x12.*\[1, 2, 3, 4"):
        distill_dm(images, labels, 1, 1, net=TINY_NET, factor=5, generator=torch.Generator())
    with pytest.raises(ValueError, match="at least 1"):
        init_stored(images, labels, [0], 1, "real", torch.Generator(), 0)
    # The run config refuses it before anything runs (the embedded images are 28x28).
    with pytest.raises(ValueError, match=r"run-config key 'distill\.factor' = 5.*28x28.*allowed"):
        make_config(distill_factor=5, model_width=8, model_depth=2, distill_steps=1)
    cfg = make_config(distill_factor=7, model_width=8, model_depth=2, distill_steps=1)
    with pytest.raises(ValueError, match=r"run-config key 'distill.factor'.*allowed"):
        distill_from_config(cfg, images, labels, seed=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="fresh start"):
        distill_dm(
            images,
            labels,
            1,
            1,
            net=TINY_NET,
            factor=2,
            start=(images, labels),
            generator=torch.Generator(),
        )


@pytest.mark.parametrize("method", ["dm", "ncfm"])
def test_distillers_match_through_the_decode_and_return_the_decoded_set(method):
    images, labels = bar_digits()
    common = dict(batch_real=8, net=TINY_NET, factor=2, generator=torch.Generator().manual_seed(0))
    if method == "dm":
        syn, syn_labels, history = distill_dm(images, labels, 2, 40, **common)
    else:
        syn, syn_labels, history = distill_ncfm(
            images, labels, 2, 40, num_frequencies=64, lr=0.05, **common
        )
    # 2 stored images per class, each decoded to 4.
    assert syn.shape == (24, 1, 12, 12)
    assert syn_labels.tolist() == [c for c in range(3) for _ in range(8)]
    assert history.extra["factor"] == 2 and history.extra["stored-images"] == 6
    assert history.final_loss < history.initial_loss

    # Every decoded image is a 6-px block upsampled: it lies in the range of the upsampling
    # operator (least-squares residual ~0), which a real 12-px image does not.
    basis = torch.eye(36).reshape(36, 1, 6, 6)
    upsample = F.interpolate(basis, size=(12, 12), mode="bilinear").reshape(36, 144).t()

    def residual(x: torch.Tensor) -> float:
        flat = x.reshape(len(x), 144).t()
        coeffs = torch.linalg.lstsq(upsample, flat).solution
        return float((upsample @ coeffs - flat).abs().max())

    assert residual(syn) < 1e-4
    assert residual(images) > 0.1


def test_real_init_with_a_factor_tiles_real_images_of_the_class():
    images, labels = bar_digits()
    stored, stored_labels = init_stored(
        images, labels, [0, 2], 1, "real", torch.Generator().manual_seed(0), 2
    )
    assert stored.shape == (2, 1, 12, 12) and stored_labels.tolist() == [0, 2]
    # Every tile of the class-2 image carries the class-2 bar (rows 8-11 → tile rows 4-5).
    for i in range(2):
        for j in range(2):
            tile = stored[1, 0, 6 * i : 6 * i + 6, 6 * j : 6 * j + 6]
            assert tile[4:6, 2:4].mean() > 0.5 and tile[:4].mean() < -0.5
