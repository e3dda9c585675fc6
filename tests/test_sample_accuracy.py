"""The sample class-accuracy scorer (fedmatch.diffusion.sample_accuracy)."""

from __future__ import annotations

import torch

from fedmatch.diffusion.sample_accuracy import (
    ClassifierSchedule,
    SampleAccuracyScorer,
    cached_classifier,
    classifier_key,
    data_digest,
)
from tests.test_generators import toy_digits

# Small and quick: 2 epochs of 512 toy digits (16 steps each) at width 8.
SCHEDULE = ClassifierSchedule(width=8, depth=2, epochs=2, batch_size=32)


def _noise(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_scorer_separates_real_digits_from_noise(tmp_path):
    train_x, train_y = toy_digits(512, seed=0)
    inverted_x = -train_x  # a second "domain": inverted colours, its own classifier
    classifiers = {
        "a": cached_classifier(tmp_path, "a", train_x, train_y, SCHEDULE),
        "b": cached_classifier(tmp_path, "b", inverted_x, train_y, SCHEDULE),
    }
    test_x, test_y = toy_digits(200, seed=1)
    scorer = SampleAccuracyScorer(classifiers, {"a": (test_x, test_y), "b": (-test_x, test_y)})
    assert scorer.real["a"] > 0.9 and scorer.real["b"] > 0.9, scorer.real
    real_x, real_y = toy_digits(300, seed=2)
    balanced = torch.arange(300) % 10
    score = scorer.score(
        {"a": (real_x, real_y), "b": (_noise(300, 3), balanced)},
    )
    assert score["a"].samples > 0.9, score
    # Noise: whatever the classifier answers, balanced labels make every answer right 1/10 of
    # the time; 0.25 leaves room for a classifier that splits noise over a few classes.
    assert score["b"].samples < 0.25, score
    assert score["a"].real == scorer.real["a"]


def test_classifier_cache_is_reused_and_keyed_on_data_and_schedule(tmp_path):
    x, y = toy_digits(128, seed=0)
    first = cached_classifier(tmp_path, "a", x, y, SCHEDULE)
    files = sorted((tmp_path / "diffusion").glob("sample-classifier-*.pt"))
    assert len(files) == 1
    again = cached_classifier(tmp_path, "a", x, y, SCHEDULE)
    for p, q in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    assert len(list((tmp_path / "diffusion").glob("sample-classifier-*.pt"))) == 1
    digest = data_digest(x, y)
    key = classifier_key("a", digest, SCHEDULE)
    assert key != classifier_key("a", data_digest(x, (y + 1) % 10), SCHEDULE)
    assert key != classifier_key("a", digest, ClassifierSchedule(width=8, depth=2, epochs=3))
    assert key != classifier_key("b", digest, SCHEDULE)


def test_classifier_training_is_deterministic(tmp_path):
    x, y = toy_digits(128, seed=0)
    one = cached_classifier(tmp_path / "1", "a", x, y, SCHEDULE)
    two = cached_classifier(tmp_path / "2", "a", x, y, SCHEDULE)
    for p, q in zip(one.state_dict().values(), two.state_dict().values(), strict=True):
        assert torch.equal(p, q)
