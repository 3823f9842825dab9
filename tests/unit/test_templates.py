"""Chat templates: exact rendering per family, label masking, ``auto`` and truncation."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from caregpt.data.templates import (IGNORE_INDEX, TEMPLATE_NAMES, Encoded, Template,
                                    get_template)

SPECIAL = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>",
           "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
           "<reserved_106>", "<reserved_107>"]

S, U1, A1 = "You are a careful doctor.", "I have a headache.", "Drink water and rest."
U2, A2 = "头痛需要吃药吗？", "可以服用布洛芬。"
CONV = [{"role": "system", "content": S}, {"role": "user", "content": U1},
        {"role": "assistant", "content": A1}, {"role": "user", "content": U2},
        {"role": "assistant", "content": A2}]

CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _build_tokenizer_object() -> Tokenizer:
    # Byte-level BPE: every string (Chinese included) round-trips exactly through decode.
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [S, U1, A1, U2, A2, "Human: Assistant: [INST] [/INST] <<SYS>> <</SYS>>",
              "The patient has a fever and a cough. 患者发烧、咳嗽，需要多喝水。"]
    tok.train_from_iterator(corpus * 5, trainer=trainer)
    return tok


_TOK_OBJ = _build_tokenizer_object()


def make_tokenizer(eos="</s>", chat_template=None) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=_TOK_OBJ, bos_token="<s>", eos_token=eos,
                                  clean_up_tokenization_spaces=False)
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def labelled_runs(tok, enc: Encoded) -> list[str]:
    """Decoded text of each maximal run of labelled positions."""
    runs, cur = [], []
    for label in enc.labels + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            cur.append(label)
        elif cur:
            runs.append(decode(tok, cur))
            cur = []
    return runs


# Hand-written from each family's documented chat format.
EXPECTED = {
    "default": (f"{S}\nHuman: {U1}\nAssistant: {A1}</s>\nHuman: {U2}\nAssistant: {A2}</s>\n",
                [f" {A1}</s>", f" {A2}</s>"]),
    "llama2": (f"<s>[INST] <<SYS>>\n{S}\n<</SYS>>\n\n{U1} [/INST] {A1} </s>"
               f"<s>[INST] {U2} [/INST] {A2} </s>",
               [f" {A1} </s>", f" {A2} </s>"]),
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
               f"{S}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
               f"<|start_header_id|>assistant<|end_header_id|>\n\n{A1}<|eot_id|>"
               f"<|start_header_id|>user<|end_header_id|>\n\n{U2}<|eot_id|>"
               f"<|start_header_id|>assistant<|end_header_id|>\n\n{A2}<|eot_id|>",
               [f"{A1}<|eot_id|>", f"{A2}<|eot_id|>"]),
    "chatml": (f"<|im_start|>system\n{S}<|im_end|>\n<|im_start|>user\n{U1}<|im_end|>\n"
               f"<|im_start|>assistant\n{A1}<|im_end|>\n<|im_start|>user\n{U2}<|im_end|>\n"
               f"<|im_start|>assistant\n{A2}<|im_end|>\n",
               [f"{A1}<|im_end|>", f"{A2}<|im_end|>"]),
    "baichuan2": (f"{S}<reserved_106>{U1}<reserved_107>{A1}</s><reserved_106>{U2}"
                  f"<reserved_107>{A2}</s>",
                  [f"{A1}</s>", f"{A2}</s>"]),
    "mistral": (f"<s>[INST] {S}\n\n{U1} [/INST]{A1}</s>[INST] {U2} [/INST]{A2}</s>",
                [f"{A1}</s>", f"{A2}</s>"]),
}
EXPECTED["qwen"] = EXPECTED["chatml"]

# render(system + one user turn, add_generation_prompt=True), and the same without a system.
EXPECTED_GEN = {
    "default": (f"{S}\nHuman: {U1}\nAssistant:",
                "A curious user is talking with an AI assistant. The assistant answers the "
                f"user's questions helpfully, in detail and politely.\nHuman: {U1}\nAssistant:"),
    "llama2": (f"<s>[INST] <<SYS>>\n{S}\n<</SYS>>\n\n{U1} [/INST]", f"<s>[INST] {U1} [/INST]"),
    "llama3": ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
               f"{S}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n",
               f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{U1}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    "chatml": (f"<|im_start|>system\n{S}<|im_end|>\n<|im_start|>user\n{U1}<|im_end|>\n"
               "<|im_start|>assistant\n",
               f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"),
    "qwen": (f"<|im_start|>system\n{S}<|im_end|>\n<|im_start|>user\n{U1}<|im_end|>\n"
             "<|im_start|>assistant\n",
             "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
             f"<|im_start|>user\n{U1}<|im_end|>\n<|im_start|>assistant\n"),
    "baichuan2": (f"{S}<reserved_106>{U1}<reserved_107>", f"<reserved_106>{U1}<reserved_107>"),
    "mistral": (f"<s>[INST] {S}\n\n{U1} [/INST]", f"<s>[INST] {U1} [/INST]"),
}


def test_every_named_template_is_covered():
    assert set(TEMPLATE_NAMES) == set(EXPECTED) == set(EXPECTED_GEN)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_render_multi_turn_matches_official_format(tok, name):
    assert get_template(name, tok).render(CONV) == EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED_GEN))
def test_render_generation_prompt_and_default_system(tok, name):
    tpl = get_template(name, tok)
    with_system, without_system = EXPECTED_GEN[name]
    assert tpl.render(CONV[:2], add_generation_prompt=True) == with_system
    assert tpl.render(CONV[1:2], add_generation_prompt=True) == without_system


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encode_labels_cover_exactly_every_assistant_turn(tok, name):
    tpl = get_template(name, tok)
    enc = tpl.encode(tok, CONV)
    assert len(enc.input_ids) == len(enc.labels) and not enc.truncated
    # Segment-wise ids still spell out the rendered conversation.
    assert decode(tok, enc.input_ids) == EXPECTED[name][0]
    # Every label is either ignored or equal to the input id at that position.
    assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(enc.labels, enc.input_ids))
    assert labelled_runs(tok, enc) == EXPECTED[name][1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encode_prompt_is_prefix_of_encode(tok, name):
    tpl = get_template(name, tok)
    prompt_ids = tpl.encode_prompt(tok, CONV[:4])
    assert decode(tok, prompt_ids) == tpl.render(CONV[:4], add_generation_prompt=True)
    enc = tpl.encode(tok, CONV)
    assert enc.input_ids[:len(prompt_ids)] == prompt_ids
    # The ids right after the prompt are the first labelled ones of the last answer.
    assert enc.labels[len(prompt_ids) - 1] == IGNORE_INDEX
    assert enc.labels[len(prompt_ids)] == enc.input_ids[len(prompt_ids)]


def test_bos_eos_come_from_the_tokenizer():
    other = make_tokenizer(eos="<|endoftext|>")
    tpl = get_template("default", other)
    assert tpl.render(CONV[1:3]).endswith(f"Assistant: {A1}<|endoftext|>\n")
    assert tpl.stop_strings == ("<|endoftext|>", "\nHuman:")
    enc = tpl.encode(other, CONV[1:3])
    assert labelled_runs(other, enc) == [f" {A1}<|endoftext|>"]


def test_stop_strings(tok):
    assert get_template("chatml", tok).stop_strings == ("<|im_end|>",)
    assert "<|endoftext|>" in get_template("qwen", tok).stop_strings
    assert get_template("llama3", tok).stop_strings[0] == "<|eot_id|>"
    assert get_template("mistral", tok).stop_strings == ("</s>",)


def test_braces_in_content_are_not_placeholders(tok):
    msgs = [{"role": "user", "content": "{eos} {user}"}, {"role": "assistant", "content": "{bos}"}]
    assert get_template("chatml", tok).render(msgs) == (
        "<|im_start|>user\n{eos} {user}<|im_end|>\n<|im_start|>assistant\n{bos}<|im_end|>\n")


# ---- auto ------------------------------------------------------------------------------------

def test_auto_matches_named_chatml(tok):
    auto_tok = make_tokenizer(chat_template=CHATML_JINJA)
    auto, named = get_template("auto", auto_tok), get_template("chatml", tok)
    assert auto.name == "auto"
    assert auto.render(CONV) == named.render(CONV)
    a, n = auto.encode(auto_tok, CONV), named.encode(tok, CONV)
    assert a.input_ids == n.input_ids and a.labels == n.labels
    assert auto.encode_prompt(auto_tok, CONV[:4]) == named.encode_prompt(tok, CONV[:4])
    cut = len(n.input_ids) - 5
    assert auto.encode(auto_tok, CONV, cut) == named.encode(tok, CONV, cut)
    assert auto.stop_strings == ("<|im_end|>", "</s>")


def test_auto_handles_a_template_that_injects_a_default_system(tok):
    qwen_like = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful "
                 "assistant.<|im_end|>\n{% endif %}" + CHATML_JINJA)
    auto_tok = make_tokenizer(chat_template=qwen_like)
    auto, qwen = get_template("auto", auto_tok), get_template("qwen", tok)
    for msgs in (CONV, CONV[1:]):
        a, q = auto.encode(auto_tok, msgs), qwen.encode(tok, msgs)
        assert (a.input_ids, a.labels) == (q.input_ids, q.labels)


def test_auto_rejects_a_template_that_is_not_prefix_stable():
    # Renders only the latest message, so history text changes as the conversation grows.
    last_only = ("{% for m in messages %}{% if loop.last %}<|im_start|>{{ m['role'] }}\n"
                 "{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    auto_tok = make_tokenizer(chat_template=last_only)
    with pytest.raises(ValueError, match="prefix-stable"):
        get_template("auto", auto_tok).encode(auto_tok, CONV)


def test_auto_without_chat_template_lists_names(tok):
    with pytest.raises(ValueError, match="chat_template") as err:
        get_template("auto", tok)
    assert all(name in str(err.value) for name in TEMPLATE_NAMES)
    with pytest.raises(ValueError, match="chat_template"):
        get_template("auto")


# ---- truncation ------------------------------------------------------------------------------

def _pair(q, a):
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


THREE_TURNS = ([{"role": "system", "content": S}] + _pair("first question", "first answer")
               + _pair(U1, A1) + _pair(U2, A2))


def test_fits_means_untouched(tok):
    tpl = get_template("chatml", tok)
    full = tpl.encode(tok, THREE_TURNS)
    assert tpl.encode(tok, THREE_TURNS, cutoff_len=len(full.input_ids)) == full
    assert not full.truncated


@pytest.mark.parametrize("keep", [1, 2])
def test_drops_oldest_pairs_and_keeps_system(tok, keep):
    tpl = get_template("chatml", tok)
    kept = THREE_TURNS[:1] + THREE_TURNS[1 + 2 * (3 - keep):]
    expected = tpl.encode(tok, kept)
    enc = tpl.encode(tok, THREE_TURNS, cutoff_len=len(expected.input_ids))
    assert enc.truncated
    assert (enc.input_ids, enc.labels) == (expected.input_ids, expected.labels)
    text = decode(tok, enc.input_ids)
    assert "first question" not in text and text.startswith(f"<|im_start|>system\n{S}")


def test_single_long_pair_cuts_prompt_left_and_response_right(tok):
    tpl = get_template("chatml", tok)
    question = " ".join(["the patient has a fever and a cough"] * 6) + " what now?"
    answer = "drink water " + " ".join(["and rest"] * 20)
    msgs = _pair(question, answer)
    full = tpl.encode(tok, msgs)
    cutoff = 30
    assert len(full.input_ids) > cutoff
    enc = tpl.encode(tok, msgs, cutoff_len=cutoff)
    assert enc.truncated and len(enc.input_ids) == len(enc.labels) == cutoff
    n_prompt = enc.labels.index(next(lab for lab in enc.labels if lab != IGNORE_INDEX))
    prompt, response = decode(tok, enc.input_ids[:n_prompt]), labelled_runs(tok, enc)[0]
    # The end of the question and the generation prompt survive; the answer keeps its start.
    assert prompt.endswith("what now?<|im_end|>\n<|im_start|>assistant\n")
    assert not prompt.startswith("<|im_start|>user")
    assert response.startswith("drink water") and answer.startswith(response)
    assert cutoff - n_prompt >= cutoff // 3


def test_short_response_is_kept_whole_short_prompt_too(tok):
    tpl = get_template("chatml", tok)
    long_text = " ".join(["the patient has a fever and a cough"] * 10)
    # Long prompt, short answer: the answer survives whole, including its end token.
    enc = tpl.encode(tok, _pair(long_text, "rest"), cutoff_len=20)
    assert len(enc.input_ids) == 20 and labelled_runs(tok, enc) == ["rest<|im_end|>"]
    # Short prompt, long answer: the prompt survives whole, the answer fills the rest.
    msgs = _pair("fever?", long_text)
    prompt_ids = tpl.encode_prompt(tok, msgs[:1])
    assert len(prompt_ids) < 40 * 2 // 3
    enc = tpl.encode(tok, msgs, cutoff_len=40)
    assert len(enc.input_ids) == 40 and enc.truncated
    assert enc.input_ids[:len(prompt_ids)] == prompt_ids
    assert long_text.startswith(labelled_runs(tok, enc)[0])


def test_cutoff_must_be_positive(tok):
    with pytest.raises(ValueError, match="cutoff_len"):
        get_template("chatml", tok).encode(tok, CONV, cutoff_len=0)


# ---- errors ----------------------------------------------------------------------------------

def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError) as err:
        get_template("chatlm")
    msg = str(err.value)
    assert "'chatlm'" in msg and "Did you mean 'chatml'" in msg
    assert all(name in msg for name in (*TEMPLATE_NAMES, "auto"))


@pytest.mark.parametrize("msgs, pattern", [
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
     r"messages\[1\] has role 'user' but 'assistant' was expected"),
    ([{"role": "assistant", "content": "a"}], r"messages\[0\] has role 'assistant'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
     r"messages\[1\] has role 'system'"),
    ([{"role": "doctor", "content": "a"}], r"role must be one of"),
    ([{"role": "user", "content": ["a"]}], r"content must be a str"),
    ([{"role": "system", "content": "a"}], r"no user turn"),
])
def test_bad_conversations_are_rejected(tok, msgs, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_template("chatml", tok).render(msgs)


def test_encode_needs_final_assistant_and_encode_prompt_final_user(tok):
    tpl = get_template("llama3", tok)
    with pytest.raises(ValueError, match="end with a 'assistant' turn"):
        tpl.encode(tok, CONV[:4])
    with pytest.raises(ValueError, match="end with a 'user' turn"):
        tpl.encode_prompt(tok, CONV)
    with pytest.raises(ValueError, match="end with a 'user' turn"):
        tpl.render(CONV, add_generation_prompt=True)


def test_template_is_frozen(tok):
    tpl = get_template("chatml", tok)
    assert isinstance(tpl, Template)
    with pytest.raises(AttributeError):
        tpl.name = "x"


@pytest.mark.parametrize("name", sorted(EXPECTED) + ["auto"])
def test_encode_batch_equals_encode_one_by_one(name):
    tok = make_tokenizer(chat_template=CHATML_JINJA) if name == "auto" else make_tokenizer()
    tpl = get_template(name, tok)
    conversations = [CONV, CONV[1:3], CONV[:1] + CONV[3:5], CONV]
    for cutoff in (None, 40):
        batch = tpl.encode_batch(tok, conversations, cutoff_len=cutoff)
        assert batch == [tpl.encode(tok, c, cutoff_len=cutoff) for c in conversations]
