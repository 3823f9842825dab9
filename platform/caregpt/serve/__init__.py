"""Ray Serve: an OpenAI-compatible chat API over merged models and LoRA adapters, autoscaled.

Layout (one idea per module):

- :mod:`~caregpt.serve.config` — the serving settings (`caregpt serve` flags, Serve `args`).
- :mod:`~caregpt.serve.app` — ``build_app``: router + model deployments with their Serve options.
- :mod:`~caregpt.serve.router`, :mod:`~caregpt.serve.api`, :mod:`~caregpt.serve.responses` — the HTTP
  ingress: keys, limits, validation, templates, OpenAI JSON and SSE.
- :mod:`~caregpt.serve.protocol`, :mod:`~caregpt.serve.errors` — the OpenAI wire format.
- :mod:`~caregpt.serve.server` — the model deployment: engines, adapters through Serve multiplexing.
- :mod:`~caregpt.serve.catalog`, :mod:`~caregpt.serve.loading` — served names, adapter root checks, loading.
- :mod:`~caregpt.serve.engine` and its implementations (``hf_engine`` + ``hf_continuous`` /
  ``vllm_engine``), :mod:`~caregpt.serve.sampling`, :mod:`~caregpt.serve.textstream`.
- :mod:`~caregpt.serve.observability` — Ray metrics and access logs; :mod:`~caregpt.serve.cli` — `caregpt serve`.

Nothing heavy is imported here: the driver validates settings without torch.
"""
