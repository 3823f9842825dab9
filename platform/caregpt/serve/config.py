"""Serving settings: one typed spec, read from a YAML file and/or `--key value` flags.

Keys are flat and the model keys keep CareGPT's spelling (`--model_name_or_path --checkpoint_dir
--template`), so `python src/api_demo.py --model_name_or_path ... --checkpoint_dir ... --template
llama2` becomes `caregpt serve` with the same flags. The docstring under each field is its
`--help` text. The same dict is what `serve_apps.chat:build_app` takes as Serve `args`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from caregpt.config.loader import ConfigError, read_yaml
from caregpt.config.fields import CommaList, QuantizationBit, adopt_adapter_alias, key, split_commas
from caregpt.finetune.settings import FinetuneSettings, parse_finetune

API_KEYS_ENV = "CAREGPT_API_KEYS"


class ServeConfig(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", protected_namespaces=())

    # ---- model --------------------------------------------------------------------------------
    model_name_or_path: Annotated[str, key(path="in")]
    """Model to serve: a local Hugging Face model directory (a merged/exported model, or the base of checkpoint_dir)."""

    checkpoint_dir: Annotated[CommaList[str] | None, key(path="in")] = None
    """LoRA adapter(s) merged into the base at load time, comma separated (CareGPT's base + adapter serving)."""

    adapter_name_or_path: Annotated[CommaList[str] | None, key(path="in")] = None
    """Alias of checkpoint_dir (LLaMA-Factory spelling)."""

    finetuning_type: Literal["lora", "freeze", "full"] = "lora"
    """How checkpoint_dir was trained (CareGPT's api_demo flag): lora adapters are merged into the base at load. A freeze
    / full fine-tune is a whole model: serve it as model_name_or_path, without checkpoint_dir."""

    template: str | None = None
    """Chat template. Default: the one recorded in caregpt_config.yaml beside the checkpoint, else the tokenizer's own (auto), else default."""

    served_model_name: str | None = None
    """Name clients put in `model` for the base model. Default: the model directory's name."""

    adapters_dir: Annotated[str | None, key(path="in")] = None
    """Folder whose direct subfolders (each with adapter_config.json) are LoRA adapters served by name through multiplexing."""

    max_loaded_adapters: int = Field(default=4, ge=1)
    """Adapters kept loaded per replica; the least recently used one is unloaded beyond this."""

    trust_remote_code: bool = False
    """Allow model code shipped inside the model directory to run. Off unless you trust the source."""

    quantization_bit: QuantizationBit = None
    """Load the model quantised to 4 or 8 bits with bitsandbytes."""

    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "sdpa"
    """Attention kernel (FlashAttention needs a GPU and the flash-attn package)."""

    max_model_len: int | None = None
    """Longest prompt + answer in tokens. Default: the model's max_position_embeddings."""

    # ---- engine -------------------------------------------------------------------------------
    engine: Literal["transformers", "vllm"] = "transformers"
    """Generation engine: transformers (CPU, small GPUs) or vllm (GPU clusters; pip install vllm)."""

    batching: Literal["slots", "paged"] = "slots"
    """transformers engine continuous batching: slots (caregpt's: one KV-cache row per request; models it cannot decode, e.g. sliding-window attention, fall back to paged with a warning) or paged (transformers' paged KV cache: less memory for long contexts, slower at many short streams). The static @serve.batch path was removed: it measured 2-3.5x slower at 32 streams."""

    max_batch_size: int = Field(default=32, ge=1)
    """Most requests decoded together in one replica."""

    kv_cache_tokens: int | None = Field(default=None, ge=16)
    """batching: paged only: KV cache size in tokens per engine. Default: from free memory on GPU; max(max_model_len, 512 x max_batch_size) on CPU."""

    stream_updates_per_s: float = Field(default=100.0, gt=0)
    """Streamed messages per second one model replica sends, over all its streams: alone a stream gets every token, with N streams each gets N/this-second batches."""

    torch_threads: int | None = Field(default=None, ge=1)
    """CPU threads torch uses per replica. Default: what Ray gives the replica (its num_cpus, at least 1). On CPUs, small models decode faster as more replicas of one thread than as one replica of many threads (decode matrices are too small to split well): on 2 cores, two 1-thread engines made 1.4x the tokens/s of one 2-thread engine (benchmarks/serve_load.py)."""

    vllm_options: dict[str, Any] = {}
    """Extra keyword arguments for vllm.AsyncEngineArgs (e.g. gpu_memory_utilization, tensor_parallel_size)."""

    # ---- request defaults and limits -----------------------------------------------------------
    default_max_tokens: int = Field(default=512, ge=1)
    """Answer length when a request sets none (capped by what the context leaves after the prompt)."""

    default_temperature: float = Field(default=1.0, ge=0, le=2)
    """Temperature when a request sets none (OpenAI's default is 1)."""

    default_top_p: float = Field(default=1.0, ge=0, le=1)
    """top_p when a request sets none."""

    max_n: int = Field(default=8, ge=1)
    """Largest `n` (answers per request) accepted."""

    max_prompts: int = Field(default=16, ge=1)
    """Most prompts in one /v1/completions request (a prompt list); more get 400."""

    max_total_tokens: int = Field(default=32768, ge=1)
    """Most tokens one request may ask to generate: prompts x n x max_tokens (the default answer length counts when max_tokens is unset); more get 400."""

    max_sequences_per_request: int = Field(default=8, ge=1)
    """Sequences one request keeps in the engine at once (its other prompts wait), so a big request cannot starve the others."""

    max_pending_requests: int = Field(default=512, ge=1)
    """Requests one router replica holds at once (queued or generating); beyond this new ones get 503 + Retry-After at once."""

    max_request_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body in bytes; larger ones get 413."""

    request_timeout_s: float = Field(default=600.0, gt=0)
    """A request that has not finished after this many seconds is ended (504, or an error event when streaming)."""

    accept_any_model: bool = False
    """Answer unknown `model` names with the base model (CareGPT api_demo behaviour) instead of 404."""

    # ---- security and operations -------------------------------------------------------------
    api_keys: CommaList[str] | None = None
    """Accepted API keys (Authorization: Bearer KEY), comma separated. Also read from the CAREGPT_API_KEYS environment variable. None set = no auth."""

    api_keys_file: Annotated[str | None, key(path="in")] = None
    """File with one accepted API key per line (keeps keys out of configs that the dashboard shows)."""

    cors_allow_origins: CommaList[str] = ["*"]
    """Origins browsers may call the API from (ChatGPT-Next-Web and other web clients), comma separated."""

    log_prompts: bool = False
    """Write message text into the access log. Off: logs carry sizes, timings and ids, never what patients wrote."""

    # ---- medical layer ---------------------------------------------------------------------------
    safety_guard: bool = True
    """Check the latest user message: urgent-care advice first for emergencies, refuse clearly harmful requests."""

    emergency_number: str = "120"
    """The local emergency number named in urgent-care advice (120 in mainland China, 911, 112...)."""

    crisis_line: str = ""
    """A crisis hotline named when someone writes about self-harm (optional)."""

    disclaimer: bool = True
    """Append a short medical disclaimer to answers, once per conversation."""

    knowledge_bases: dict[str, str] = {}
    """Knowledge bases a request may use, name -> directory built by `caregpt kb ingest` (request field
    `knowledge_base`, or the model name suffixed `@NAME`). Requests name them; paths never come from requests."""

    rag_top_k: int = Field(default=4, ge=1, le=20)
    """Passages retrieved into the prompt per knowledge-base answer."""

    retriever_num_cpus: float = Field(default=0.25, ge=0)
    """CPUs reserved per retriever replica (the retrieval deployment scales apart from the model)."""

    triage_guides: Annotated[str | None, key(path="in")] = None
    """Department guide JSON for POST /v1/triage (e.g. hospital_guide_departments.json with its catalog beside it)."""

    # ---- fine-tuning service ---------------------------------------------------------------------
    finetune: FinetuneSettings | None = None
    """OpenAI's Files + fine-tuning jobs API and POST /v1/feedback on this app (docs/finetune-openai-sdk.md):
    {"storage_root": DIR_OR_URI, ...}, or just the storage root. Needs adapters_dir (fine-tuned models are published there)."""

    # ---- HTTP front (caregpt.serve.front) --------------------------------------------------------
    front_proxy: bool = True
    """Put caregpt's front proxy on host:port, before Ray Serve's proxy (then on 127.0.0.1): header and body
    timeouts and a connection cap that Serve's proxy lacks. Turn off only behind a proxy that has them."""

    header_timeout_s: float = Field(default=10.0, gt=0)
    """Front: a connection whose request line and headers are not complete after this many seconds is closed."""

    body_timeout_s: float = Field(default=30.0, gt=0)
    """Front: a request whose body has not fully arrived this many seconds after its headers gets 408."""

    max_connections: int = Field(default=10000, ge=16)
    """Front: open client connections; at the cap, the connection that has waited longest for its headers is closed."""

    # ---- Ray Serve deployment ------------------------------------------------------------------
    app_name: str = "caregpt"
    """Ray Serve application name."""

    route_prefix: str = "/"
    """HTTP path prefix of the API."""

    host: str = "127.0.0.1"
    """HTTP host the Serve proxy listens on (0.0.0.0 to accept other machines)."""

    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port of the Serve proxy."""

    num_replicas: int | None = Field(default=None, ge=1)
    """Fixed number of model replicas. Unset: autoscale between min_replicas and max_replicas."""

    min_replicas: int = Field(default=1, ge=0)
    """Autoscaling: fewest model replicas."""

    max_replicas: int = Field(default=1, ge=1)
    """Autoscaling: most model replicas."""

    target_ongoing_requests: float = Field(default=16.0, gt=0)
    """Autoscaling: requests in flight per replica the autoscaler aims for."""

    upscale_delay_s: float = Field(default=30.0, ge=0)
    """Autoscaling: how long demand must stay high before a replica is added."""

    downscale_delay_s: float = Field(default=300.0, ge=0)
    """Autoscaling: how long demand must stay low before a replica is removed."""

    max_ongoing_requests: int = Field(default=64, ge=1)
    """Requests one model replica works on at once (at least max_batch_size)."""

    max_queued_requests: int = Field(default=256, ge=-1)
    """Requests waiting for a model replica beyond which new ones get 503 + Retry-After (-1: unbounded)."""

    num_cpus: float = Field(default=1.0, ge=0)
    """CPUs reserved per model replica."""

    num_gpus: float = Field(default=0.0, ge=0)
    """GPUs reserved per model replica."""

    colocate_router: bool = False
    """Single-model apps (no adapters_dir): run the HTTP router inside the model replica, one deployment, one Ray hop
    less per streamed message (faster first tokens; benchmarks/serve_load.py measures both). A model replica that
    dies then takes its requests with it (no retry on another replica)."""

    router_replicas: int = Field(default=1, ge=1)
    """Replicas of the HTTP router (auth, validation, templates, SSE); cheap, scale for many connections."""

    router_num_cpus: float = Field(default=0.25, ge=0)
    """CPUs reserved per router replica."""

    graceful_shutdown_timeout_s: float = Field(default=30.0, ge=0)
    """On shutdown or downscale, how long running requests may finish before a replica is stopped."""

    ray_address: str | None = None
    """Ray cluster to deploy on. Default: RAY_ADDRESS, else an embedded local Ray."""

    @field_validator("knowledge_bases", mode="before")
    @classmethod
    def _kb_map(cls, value: Any) -> Any:
        # a flag carries JSON (--knowledge_bases '{"hospital": "kb/hospital"}') or name=dir pairs
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                import json

                return json.loads(text)
            return dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        return value

    @field_validator("finetune", mode="before")
    @classmethod
    def _finetune(cls, value: Any) -> Any:
        return parse_finetune(value)

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        adopt_adapter_alias(self)
        if self.checkpoint_dir and self.finetuning_type != "lora":
            raise ValueError(f"finetuning_type={self.finetuning_type} with checkpoint_dir: a {self.finetuning_type} fine-tune is a "
                             "whole model, pass it as --model_name_or_path (checkpoint_dir holds LoRA adapters)")
        if self.colocate_router and self.adapters_dir:
            raise ValueError("colocate_router needs a single-model app: adapters_dir uses the separate model deployment (Serve multiplexing)")
        if self.num_replicas is None and self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is larger than max_replicas ({self.max_replicas})")
        if self.kv_cache_tokens is not None and self.batching != "paged":
            raise ValueError(f"kv_cache_tokens sizes the paged KV cache: set batching: paged, or drop kv_cache_tokens "
                             f"(batching: {self.batching} keeps one cache row per request, at most max_batch_size x max_model_len tokens)")
        if self.finetune is not None and not self.adapters_dir:
            raise ValueError("finetune needs adapters_dir: fine-tuned adapters are published there and served by name")
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or Path(self.model_name_or_path.rstrip("/")).name or self.model_name_or_path

    def accepted_keys(self) -> list[str]:
        """Keys from the config, the key file and CAREGPT_API_KEYS (read where this runs: the router replica)."""
        keys = list(self.api_keys or [])
        if self.api_keys_file:
            path = Path(self.api_keys_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"api_keys_file {str(path)!r} does not exist")
            keys += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]
        keys += split_commas(os.environ.get(API_KEYS_ENV, "")) or []
        return [k for k in dict.fromkeys(keys) if k]

    def public(self) -> dict[str, Any]:
        """The settings as a plain dict (what travels to replicas)."""
        return self.model_dump(mode="json")


def build_serve_config(values: dict[str, Any], source: str = "settings") -> ServeConfig:
    """Flat settings (a Serve config's `args`, a pipeline step) through the one validation path."""
    from caregpt.config.loader import build_sections

    return build_sections({k: (v, f"from {source}") for k, v in values.items()}, {"serve": ServeConfig}, "serve")["serve"]


def load_serve_config(argv: list[str]) -> tuple[ServeConfig, dict[str, Any] | None]:
    """`[CONFIG.yaml] [--key value ...]` -> (settings, the Ray Serve config document if the YAML is one).

    A YAML file is either flat serve settings, or a Ray Serve config (`applications:` list) whose
    single application's `args` are the settings; flags override either.
    """
    from caregpt.config.loader import build_sections, resolve_spec_paths, split_argv

    config_path, _, flags = split_argv(argv)
    values: dict[str, tuple[Any, str]] = {}
    serve_doc = None
    if config_path:
        doc = read_yaml(config_path)
        if "applications" in doc:
            apps = doc.get("applications") or []
            if len(apps) != 1:
                raise ConfigError(f"{config_path}: caregpt serve runs one application, the file lists {len(apps)}")
            serve_doc = doc
            values.update({k: (v, f"from {config_path} (args)") for k, v in (apps[0].get("args") or {}).items()})
        else:
            values.update({k: (v, f"from {config_path}") for k, v in doc.items()})
    values.update({k: (v, "from the command line") for k, v in flags.items()})
    config = resolve_spec_paths(build_sections(values, {"serve": ServeConfig}, "serve")["serve"])
    if config.knowledge_bases:  # name -> directory: the directories resolve like every other path
        base = Path.cwd()
        config = config.model_copy(update={"knowledge_bases": {
            name: str((base / d).resolve()) if (base / d).exists() else d for name, d in config.knowledge_bases.items()}})
    if serve_doc is not None:  # the replicas get the paths as resolved here (absolute), the rest as given
        paths = {k for k, f in ServeConfig.model_fields.items() if isinstance(f.json_schema_extra, dict) and "path" in f.json_schema_extra}
        paths.add("knowledge_bases")
        serve_doc["applications"][0]["args"] = {k: getattr(config, k) if k in paths else v for k, (v, _) in values.items()}
    return config, serve_doc
