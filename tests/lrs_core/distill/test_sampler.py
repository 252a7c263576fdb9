"""Held-out split and length-bucketed, resumable batch order."""

from __future__ import annotations

import numpy as np
import pytest

from lrs_core.distill.sampler import BucketSampler, split_held_out
from lrs_core.errors import DatasetError


def test_bucket_sampler_is_deterministic_covers_every_sample_and_cuts_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = tuple(int(x) for x in rng.integers(100, 2000, size=97))
    sampler = BucketSampler(lengths=lengths, batch_size=4, bucket_batches=8, seed=1)
    epoch0 = sampler.epoch(0)
    assert epoch0 == sampler.epoch(0)
    assert epoch0 != sampler.epoch(1)
    assert sorted(i for b in epoch0 for i in b) == list(range(97))
    unbucketed = BucketSampler(lengths=lengths, batch_size=4, bucket_batches=1, seed=1)
    assert sampler.padding_fraction() < 0.5 * unbucketed.padding_fraction()
    # walking positions crosses epochs and reproduces the epoch lists
    position = (0, 0)
    seen = []
    for _ in range(len(epoch0) + 2):
        batch, position = sampler.next_batch(position)
        seen.append(batch)
    assert seen[: len(epoch0)] == epoch0
    assert seen[len(epoch0) :] == sampler.epoch(1)[:2]


def test_held_out_split() -> None:
    train, held = split_held_out(10, n_held_out=3, seed=0)
    assert len(held) == 3 and sorted(train + held) == list(range(10))
    assert split_held_out(10, n_held_out=3, seed=0) == (train, held)
    with pytest.raises(DatasetError, match="eval_samples"):
        split_held_out(3, n_held_out=3, seed=0)
