"""Chat clients: the terminal REPL (`caregpt chat`) and the OpenAI-API streaming helper the web chat shares.

- :mod:`caregpt.chat.api`: stream from any OpenAI-compatible API, with one-line user-facing errors.
- :mod:`caregpt.chat.local`: stream from a model loaded in this process (base + merged adapters).
- :mod:`caregpt.chat.repl`: the REPL and its ``main(argv)``.
"""

from caregpt.chat.repl import main

__all__ = ["main"]
