"""Dense sentence embeddings: a local Hugging Face encoder directory or an OpenAI-compatible endpoint.

An index remembers which encoder built its vectors (`spec()`), so the query is always embedded by the
same one. Vectors are L2-normalised float32, so cosine similarity is a dot product.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from caregpt.kb.http import EndpointError, post_json


class LocalEncoder:
    """Mean-pooled token states of any local encoder (BERT-like) loaded with transformers' AutoModel.

    Mean pooling over the attention mask is what sentence-transformers models such as text2vec /
    bge / m3e are trained for (bge prefers the CLS vector but mean pooling ranks nearly as well).
    """

    def __init__(self, model_dir: str | Path, max_length: int = 256, batch_size: int = 16):
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a model directory (no config.json); give a local encoder directory")
        self.model_dir = str(path.resolve())
        self.max_length = max_length
        self.batch_size = batch_size
        self._model = None
        self._tokenizer = None

    def spec(self) -> dict:
        return {"kind": "local", "path": self.model_dir}

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoTokenizer

            from caregpt.models.loader import load_encoder

            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            self._model = load_encoder(self.model_dir)
            self._torch = torch
        return self._model, self._tokenizer

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model, tokenizer = self._load()
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                states = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                out.append(pooled.float().numpy())
        return normalize(np.concatenate(out) if out else np.zeros((0, 0), np.float32))


class EndpointEncoder:
    """Any OpenAI-compatible POST {base_url}/embeddings (vLLM, text-embeddings-inference, OpenAI...)."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", batch_size: int = 64):
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.batch_size = batch_size

    def spec(self) -> dict:
        # the key's *variable name* is stored, never the key
        return {"kind": "endpoint", "base_url": self.base_url, "model": self.model, "api_key_env": self.api_key_env}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            answer = post_json(self.base_url, "embeddings", {"model": self.model, "input": batch}, self.api_key_env)
            try:
                rows = sorted(answer["data"], key=lambda row: row["index"])
                vectors = np.asarray([row["embedding"] for row in rows], dtype=np.float32)
            except (KeyError, TypeError, ValueError):
                raise EndpointError(f"{self.base_url}/embeddings answered without data[].embedding") from None
            if len(vectors) != len(batch):
                raise EndpointError(f"{self.base_url}/embeddings returned {len(vectors)} vectors for {len(batch)} texts")
            out.append(vectors)
        return normalize(np.concatenate(out) if out else np.zeros((0, 0), np.float32))


def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.size == 0:
        return vectors
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def encoder_from_spec(spec: dict | None):
    """Rebuild the encoder an index was made with (None: BM25 only)."""
    if not spec:
        return None
    if spec.get("kind") == "local":
        return LocalEncoder(spec["path"])
    if spec.get("kind") == "endpoint":
        return EndpointEncoder(spec["base_url"], spec["model"], spec.get("api_key_env", "OPENAI_API_KEY"))
    raise ValueError(f"unknown encoder kind {spec.get('kind')!r} (valid: local, endpoint)")
