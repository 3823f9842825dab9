"""Build small Llama-architecture models from scratch, locally.

Laptops, CI and our tests need a real Hugging Face causal LM without downloading anything. This
module trains a byte-level BPE tokenizer on a local corpus (:mod:`caregpt.models.tokenizer_train`),
builds a ``LlamaConfig`` from a preset, initialises the weights randomly with a fixed seed and
saves an ordinary model directory that anyone can load by path::

    from caregpt.models.tiny import build_tiny_model
    path = build_tiny_model("tiny", ["../shared/data/pretrain_medicalgpt_fever.txt"], "outputs/tiny")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)

The directory holds ``config.json``, ``generation_config.json``, ``model.safetensors``, the
tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) and a
``caregpt_model.json`` manifest. The build is deterministic for a given preset, corpus, vocab
size and seed (weights and tokenizer are identical across runs).

Command line: ``python -m caregpt.models.tiny --preset tiny --corpus FILE [FILE ...] --output DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caregpt.models.tokenizer_train import (
    EOS_DOC_TOKEN,
    IM_END_TOKEN,
    _check_corpus_path,
    train_tokenizer,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from transformers import LlamaConfig

logger = logging.getLogger("caregpt.models.tiny")

MANIFEST_NAME = "caregpt_model.json"
MANIFEST_FORMAT_VERSION = 1

#: Presets: keyword arguments for ``transformers.LlamaConfig``. ``vocab_size`` is the tokenizer
#: size requested from BPE training; the model uses the trained tokenizer's real size.
#: Approximate parameter counts (see :func:`count_parameters`): tiny ~0.93M, small ~14M,
#: bench34m ~34M.
PRESETS: dict[str, dict[str, Any]] = {
    # Test workhorse: builds in seconds, generates instantly on a laptop CPU.
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 352,
        "max_position_embeddings": 1024,
        "vocab_size": 4096,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
    },
    # Laptop demos: big enough to learn something from a few MB of text on CPU.
    "small": {
        "hidden_size": 384,
        "num_hidden_layers": 6,
        "num_attention_heads": 6,
        "num_key_value_heads": 6,
        "intermediate_size": 1056,
        "max_position_embeddings": 2048,
        "vocab_size": 8192,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
    },
    # Training benchmarks (throughput, memory); untied embeddings give the ~34M in the name.
    "bench34m": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 8,
        "intermediate_size": 1408,
        "max_position_embeddings": 2048,
        "vocab_size": 8192,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-5,
        "initializer_range": 0.02,
    },
}


def _preset(preset: str) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; available presets: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[preset])


def preset_config(
    preset: str,
    *,
    vocab_size: int | None = None,
    bos_token_id: int | None = 0,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> LlamaConfig:
    """The ``LlamaConfig`` of a preset (no weights are created).

    ``vocab_size`` overrides the preset's. Token ids default to the layout every tokenizer from
    :func:`~caregpt.models.tokenizer_train.train_tokenizer` has: ``<s>``=0, ``</s>``=1,
    ``<pad>``=2, ``<|im_start|>``=3, ``<|im_end|>``=4 (eos = [4, 1]).
    """
    from transformers import LlamaConfig

    kwargs = _preset(preset)
    if vocab_size is not None:
        kwargs["vocab_size"] = int(vocab_size)
    if eos_token_id is None:
        eos_token_id = [4, 1]
    if pad_token_id is None:
        pad_token_id = 2
    return LlamaConfig(
        **kwargs,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        architectures=["LlamaForCausalLM"],
    )


def count_parameters(preset: str, *, vocab_size: int | None = None) -> int:
    """Number of (unique) parameters of a preset's model, computed on the meta device (no memory)."""
    import torch
    from transformers import LlamaForCausalLM

    config = preset_config(preset, vocab_size=vocab_size)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(p.numel() for p in model.parameters())


def _versions() -> dict[str, str]:
    import tokenizers
    import torch
    import transformers

    import caregpt

    return {
        "caregpt": caregpt.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "torch": torch.__version__,
    }


def _prepare_output_dir(output_dir: Path, corpus: Sequence[Path], overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"output_dir {str(output_dir)!r} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} is not empty; pass overwrite=True (--overwrite) "
                "to replace its contents, or choose another directory"
            )
        # overwrite=True deletes the directory: refuse the obviously wrong targets.
        resolved = output_dir.resolve()
        protected = {Path(resolved.anchor), Path.home().resolve(), Path.cwd().resolve()}
        if resolved in protected or Path.cwd().resolve().is_relative_to(resolved):
            raise ValueError(f"refusing to overwrite {str(resolved)!r} (a root, home or working directory)")
        for path in corpus:
            if path.resolve().is_relative_to(resolved):
                raise ValueError(
                    f"refusing to overwrite {str(resolved)!r}: it contains corpus file {str(path)!r}"
                )


def build_tiny_model(
    preset: str,
    corpus: Iterable[str | Path],
    output_dir: str | Path,
    *,
    vocab_size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Train a tokenizer on ``corpus``, build a randomly initialised Llama model and save both.

    Args:
        preset: one of :data:`PRESETS` (``tiny``, ``small``, ``bench34m``).
        corpus: text files for the tokenizer (``.txt``, ``.json``, ``.jsonl``, ``.csv``).
        output_dir: where the model directory is written. It is built in a temporary sibling
            directory and moved into place at the end, so a failed build leaves nothing behind.
        vocab_size: BPE vocabulary size; defaults to the preset's.
        seed: seed for the weight initialisation (the global torch RNG state is left untouched).
        overwrite: replace a non-empty ``output_dir`` (otherwise ``FileExistsError``).

    Returns:
        The output directory as an absolute ``Path``.

    Raises:
        ValueError: unknown preset (the message lists the presets), bad corpus file.
        FileNotFoundError: a corpus file is missing.
        FileExistsError: ``output_dir`` is not empty and ``overwrite`` is False.
    """
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    start = time.perf_counter()
    preset_kwargs = _preset(preset)  # ValueError listing presets, before any work
    corpus_paths = [Path(corpus)] if isinstance(corpus, (str, Path)) else [Path(p) for p in corpus]
    if not corpus_paths:
        raise ValueError("build_tiny_model needs at least one corpus file")
    for path in corpus_paths:
        _check_corpus_path(path)
    output_dir = Path(output_dir).expanduser().absolute()
    _prepare_output_dir(output_dir, corpus_paths, overwrite)
    requested_vocab = int(vocab_size) if vocab_size is not None else int(preset_kwargs["vocab_size"])
    max_positions = int(preset_kwargs["max_position_embeddings"])

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.building-", dir=output_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; the result should look like a normal mkdir
        # 1. tokenizer
        tokenizer = train_tokenizer(corpus_paths, requested_vocab, model_max_length=max_positions)
        im_end_id = tokenizer.convert_tokens_to_ids(IM_END_TOKEN)
        doc_end_id = tokenizer.convert_tokens_to_ids(EOS_DOC_TOKEN)
        eos_ids = [im_end_id, doc_end_id]

        # 2. config + seeded random init (fork_rng keeps the caller's RNG state unchanged)
        config = preset_config(
            preset,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        num_params = sum(p.numel() for p in model.parameters())

        # 3. save: config.json, generation_config.json, model.safetensors, tokenizer files
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "kind": "caregpt-scratch-model",
            "preset": preset,
            "architecture": "LlamaForCausalLM",
            "num_parameters": num_params,
            "vocab_size": len(tokenizer),
            "vocab_size_requested": requested_vocab,
            "seed": seed,
            "corpus": [p.name for p in corpus_paths],
            "config": {k: v for k, v in preset_kwargs.items() if k != "vocab_size"},
            "special_tokens": {
                "bos": tokenizer.bos_token,
                "eos": [IM_END_TOKEN, EOS_DOC_TOKEN],
                "pad": tokenizer.pad_token,
            },
            "created_with": _versions(),
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")

        # 4. move into place
        if output_dir.exists():
            shutil.rmtree(output_dir)  # empty, or overwrite=True was checked above
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    logger.info(
        "built %s model at %s: %s parameters (%.2fM), vocab %d (requested %d), seed %d, corpus %s, %.1fs",
        preset,
        output_dir,
        f"{num_params:,}",
        num_params / 1e6,
        len(tokenizer),
        requested_vocab,
        seed,
        ", ".join(p.name for p in corpus_paths),
        time.perf_counter() - start,
    )
    return output_dir


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m caregpt.models.tiny ...` is `caregpt new-model ...` (one loader, one set of options)."""
    import sys

    from caregpt.cli import main as caregpt_main

    return caregpt_main(["new-model", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
