"""Sequence packing: several tokenized samples per row, no padding, no attention across samples.

Each packed row carries `position_ids` that restart at 0 for every sample. Transformers detects
packed sequences from restarting position ids and builds a block-diagonal causal mask (or uses
varlen FlashAttention), so samples never see each other. The first token of every sample gets
label IGNORE_INDEX: in an unpacked batch nothing predicts it either, which keeps the loss the same.
Bins are filled first-fit-decreasing within one Ray Data batch, so packing streams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from caregpt.data.templates import IGNORE_INDEX


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins whose total length fits capacity (each length must be <= capacity)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"sample of {size} tokens does not fit cutoff_len {capacity}; truncate before packing")
        for b, free in enumerate(room):
            if size <= free:
                bins[b].append(index)
                room[b] -= size
                break
        else:
            bins.append([index])
            room.append(capacity - size)
    return bins


class PackBatch:
    """Callable for `map_batches` over tokenized rows (input_ids, labels)."""

    def __init__(self, cutoff_len: int):
        self.cutoff_len = cutoff_len

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        out = self.pack(batch)
        ints = pa.list_(pa.int32())
        return pa.table({name: pa.array(values, type=ints if name not in ("length", "num_samples") else pa.int32()) for name, values in out.items()})

    def pack(self, batch: dict[str, Any]) -> dict[str, list]:
        ids = [np.asarray(x, dtype=np.int32) for x in batch["input_ids"]]
        labels = [np.asarray(x, dtype=np.int32) for x in batch["labels"]]
        out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "seq_lens": [], "length": [], "num_samples": []}
        for group in first_fit_decreasing([len(x) for x in ids], self.cutoff_len):
            masked = []
            for i in group:
                lab = labels[i].copy()
                lab[0] = IGNORE_INDEX
                masked.append(lab)
            out["input_ids"].append(np.concatenate([ids[i] for i in group]))
            out["labels"].append(np.concatenate(masked))
            out["position_ids"].append(np.concatenate([np.arange(len(ids[i]), dtype=np.int32) for i in group]))
            out["seq_lens"].append(np.asarray([len(ids[i]) for i in group], dtype=np.int32))
            out["length"].append(int(sum(len(ids[i]) for i in group)))
            out["num_samples"].append(len(group))
        return out
