"""A named caregpt chat template written as a Jinja ``chat_template``, for exported models.

An exported model directory is used by tools that know nothing of caregpt (``transformers``,
``transformers serve``, vLLM, ...): they format conversations with the tokenizer's Jinja
``chat_template``. Writing the template the model was trained with as Jinja makes those tools
produce exactly the text training saw: ``apply_chat_template(messages)`` equals
``get_template(name, tokenizer).render(messages)`` (a unit test checks every named template).

Literal text is emitted as JSON-escaped string literals (Jinja reads ``\\n`` and ``\\uXXXX``
escapes), so any character in a template survives; ``{bos}`` / ``{eos}`` become the tokenizer's
``bos_token`` / ``eos_token`` variables, which ``apply_chat_template`` provides.
"""

from __future__ import annotations

import json
import re

from caregpt.data.templates import Template

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _expr(fmt: str, **names: str) -> str:
    """A format string as one Jinja output statement: literals and variables joined with `~`."""
    variables = {"bos": "bos_token", "eos": "eos_token", **names}
    parts: list[str] = []
    position = 0
    for match in _PLACEHOLDER.finditer(fmt):
        if match.start() > position:
            parts.append(json.dumps(fmt[position : match.start()]))
        key = match.group(1)
        # unknown placeholders stay literal text, as Template rendering leaves them
        parts.append(variables[key] if key in variables else json.dumps(match.group(0)))
        position = match.end()
    if position < len(fmt):
        parts.append(json.dumps(fmt[position:]))
    return "{{- " + " ~ ".join(parts) + " -}}" if parts else ""


def template_to_jinja(template: Template) -> str:
    """Jinja source that renders conversations the way ``template.render`` does."""
    if template.chat_template is not None:
        return template.chat_template  # "auto": the tokenizer's own template already
    # contents are trimmed where they are written (as Template does), not where they are tested
    trim = " | trim" if template.strip_content else ""
    system, content = f"(system_text{trim})", f"(message['content']{trim})"
    user = _expr(template.user, user=content)
    if template.first_user is not None:
        with_system = _expr(template.first_user, system=system, user=content)
    else:
        with_system = _expr(template.system, system=system) + user
    return "".join(
        [
            "{%- if messages[0]['role'] == 'system' -%}",
            "{%- set system_text = messages[0]['content'] -%}{%- set loop_messages = messages[1:] -%}",
            "{%- else -%}",
            "{%- set system_text = " + json.dumps(template.default_system) + " -%}{%- set loop_messages = messages -%}",
            "{%- endif -%}",
            "{%- for message in loop_messages -%}",
            "{%- if message['role'] == 'user' -%}",
            "{%- if loop.first -%}",
            _expr(template.prefix),
            "{%- if system_text -%}" + with_system + "{%- else -%}" + user + "{%- endif -%}",
            "{%- else -%}",
            user,
            "{%- endif -%}",
            # the generation prompt opens an answer: one follows, or the caller asks for one
            "{%- if not loop.last or add_generation_prompt -%}" + _expr(template.generation_prompt) + "{%- endif -%}",
            "{%- else -%}",
            _expr(template.assistant, assistant=content),
            "{%- endif -%}",
            "{%- endfor -%}",
        ]
    )
