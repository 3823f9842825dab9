"""The one loader's command-line forms that the former argparse verbs relied on (kb, triage, eval, data ...)."""

from __future__ import annotations

import pytest
from pydantic import AliasChoices, Field

from caregpt.config.loader import ConfigError, load_verb, parse_flags
from caregpt.config.specs import Spec


class Demo(Spec):
    k: int = Field(default=3, gt=0)
    """-k: how many."""

    data: list[str] | None = Field(default=None, json_schema_extra={"nargs": "+"})
    """Several files."""

    as_json: bool = Field(default=False, validation_alias=AliasChoices("json", "as_json"))
    """--json."""

    no_expand: bool = False
    """A switch with a dash."""


def test_short_letter_flag_is_the_long_one_and_negative_numbers_stay_values():
    assert parse_flags(["-k", "5", "text"]) == (["text"], {"k": "5"})
    assert parse_flags(["--lr", "-1"]) == ([], {"lr": "-1"})


def test_multi_value_switch_and_positional_forms():
    parts, positional, given = load_verb(["--json", "咳嗽", "--data", "a.jsonl", "b.jsonl,c.jsonl", "-k", "2", "--no-expand"],
                                         {"demo": Demo}, verb="demo", positional=1, config_file=False)
    demo = parts["demo"]
    assert positional == ["咳嗽"]  # a bare boolean switch does not swallow the next argument
    assert demo.as_json and demo.no_expand and demo.k == 2
    assert demo.data == ["a.jsonl", "b.jsonl,c.jsonl"]  # the spec's own validator splits commas where it wants to
    assert given == {"json", "data", "k", "no_expand"}  # the keys as the user spelled them
    # an explicit boolean word is still the switch's value
    assert load_verb(["--json", "false"], {"demo": Demo}, verb="demo", config_file=False)[0]["demo"].as_json is False


def test_bad_value_names_key_source_and_what_is_valid():
    with pytest.raises(ConfigError, match=r"invalid k='0' \(from the command line\).*greater than 0"):
        load_verb(["-k", "0"], {"demo": Demo}, verb="demo", config_file=False)
    with pytest.raises(ConfigError, match="did you mean 'data'"):
        load_verb(["--dat", "x"], {"demo": Demo}, verb="demo", config_file=False)
