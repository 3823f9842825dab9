"""Packing keeps every token, never overfills a row, and restarts positions per sample."""

from __future__ import annotations

import random

import numpy as np
import pytest

from caregpt.data.packing import PackBatch, first_fit_decreasing
from caregpt.data.templates import IGNORE_INDEX


def test_first_fit_decreasing_fills_and_keeps_all():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    bins = first_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # FFD is within 11/9 OPT + 1 bins; the trivial lower bound is ceil(total / capacity)
    assert len(bins) <= int(np.ceil(sum(lengths) / 128) * 11 / 9) + 1


def test_too_long_sample_is_refused():
    with pytest.raises(ValueError, match="does not fit cutoff_len 8"):
        first_fit_decreasing([9], 8)


def test_pack_preserves_tokens_positions_and_masks_boundaries():
    rng = np.random.default_rng(0)
    samples = [rng.integers(5, 1000, size=int(n)).tolist() for n in rng.integers(3, 60, size=40)]
    labels = [[IGNORE_INDEX] * 2 + s[2:] for s in samples]
    out = PackBatch(64).pack({"input_ids": samples, "labels": labels})
    recovered = []
    for ids, labs, pos, lens in zip(out["input_ids"], out["labels"], out["position_ids"], out["seq_lens"]):
        assert len(ids) <= 64 and sum(lens) == len(ids) == len(labs) == len(pos)
        start = 0
        for n in lens:
            piece = ids[start : start + n].tolist()
            assert pos[start : start + n].tolist() == list(range(n))
            assert labs[start] == IGNORE_INDEX  # nothing before a sample may predict its first token
            original = samples[[i for i, s in enumerate(samples) if s == piece][0]]
            assert labs[start + 1 : start + n].tolist() == labels[samples.index(original)][1:]
            recovered.append(piece)
            start += n
    assert sorted(map(tuple, recovered)) == sorted(map(tuple, samples))
    assert sum(out["num_samples"]) == len(samples)
