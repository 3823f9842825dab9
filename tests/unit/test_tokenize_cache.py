"""tokenize_block keeps one tokenizer per worker process, and loads it again when its files change."""

from __future__ import annotations

import numpy as np

from caregpt.data.tokenize import tokenize_block
from tests.unit.test_templates import make_tokenizer

BATCH = {"loc": np.array(["a.txt:1"]), "dataset": np.array(["a"]), "text": np.array(["fever and cough"])}


def _last_id(path) -> int:
    table = tokenize_block(BATCH, tokenizer_path=str(path), kind="text", template="default", cutoff_len=64)
    return table["input_ids"][0].as_py()[-1]  # a text row ends with the tokenizer's eos


def test_a_tokenizer_rewritten_at_the_same_path_is_loaded_again(tmp_path):
    first = make_tokenizer(eos="</s>")
    first.save_pretrained(tmp_path)
    assert _last_id(tmp_path) == first.eos_token_id
    assert _last_id(tmp_path) == first.eos_token_id  # the kept tokenizer, same answer
    second = make_tokenizer(eos="<s>")
    assert second.eos_token_id != first.eos_token_id
    second.save_pretrained(tmp_path)  # a new model written over the old one
    assert _last_id(tmp_path) == second.eos_token_id
