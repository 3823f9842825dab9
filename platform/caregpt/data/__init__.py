"""Data: dataset registry, record formats and validation, chat templates, tokenization, Ray Data pipeline."""
