"""Typed configuration: specs, YAML + command-line loading, DeepSpeed config."""
