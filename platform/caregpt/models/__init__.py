"""Models: loading, adapters, the tiny scratch model, merge/export."""
