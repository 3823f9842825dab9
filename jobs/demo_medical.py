"""The demo's last screen: the medical layer of the served API next to the tiny model's own words.

Everything goes through the API a user's client talks to (the `openai` SDK and one plain HTTP POST), so
the screen shows what serving does, not a re-implementation: the safety guard's urgent advice before
the model's answer, department triage, and a knowledge-base answer with its citations.
"""

from __future__ import annotations

import json
import textwrap
import urllib.request
from pathlib import Path

EMERGENCY = "我爸突然胸口剧痛，喘不上气，满头大汗，怎么办？"
SYMPTOMS = "最近总是拉肚子，肚子疼，吃完油腻的东西更明显"
KB_QUESTION = "孩子咳嗽发烧，呼吸急促，应该挂哪个科？"
WIDTH = 96  # terminal columns
CJK_WIDTH = 44  # Chinese characters per line: each takes two columns


def _short(text: str, width: int = CJK_WIDTH, indent: str = "     ") -> str:
    """At most two lines of the text, single-spaced."""
    flat = " ".join(text.split())
    lines = textwrap.wrap(flat, width=width, max_lines=2, placeholder=" …")
    return "\n".join(indent + line for line in lines) if lines else indent + "(empty)"


def _department(document: str, names: list[str]) -> str:
    """A citation's document id is `<file>#<record>`; record i of the guide file is catalog department i."""
    try:
        return names[int(document.rsplit("#", 1)[1])]
    except (IndexError, ValueError):
        return document


def show_medical_layer(base_url: str, model: str, kb_name: str, guides: Path) -> None:
    from openai import OpenAI

    from caregpt.medical.catalog import load_catalog

    client = OpenAI(base_url=base_url, api_key="not-needed", max_retries=2, timeout=300)
    names = load_catalog(guides).names
    print("\n" + "=" * WIDTH)
    print(f"The medical layer around the tiny model  (served at {base_url}, model {model})")
    print("=" * WIDTH)

    print(f"1. Safety guard: an emergency\n   Q: {EMERGENCY}")
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": EMERGENCY}],
                                           temperature=0, max_tokens=32)
    advice, _, answer = (reply.choices[0].message.content or "").partition("\n\n")
    print("   guard (before the model):\n" + _short(advice))
    print("   tiny model:\n" + _short(answer))

    print(f"2. Triage: which department?\n   Q: {SYMPTOMS}")
    request = urllib.request.Request(f"{base_url}/triage", data=json.dumps({"text": SYMPTOMS, "k": 3}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        departments = json.load(response)["departments"]
    for rank, item in enumerate(departments, start=1):
        reason = (item.get("reasons") or [""])[0]
        room = CJK_WIDTH - 4 - len(item["department"])  # Chinese text has no spaces to shorten at: cut it
        print(f"     {rank}. {item['department']}: " + (reason if len(reason) <= room else reason[: room - 1] + "…"))

    print(f"3. Knowledge base '{kb_name}': an answer with citations\n   Q: {KB_QUESTION}")
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": KB_QUESTION}],
                                           temperature=0, max_tokens=32, extra_body={"knowledge_base": kb_name})
    print("   tiny model:\n" + _short(reply.choices[0].message.content or ""))
    for citation in (reply.model_extra or {}).get("citations") or []:
        print(f"     [{citation['index']}] {_department(citation['document'], names)} guide "
              f"({Path(citation['source']).name}, score {citation['score']:.2f})")
    print("=" * WIDTH)
    print("The guard, triage and retrieval are rules and search over the hospital guides; the answers")
    print("themselves come from a one-million-parameter model trained for minutes: not medical advice.")
