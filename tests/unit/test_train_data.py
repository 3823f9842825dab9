"""What workers feed the model: padding, packing masks, the deterministic eval split."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from caregpt.data.packing import PackBatch
from caregpt.data.templates import IGNORE_INDEX
from caregpt.train.data import PadCollator, TokenDataset, split_eval


def _samples(rng, n=5):
    out = []
    for _ in range(n):
        ids = rng.integers(5, 300, size=int(rng.integers(6, 30))).astype(np.int32)
        labels = ids.copy()
        labels[: len(ids) // 3] = IGNORE_INDEX  # a masked prompt, as in SFT
        out.append({"input_ids": ids, "labels": labels})
    return out


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def _token_loss_sum(model, batch) -> tuple[float, int]:
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    labels = batch["labels"][:, 1:]
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
    return float(losses), int((labels != IGNORE_INDEX).sum())


def test_packed_loss_equals_unpacked_loss(model):
    samples = _samples(np.random.default_rng(0))
    collate = PadCollator(pad_token_id=0)
    unpacked = collate(samples)
    unpacked.pop("real_tokens")
    packed_rows = PackBatch(64).pack({"input_ids": [s["input_ids"] for s in samples], "labels": [s["labels"] for s in samples]})
    assert len(packed_rows["input_ids"]) < len(samples)  # really packed
    features = [{k: np.asarray(packed_rows[k][i]) for k in ("input_ids", "labels", "position_ids", "seq_lens")} for i in range(len(packed_rows["input_ids"]))]
    packed = collate(features)
    assert int(packed.pop("real_tokens")) == sum(len(s["input_ids"]) for s in samples)
    assert packed["attention_mask"].dim() == 4
    loss_u, n_u = _token_loss_sum(model, unpacked)
    loss_p, n_p = _token_loss_sum(model, packed)
    assert n_u == n_p  # the same tokens are trained on
    assert loss_p == pytest.approx(loss_u, rel=1e-4)  # and nothing leaks between packed samples


def test_padding_is_masked_and_counted(model):
    samples = _samples(np.random.default_rng(1), 3)
    batch = PadCollator(pad_token_id=0, pad_multiple=8)(samples)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(len(s["input_ids"]) for s in samples)
    assert int(batch["real_tokens"]) == int(batch["attention_mask"].sum()) == sum(len(s["input_ids"]) for s in samples)
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_flash_attention_mode_keeps_positions_only():
    rows = PackBatch(64).pack({"input_ids": [np.arange(5, 15), np.arange(5, 25)], "labels": [np.arange(5, 15), np.arange(5, 25)]})
    features = [{k: np.asarray(rows[k][0]) for k in ("input_ids", "labels", "position_ids", "seq_lens")}]
    batch = PadCollator(pad_token_id=0, varlen_attention=True)(features)
    assert "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == list(range(20)) + list(range(10)) or batch["position_ids"][0].tolist() == list(range(10)) + list(range(20))


def test_token_dataset_and_deterministic_eval_split():
    lists = [list(range(n)) for n in (3, 5, 7, 9, 11, 13, 15, 17, 19, 21)]
    table = pa.table({"input_ids": pa.array(lists, pa.list_(pa.int32())), "labels": pa.array(lists, pa.list_(pa.int32())), "length": pa.array([len(x) for x in lists], pa.int32())})
    data = TokenDataset(table)
    assert len(data) == 10 and data[3]["input_ids"].tolist() == list(range(9)) and data.num_tokens == sum(map(len, lists))
    train, held = split_eval(data, 0.2, seed=7)
    train2, held2 = split_eval(data, 0.2, seed=7)
    assert len(held) == 2 and len(train) == 8
    assert held.lengths.tolist() == held2.lengths.tolist() and train.lengths.tolist() == train2.lengths.tolist()
    assert sorted(train.lengths.tolist() + held.lengths.tolist()) == sorted(len(x) for x in lists)
    with pytest.raises(ValueError, match="leaves no training data"):
        split_eval(data, 10, seed=0)
