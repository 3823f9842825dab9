"""Pipelines: named steps (new-model, pt, sft, rm, dpo, ppo, tune, predict, eval, export, deploy) run in order."""
