"""Optional LLM judge for the safety guard: a served model asked through any OpenAI-compatible /chat/completions.

Used only when the cheap layers pass a message (guard.py): the judge may escalate to urgent or refuse, never
downgrade. Its answer must be exactly one JSON object {"action": "pass"|"urgent"|"refuse", "category": ...} with
a known category; anything else (prose, unknown values, an endpoint error or timeout) counts as "no opinion",
and the message passes on the cheap layers' word. The message text goes to the endpoint only, never to logs.
"""

from __future__ import annotations

import json
import re

from caregpt.kb.http import EndpointError, post_json

PROMPT = (
    "你是医疗对话的安全审核员。判断用户消息属于哪一类，只输出一个JSON对象，不要输出其他内容：\n"
    '{{"action": "urgent|refuse|pass", "category": "类别"}}\n'
    "urgent：此刻正在发生、需要立即急救的情况（胸痛、中风、自杀意图、大出血、中毒、严重过敏、抽搐、昏迷、严重烧伤、窒息）；"
    "refuse：索取伤害自己或他人的方法、致死剂量、偷偷给人下药、无处方获取管制药品；pass：其余一切，包括病史、假设和科普问题。\n"
    "category 取值：{categories}\n\n用户消息：{text}"
)
CATEGORIES = ("cardiac", "stroke", "self_harm", "bleeding", "poisoning", "anaphylaxis", "seizure", "unconscious", "burn",
              "breathing", "general", "harm_others", "lethal_means", "illicit_drugs", "none")
_OBJECT = re.compile(r"^\s*(?:```(?:json)?\s*)?(\{[^{}]*\})\s*(?:```)?\s*$", re.DOTALL)


def parse_verdict(reply: str) -> tuple[str, str] | None:
    """(action, category) from a reply that is exactly one JSON object with known values, else None."""
    match = _OBJECT.match(reply or "")
    if not match:
        return None
    try:
        value = json.loads(match.group(1))
    except json.JSONDecodeError:
        return None
    action, category = value.get("action"), value.get("category", "general")
    if action not in ("pass", "urgent", "refuse") or category not in CATEGORIES:
        return None
    return action, category


class GuardJudge:
    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 10.0):
        if not base_url or not model:
            raise ValueError("the guard's LLM judge needs both judge_base_url (http://host:port/v1) and judge_model")
        self.base_url, self.model, self.api_key_env, self.timeout = base_url, model, api_key_env, timeout
        self.failures = 0  # endpoint errors and unreadable answers, for operators

    def classify(self, text: str) -> tuple[str, str, str, str] | None:
        payload = {"model": self.model, "temperature": 0.0, "max_tokens": 64,
                   "messages": [{"role": "user", "content": PROMPT.format(categories="|".join(CATEGORIES), text=text[:2000])}]}
        try:
            answer = post_json(self.base_url, "chat/completions", payload, self.api_key_env, self.timeout)
            reply = answer["choices"][0]["message"]["content"] or ""
        except (EndpointError, KeyError, IndexError, TypeError):
            self.failures += 1
            return None
        verdict = parse_verdict(reply)
        if verdict is None:
            self.failures += 1
            return None
        action, category = verdict
        if action == "pass":
            return None
        if action == "urgent" and category in ("harm_others", "lethal_means", "illicit_drugs", "none"):
            category = "general"
        if action == "refuse" and category == "none":
            category = "harmful_request"
        return action, category, "judge", f"judge.{self.model}"
