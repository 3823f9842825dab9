"""The opening every verb's `main(argv)` shares: `--help`, logging, and a ConfigError as one line with exit 2.

A verb runs as `caregpt VERB ...` (cli.py, which catches ConfigError too) and as `python -m caregpt.X ...`;
`verb_main` gives both the same behaviour, so a verb's own `main` holds only what the verb does.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence

from caregpt.config.loader import ConfigError


def wants_help(argv: Sequence[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def setup_logging() -> None:
    """INFO logs with time and logger name; a no-op where the process has configured logging already."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def verb_main(name: str, help_text: Callable[[], str], *, log: bool = False):
    """Decorate `main(argv: list[str]) -> exit code` of `caregpt NAME`.

    The decorated `main(argv=None)` reads sys.argv when argv is None, prints help_text() and returns 0 on
    -h / --help (before any option is checked), sets up logging when `log`, and turns a ConfigError
    raised anywhere in the verb into `caregpt NAME: error: ...` on stderr with exit code 2.
    """

    def decorate(body: Callable[[list[str]], int]) -> Callable[..., int]:
        @functools.wraps(body)
        def main(argv: Sequence[str] | None = None) -> int:
            args = list(sys.argv[1:] if argv is None else argv)
            if wants_help(args):
                print(help_text())
                return 0
            if log:
                setup_logging()
            try:
                return body(args)
            except ConfigError as exc:
                print(f"caregpt {name}: error: {exc}", file=sys.stderr)
                return 2

        return main

    return decorate
