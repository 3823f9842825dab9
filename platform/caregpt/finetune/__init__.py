"""A self-hosted fine-tuning service: OpenAI's Files and fine-tuning jobs API on the chat app, and feedback -> DPO.

settings.py     the `finetune:` block of the serve settings
storage.py      the storage root (local folder or pyarrow filesystem URI)
state.py        SQLite: files, jobs, events, checkpoints, feedback (survives app restarts)
validation.py   OpenAI chat / preference JSONL checks with line numbers, de-identification on upload
hyperparams.py  OpenAI job fields -> `caregpt train` keys (the documented mapping)
runner.py       the job monitor: validate, queue, submit as a Ray job, follow, publish
entry.py        the Ray job's entrypoint (stages data, runs `caregpt train`)
publish.py      the adapter into the app's adapter root as ft:<base>:<suffix>:<job-id>
tenancy.py      each API key sees only its own fine-tuned models
feedback.py     POST /v1/feedback, and ratings -> preference pairs
routes.py       the HTTP routes, mounted by serve/api.py
"""
