"""Which samples train, in which order: a seeded held-out split and length-bucketed batches.

:class:`BucketSampler` draws ``bucket_batches`` batches' worth of samples in a seeded
random order, sorts them by length and cuts batches from that run, so a batch holds similar
lengths and is mostly not padding. The order of epoch ``e`` is a pure function of
``(seed, e)``; the position ``(epoch, batch)`` is all a checkpoint needs to resume the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lrs_core.errors import DatasetError


def split_held_out(n_records: int, *, n_held_out: int, seed: int) -> tuple[list[int], list[int]]:
    """Split record indices into (train, held-out) with a seeded permutation.

    Raises:
        DatasetError: nothing would be left to train on.
    """
    if n_held_out >= n_records:
        raise DatasetError(
            f"eval_samples={n_held_out} leaves none of the {n_records} records to train on; "
            "lower eval_samples or add data"
        )
    order = np.random.default_rng([seed, n_records]).permutation(n_records)
    held = sorted(int(i) for i in order[:n_held_out])
    train = sorted(int(i) for i in order[n_held_out:])
    return train, held


@dataclass(frozen=True)
class BucketSampler:
    """Length-bucketed, seeded batches of sample indices; resumable from ``(epoch, batch)``.

    Attributes:
        lengths: sequence length of every sample.
        batch_size: samples per batch.
        bucket_batches: batches' worth of samples sorted by length together.
        seed: seed of the order.
    """

    lengths: tuple[int, ...]
    batch_size: int
    bucket_batches: int
    seed: int

    def epoch(self, epoch: int) -> list[list[int]]:
        """Return the batches of one epoch (a pure function of ``seed`` and ``epoch``)."""
        if not self.lengths:
            raise DatasetError("no training samples to draw batches from")
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        run = self.batch_size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), run):
            chunk = order[start : start + run]
            chunk = chunk[np.argsort(np.asarray(self.lengths)[chunk], kind="stable")]
            batches.extend(
                [int(i) for i in chunk[b : b + self.batch_size]]
                for b in range(0, len(chunk), self.batch_size)
            )
        return [batches[i] for i in rng.permutation(len(batches))]

    def next_batch(self, position: tuple[int, int]) -> tuple[list[int], tuple[int, int]]:
        """Return the batch at ``(epoch, batch)`` and the position after it."""
        epoch, index = position
        batches = self.epoch(epoch)
        if index >= len(batches):
            epoch, index = epoch + 1, 0
            batches = self.epoch(epoch)
        following = (epoch, index + 1) if index + 1 < len(batches) else (epoch + 1, 0)
        return batches[index], following

    def padding_fraction(self, epoch: int = 0) -> float:
        """Share of padded slots over one epoch's batches (0 = no padding)."""
        lengths = np.asarray(self.lengths)
        padded = real = 0
        for batch in self.epoch(epoch):
            real += int(lengths[batch].sum())
            padded += int(lengths[batch].max()) * len(batch)
        return 1.0 - real / max(padded, 1)
