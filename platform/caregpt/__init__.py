"""caregpt: train, evaluate and serve medical LLMs on Ray."""

__version__ = "0.1.0"
