"""Chat templates: render conversations as text and encode them for SFT or generation.

Encoding is done piece by piece: the conversation is cut into segments (one prompt
segment ending with the generation prompt, one assistant segment holding the answer and its
end-of-turn marker, per turn), each segment is tokenized on its own with
``add_special_tokens=False`` and the ids are concatenated. Tokenizing the whole string and
mapping character offsets back would let BPE merge across a prompt/answer boundary, so a
label could cover half a prompt token; per-segment tokenization makes the mask exact and the
prompt ids of ``encode`` identical to those of ``encode_prompt``. The cost: ids can differ
slightly from tokenizing the full rendered string in one go; training and generation both go
through this module, so they agree with each other.

Named templates are written in ``{placeholder}`` form. ``{bos}``/``{eos}`` come from the
tokenizer (so one template works with any tokenizer of the family); literal control tokens of
a family (``<|im_end|>``, ``<|eot_id|>`` ...) are written out. ``auto`` uses the tokenizer's
own Jinja ``chat_template`` and derives the segments by diffing renders of growing prefixes.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100

_ROLES = ("system", "user", "assistant")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
# Probe answer for ``auto``: what follows it in the rendered turn is the end-of-turn marker.
_PROBE = "CAREGPT_PROBE_ANSWER"


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def _fill(fmt: str, **values: str) -> str:
    # One regex pass, so braces inside message contents are never re-read as placeholders.
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), fmt)


def _check(messages: list[dict], last: str | None) -> None:
    """Validate roles: optional leading system, then user/assistant alternating from user."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES:
            got = msg.get("role") if isinstance(msg, dict) else type(msg).__name__
            raise ValueError(f"messages[{i}]: role must be one of {_ROLES}, got {got!r}")
        if not isinstance(msg.get("content"), str):
            raise ValueError(f"messages[{i}] ({msg['role']}): content must be a str")
    start = 1 if messages[0]["role"] == "system" else 0
    if len(messages) == start:
        raise ValueError("messages hold no user turn")
    for i in range(start, len(messages)):
        want = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i]["role"] != want:
            raise ValueError(
                f"messages[{i}] has role {messages[i]['role']!r} but {want!r} was expected: after "
                "an optional leading system message, roles must alternate user/assistant, "
                "starting with user")
    if last is not None and messages[-1]["role"] != last:
        raise ValueError(f"the conversation must end with a {last!r} turn, "
                         f"got {messages[-1]['role']!r} last")


def _split_tail(answer: str) -> tuple[str, str]:
    # Whitespace after the end-of-turn marker (chatml's "\n", default's "\n") belongs to the
    # layout, not to the answer: it stays unlabelled so the model learns to stop at the marker.
    body = answer.rstrip()
    return body, answer[len(body):]


@dataclass(frozen=True)
class Template:
    """A chat format. Segment strings use {system}, {user}, {assistant}, {bos}, {eos}.

    ``encode``/``encode_prompt`` take {bos}/{eos} from the tokenizer they are given; ``render``
    and ``stop_strings`` from the tokenizer passed to ``get_template`` (or ``bind``), else
    from the family's own ``<s>``/``</s>``.
    """

    name: str
    user: str = "{user}"                  # one user turn
    generation_prompt: str = ""           # opens an assistant turn
    assistant: str = "{assistant}"        # answer + end-of-turn marker + separator
    system: str = ""                      # system block placed before the first user turn
    first_user: str | None = None         # families that fold the system into the first user turn
    prefix: str = ""                      # once at the very start (e.g. BOS)
    default_system: str = ""              # used when the messages bring no system message
    strip_content: bool = False           # the family's official template trims contents
    stops: tuple[str, ...] = ()
    bos: str = "<s>"                      # the family's tokens; replaced by the tokenizer's own
    eos: str = "</s>"
    chat_template: str | None = None      # set for "auto" only
    tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def stop_strings(self) -> tuple[str, ...]:
        out = [_fill(s, bos=self.bos, eos=self.eos) for s in self.stops]
        return tuple(dict.fromkeys(s for s in out if s))

    def bind(self, tokenizer) -> "Template":
        """The same template with {bos}/{eos} taken from ``tokenizer`` (where it has them)."""
        if tokenizer is None:
            return self
        return dataclasses.replace(
            self, bos=getattr(tokenizer, "bos_token", None) or self.bos,
            eos=getattr(tokenizer, "eos_token", None) or self.eos, tokenizer=tokenizer)

    # ---- segments -------------------------------------------------------------------------
    def _segments(self, messages: list[dict], add_generation_prompt: bool,
                  tokenizer=None) -> list[tuple[str, str]]:
        """(prompt text, answer text) per user turn; the answer is "" for a trailing user turn."""
        if self.chat_template is not None:
            return self._jinja_segments(messages, add_generation_prompt, tokenizer)
        tpl = self.bind(tokenizer)
        system, start = tpl.default_system, 0
        if messages[0]["role"] == "system":  # an explicit one, even "", replaces the default
            system, start = messages[0]["content"], 1
        text = (lambda s: s.strip()) if tpl.strip_content else (lambda s: s)
        tokens = {"bos": tpl.bos, "eos": tpl.eos}
        out = []
        for i in range(start, len(messages), 2):
            user = text(messages[i]["content"])
            if i == start:
                head = _fill(tpl.prefix, **tokens)
                if system and tpl.first_user is not None:
                    prompt = head + _fill(tpl.first_user, system=text(system), user=user, **tokens)
                else:
                    if system:
                        head += _fill(tpl.system, system=text(system), **tokens)
                    prompt = head + _fill(tpl.user, user=user, **tokens)
            else:
                prompt = _fill(tpl.user, user=user, **tokens)
            answer = ""
            if i + 1 < len(messages):
                answer = _fill(tpl.assistant, assistant=text(messages[i + 1]["content"]), **tokens)
            if answer or add_generation_prompt:
                prompt += _fill(tpl.generation_prompt, **tokens)
            out.append((prompt, answer))
        return out

    def _jinja(self, tokenizer, messages, add_generation_prompt: bool) -> str:
        tok = tokenizer if tokenizer is not None else self.tokenizer
        if tok is None:
            raise ValueError("the 'auto' template needs a tokenizer to render")
        return tok.apply_chat_template(list(messages), chat_template=self.chat_template,
                                       tokenize=False, add_generation_prompt=add_generation_prompt)

    def _jinja_segments(self, messages, add_generation_prompt, tokenizer):
        # Each segment is the difference between renders of growing prefixes of the
        # conversation; this only works if every render extends the previous one.
        start = 1 if messages[0]["role"] == "system" else 0
        emitted, out = "", []

        def extend(upto: int, gen: bool) -> str:
            nonlocal emitted
            full = self._jinja(tokenizer, messages[:upto], gen)
            if not full.startswith(emitted):
                raise ValueError(
                    "the tokenizer's chat_template is not prefix-stable (rendering a longer "
                    "conversation changes earlier text, e.g. it rewrites history turns), so "
                    "segments cannot be derived from it; choose a named template instead: "
                    + ", ".join(TEMPLATE_NAMES))
            piece, emitted = full[len(emitted):], full
            return piece

        for i in range(start, len(messages), 2):
            has_answer = i + 1 < len(messages)
            prompt = extend(i + 1, has_answer or add_generation_prompt)
            out.append((prompt, extend(i + 2, False) if has_answer else ""))
        return out

    # ---- public API -----------------------------------------------------------------------
    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        _check(messages, "user" if add_generation_prompt else None)
        if self.chat_template is not None:
            return self._jinja(None, messages, add_generation_prompt)
        return "".join(p + a for p, a in self._segments(messages, add_generation_prompt))

    def encode_prompt(self, tokenizer, messages: list[dict]) -> list[int]:
        _check(messages, "user")
        ids: list[int] = []
        for prompt, answer in self._segments(messages, True, tokenizer):
            ids += _tok(tokenizer, prompt) + _tok(tokenizer, answer)
        return ids

    def encode_batch(self, tokenizer, conversations: list[list[dict]], cutoff_len: int | None = None) -> list[Encoded]:
        """`encode` for many conversations with ONE tokenizer call over all their distinct segment
        texts: the Rust tokenizer batches in parallel, and per-call Python overhead is paid once."""
        texts: set[str] = set()
        for messages in conversations:
            _check(messages, "assistant")
            for prompt, answer in self._segments(messages, False, tokenizer):
                texts.add(prompt)
                texts.update(_split_tail(answer))
        texts.discard("")
        ordered = list(texts)
        ids = tokenizer(ordered, add_special_tokens=False)["input_ids"] if ordered else []
        cache = {text: list(i) for text, i in zip(ordered, ids)}
        return [self.encode(tokenizer, m, cutoff_len, _cache=cache) for m in conversations]

    def encode(self, tokenizer, messages: list[dict], cutoff_len: int | None = None, *, _cache: dict[str, list[int]] | None = None) -> Encoded:
        _check(messages, "assistant")
        if cutoff_len is not None and cutoff_len < 1:
            raise ValueError(f"cutoff_len must be >= 1, got {cutoff_len}")
        system = [messages[0]] if messages[0]["role"] == "system" else []
        turns = list(messages[len(system):])
        cache: dict[str, list[int]] = {} if _cache is None else _cache  # dropping a pair leaves most segment texts unchanged

        def tok(text: str) -> list[int]:
            if text not in cache:
                cache[text] = _tok(tokenizer, text)
            return cache[text]

        truncated = False
        while True:
            # Re-segment after each drop: the first turn's prompt carries the system/prefix.
            segs = [(tok(p), *map(tok, _split_tail(a)))
                    for p, a in self._segments(system + turns, False, tokenizer)]
            total = sum(len(p) + len(b) + len(t) for p, b, t in segs)
            if cutoff_len is None or total <= cutoff_len or len(turns) <= 2:
                break
            turns, truncated = turns[2:], True  # drop the oldest user/assistant pair

        input_ids: list[int] = []
        labels: list[int] = []
        for p, body, tail in segs[:-1]:
            input_ids += p + body + tail
            labels += [IGNORE_INDEX] * len(p) + body + [IGNORE_INDEX] * len(tail)

        p, body, tail = segs[-1]
        response = body + tail
        response_labels = body + [IGNORE_INDEX] * len(tail)
        if cutoff_len is not None and total > cutoff_len:
            # Only one pair left and still too long: the response keeps at least ~1/3 of the
            # budget (cut from the right: its beginning matters most), the prompt the rest (cut
            # from the left: the end of the question and the generation prompt matter most).
            truncated = True
            r = min(len(response), max(cutoff_len - len(p), cutoff_len // 3, 1))
            keep_p = cutoff_len - r
            p = p[len(p) - keep_p:] if keep_p else []
            response, response_labels = response[:r], response_labels[:r]
        input_ids += p + response
        labels += [IGNORE_INDEX] * len(p) + response_labels
        return Encoded(input_ids=input_ids, labels=labels, truncated=truncated)


def _tok(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False)) if text else []


_TEMPLATES: dict[str, Template] = {
    t.name: t for t in (
        # Classic "Human/Assistant" format (LLaMA-Factory's "default"); EOS closes each answer
        # so the model learns to stop.
        Template(
            name="default", system="{system}\n", user="Human: {user}\n",
            generation_prompt="Assistant:", assistant=" {assistant}{eos}\n",
            default_system=("A curious user is talking with an AI assistant. The assistant "
                            "answers the user's questions helpfully, in detail and politely."),
            stops=("{eos}", "\nHuman:")),
        Template(
            name="llama2", user="{bos}[INST] {user} [/INST]",
            first_user="{bos}[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]",
            assistant=" {assistant} {eos}", strip_content=True, stops=("{eos}",)),
        # Llama 3 uses its own literal control tokens, not the tokenizer's generic bos/eos.
        Template(
            name="llama3", prefix="<|begin_of_text|>",
            system="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
            user="<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>",
            generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
            assistant="{assistant}<|eot_id|>", strip_content=True,
            stops=("<|eot_id|>", "<|end_of_text|>")),
        Template(
            name="chatml", system="<|im_start|>system\n{system}<|im_end|>\n",
            user="<|im_start|>user\n{user}<|im_end|>\n",
            generation_prompt="<|im_start|>assistant\n",
            assistant="{assistant}<|im_end|>\n", stops=("<|im_end|>",)),
        Template(
            name="qwen", system="<|im_start|>system\n{system}<|im_end|>\n",
            user="<|im_start|>user\n{user}<|im_end|>\n",
            generation_prompt="<|im_start|>assistant\n",
            assistant="{assistant}<|im_end|>\n", default_system="You are a helpful assistant.",
            stops=("<|im_end|>", "<|endoftext|>")),
        # Baichuan2: system text as is, then <reserved_106>/<reserved_107> (ids 195/196 in
        # Baichuan2's vocabulary) open user/assistant turns; no BOS.
        Template(
            name="baichuan2", system="{system}", user="<reserved_106>{user}",
            generation_prompt="<reserved_107>", assistant="{assistant}{eos}",
            stops=("{eos}", "<reserved_106>")),
        # Mistral has no system role: the system prompt is prepended to the first user message.
        Template(
            name="mistral", prefix="{bos}", user="[INST] {user} [/INST]",
            first_user="[INST] {system}\n\n{user} [/INST]", assistant="{assistant}{eos}",
            stops=("{eos}",)),
    )
}

TEMPLATE_NAMES: tuple[str, ...] = tuple(_TEMPLATES)


def _auto(tokenizer) -> Template:
    chat_template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not isinstance(chat_template, str) or not chat_template:
        raise ValueError("template 'auto' needs a tokenizer with a chat_template (a Jinja "
                         "string); this one has none. Use a named template: "
                         + ", ".join(TEMPLATE_NAMES))
    tpl = Template(name="auto", chat_template=chat_template).bind(tokenizer)
    # The end-of-turn marker is whatever the template writes right after an answer.
    stops: list[str] = []
    try:
        probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": _PROBE}]
        (_, answer), = tpl._jinja_segments(probe, False, tokenizer)
        _, sep, after = answer.partition(_PROBE)
        marker = after.strip()
        if sep and marker:
            stops.append(marker)
    except Exception:  # noqa: BLE001 - some templates refuse the probe; fall back to EOS
        pass
    if getattr(tokenizer, "eos_token", None):
        stops.append(tokenizer.eos_token)
    return dataclasses.replace(tpl, stops=tuple(stops))


def get_template(name: str, tokenizer=None) -> Template:
    """The named template (bound to ``tokenizer``'s bos/eos if given), or ``auto``."""
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "auto":
        return _auto(tokenizer)
    if key not in _TEMPLATES:
        valid = (*TEMPLATE_NAMES, "auto")
        near = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown chat template {name!r}.{hint} Valid names: {', '.join(valid)}")
    return _TEMPLATES[key].bind(tokenizer)
