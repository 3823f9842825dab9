"""Teacher-model distillation: generate training and knowledge-base data through any OpenAI-compatible endpoint.

`caregpt distill CONFIG.yaml [--key value]` (see cli.py). The pieces, one idea per file:

    config.py     DistillConfig (pydantic; docstrings are the --help text) and its YAML + flags loader
    templates.py  default prompt templates per kind, template field checks, rendering
    seeds.py      seeds from a list, a file or a registered dataset; stable seed ids
    ratelimit.py  token bucket shared by every request (a tiny Ray actor on a cluster)
    client.py     one chat call with our own retry loop (backoff + jitter, Retry-After, timeouts)
    tasks.py      what one seed becomes for each kind (sft, multiturn, preference, kb_document)
    execute.py    Ray Data over the pending seeds: a small actor pool, threads for concurrent requests
    store.py      the resume log (raw.jsonl): finished seeds are skipped when a run is repeated
    validate.py   per-record filters (empty, language, length, refusal, truncated)
    dedup.py      exact and near-duplicate removal (character n-gram MinHash, written here)
    output.py     dataset file in the project's formats and its dataset_info.json entry
    report.py     requests, tokens, cost, failures and filtered records
    run.py        the whole run, in order
"""
