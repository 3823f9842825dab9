"""What a training worker feeds the model: the tokenized parquet copy, batched with little padding.

Why workers read the prepared parquet rather than a streaming Ray Data shard: a resumed run must
continue at exactly the sample where it stopped, on the same samples per rank. A map-style dataset
over an immutable tokenized copy gives the trainer's seeded sampler (and its batch skipping on
resume) that guarantee; a streaming split assigns blocks to workers by timing. The Ray Data
pipeline still does the heavy part (read, validate, template, tokenize, pack) once, in parallel.
"""

from __future__ import annotations

from pathlib import Path
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from caregpt.data.templates import IGNORE_INDEX


class TokenDataset(torch.utils.data.Dataset):
    """Token rows held as Arrow list arrays (int32 values + offsets: compact, no per-row objects)."""

    def __init__(self, table: pa.Table):
        self.columns = {name: table[name].combine_chunks() for name in table.column_names if pa.types.is_list(table[name].type)}
        self.lengths = np.asarray(table["length"].to_numpy(zero_copy_only=False), dtype=np.int64)

    @classmethod
    def from_parquet(cls, path: str | Path) -> TokenDataset:
        files = sorted(str(p) for p in Path(path).glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no tokenized parquet files in {path}; run `caregpt data prepare` or check tokenized_path")
        table = pads.dataset(files, format="parquet").to_table()
        return cls(table)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        out = {}
        for name, column in self.columns.items():
            start, end = column.offsets[index].as_py(), column.offsets[index + 1].as_py()
            out[name] = column.values[start:end].to_numpy(zero_copy_only=False)
        return out

    def subset(self, indices: np.ndarray) -> TokenDataset:
        table = pa.table({**{n: c.take(pa.array(indices)) for n, c in self.columns.items()}, "length": pa.array(self.lengths[indices])})
        return TokenDataset(table)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


def split_eval(dataset: TokenDataset, val_size: float, seed: int) -> tuple[TokenDataset, TokenDataset | None]:
    """Deterministic hold-out: the same rows go to eval on every worker and every restart."""
    if not val_size:
        return dataset, None
    count = int(val_size) if val_size >= 1 else max(1, int(round(len(dataset) * val_size)))
    if count >= len(dataset):
        raise ValueError(f"val_size={val_size} leaves no training data ({len(dataset)} rows)")
    order = np.random.default_rng(seed).permutation(len(dataset))
    eval_idx, train_idx = np.sort(order[:count]), np.sort(order[count:])
    return dataset.subset(train_idx), dataset.subset(eval_idx)


class PadCollator:
    """Pads a batch to its longest row (rounded up to pad_multiple for GPU kernels).

    Packed rows (with seq_lens) get a block-diagonal causal 4-D mask, so packed samples never
    attend to each other; padding positions attend only to themselves (an all-masked row would
    produce NaN in SDPA) and carry label IGNORE_INDEX.
    """

    def __init__(self, pad_token_id: int, pad_multiple: int = 1, varlen_attention: bool = False):
        self.pad_token_id = pad_token_id
        self.pad_multiple = max(1, pad_multiple)
        # FlashAttention finds packed samples from restarting position_ids (varlen kernels) and
        # takes no 4-D mask; SDPA / eager need the explicit block-diagonal mask
        self.varlen_attention = varlen_attention

    def _width(self, rows: list[np.ndarray]) -> int:
        longest = max(len(r) for r in rows)
        return -(-longest // self.pad_multiple) * self.pad_multiple

    def __call__(self, features: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
        width = self._width([f["input_ids"] for f in features])
        batch = len(features)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((batch, width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.from_numpy(f["input_ids"].astype(np.int64))
            labels[i, :n] = torch.from_numpy(f["labels"].astype(np.int64))
            attention[i, :n] = 1
        # the trainer pops real_tokens before the forward pass: it is what throughput is measured in
        out = {"input_ids": input_ids, "labels": labels, "real_tokens": attention.sum()}
        if "seq_lens" not in features[0]:
            out["attention_mask"] = attention
            return out
        positions, mask = self._packed_mask(features, width)
        out["position_ids"] = positions
        if not self.varlen_attention:
            out["attention_mask"] = mask
        return out

    @staticmethod
    def _packed_mask(features: list[dict[str, np.ndarray]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.zeros((len(features), width), dtype=torch.long)
        segments = torch.full((len(features), width), -1, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            positions[i, :n] = torch.from_numpy(f["position_ids"].astype(np.int64))
            segments[i, :n] = torch.repeat_interleave(torch.arange(len(f["seq_lens"])), torch.from_numpy(f["seq_lens"].astype(np.int64)))
        pad = segments < 0
        # padding: each position is its own segment, so every query row keeps one visible key
        segments[pad] = (width + torch.arange(width)).expand(len(features), -1)[pad]
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        mask = (segments[:, :, None] == segments[:, None, :]) & causal
        return positions, mask[:, None, :, :]
