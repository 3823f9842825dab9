"""Per-request sampling inside a shared batch: greedy, temperature, top_p and a seed per row.

Both batching backends (caregpt's slots, transformers' paged) run one forward pass for many
requests, each with its own settings. Rather than ask the batch to *sample*, we perturb each row's scores so that a plain
``argmax`` picks a token with exactly the sampling distribution (the Gumbel-max trick):
``argmax(logits / T + G)`` with ``G = -log(-log(U))``, ``U ~ Uniform(0, 1)`` is a draw from
``softmax(logits / T)``. Greedy rows get no noise. The noise of a row comes from that request's own
``torch.Generator``, seeded from the request's ``seed``: the same seed gives the same answer no
matter which other requests share the batch, which a single batch-wide generator cannot promise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

_TINY = 1e-10  # keeps log(-log(u)) finite


@dataclass(frozen=True)
class SamplingParams:
    """What one sequence asks for. temperature 0 or top_p 0 mean greedy decoding."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_p <= 0.0

    def for_choice(self, index: int) -> SamplingParams:
        """Choice `index` of n: a different seed per choice, so n samples differ but stay reproducible."""
        if self.seed is None or index == 0:
            return self
        return SamplingParams(self.max_tokens, self.temperature, self.top_p, self.seed + index, self.stop, self.ignore_eos)


@dataclass
class RowSampler:
    """The sampling state of one running sequence (its parameters and its random stream)."""

    params: SamplingParams
    _generator: torch.Generator | None = field(default=None, repr=False)

    def generator(self) -> torch.Generator:
        if self._generator is None:
            import torch

            seed = self.params.seed
            if seed is None:
                seed = int.from_bytes(os.urandom(8), "little")
            self._generator = torch.Generator().manual_seed(seed % (2**64))
        return self._generator


def perturb_scores(scores: torch.Tensor, rows: list[RowSampler | None]) -> torch.Tensor:
    """Scores [rows, vocab] such that argmax per row is the row's greedy or sampled token.

    Rows without a sampler (None) and greedy rows are returned unchanged.
    """
    import torch

    sampling = [i for i, row in enumerate(rows) if row is not None and not row.params.greedy]
    if not sampling:
        return scores
    out = scores.clone()
    index = torch.tensor(sampling, dtype=torch.long, device=scores.device)
    picked = scores.index_select(0, index).float()
    temps = torch.tensor([rows[i].params.temperature for i in sampling], dtype=picked.dtype, device=picked.device)
    picked = picked / temps.unsqueeze(-1)
    top_ps = [rows[i].params.top_p for i in sampling]
    if any(p < 1.0 for p in top_ps):
        picked = _top_p_filter(picked, torch.tensor(top_ps, dtype=picked.dtype, device=picked.device))
    # One uniform draw per vocabulary entry from each row's own generator (CPU: generators are per device).
    noise = torch.stack([torch.rand(picked.shape[-1], generator=rows[i].generator()) for i in sampling])
    gumbel = -torch.log(-torch.log(noise.clamp_(_TINY, 1.0 - 1e-7)))
    out.index_copy_(0, index, (picked + gumbel.to(picked.device)).to(out.dtype))
    return out


def _top_p_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep, per row, the smallest set of most likely tokens whose probability reaches top_p (at least one)."""
    import torch

    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # probability mass of the tokens ranked above each one
    drop = before >= top_p.unsqueeze(-1)
    drop[..., 0] = False  # the most likely token always stays
    mask = torch.zeros_like(drop).scatter(-1, order, drop)
    return logits.masked_fill(mask, float("-inf"))


def argmax_tokens(scores: torch.Tensor, rows: list[RowSampler | None]) -> torch.Tensor:
    """The next token of every row: argmax of the perturbed scores."""
    return perturb_scores(scores, rows).argmax(dim=-1)
