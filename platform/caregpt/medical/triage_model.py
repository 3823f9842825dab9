"""Re-ranking triage candidates with a served model through any OpenAI-compatible /chat/completions.

The model sees the patient's description and the retrieved candidate departments (name and the
guide's opening sentence), and must answer JSON naming departments *from the candidates* with a
short reason each. Anything else (no JSON, unknown names, an endpoint error) keeps the retrieval
ranking and says why in the result's notes, so a weak or absent model never makes triage worse
than retrieval alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from caregpt.kb.http import EndpointError, post_json

PROMPT = (
    "你是医院导诊护士。根据患者描述，从候选科室中选出最合适的{k}个科室，按推荐程度排序，并各用一句话说明理由。\n"
    "只能从候选科室中选择。只输出JSON，格式："
    '{{"departments": [{{"name": "科室名", "reason": "理由"}}]}}\n\n'
    "患者描述：{text}\n\n候选科室：\n{candidates}"
)
_JSON = re.compile(r"\{.*\}", re.DOTALL)


class TriageModel:
    """A served chat model used to re-rank: base_url like http://127.0.0.1:8000/v1, model as served."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0):
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = timeout

    def ask(self, prompt: str) -> str:
        payload = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0}
        answer = post_json(self.base_url, "chat/completions", payload, self.api_key_env, self.timeout)
        try:
            return answer["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url}/chat/completions answered without choices[0].message.content") from None

    def rerank(self, text: str, candidates: Sequence, catalog, k: int, fallback):
        """A TriageResult ordered by the model, or `fallback` (retrieval) with a note saying why not."""
        from caregpt.medical.triage import Recommendation, TriageResult

        listing = "\n".join(f"- {c.department}：{catalog.get(c.department).guide.split('。')[0]}。" for c in candidates)
        try:
            reply = self.ask(PROMPT.format(k=k, text=text.strip()[:2000], candidates=listing))
        except EndpointError as err:
            fallback.notes.append(f"model not used: {err}")
            return fallback
        chosen = parse_choice(reply, [c.department for c in candidates])
        if not chosen:
            fallback.notes.append("model not used: its answer named no candidate department in the JSON format asked")
            return fallback
        by_name = {c.department: c for c in candidates}
        ordered = [
            Recommendation(name, by_name[name].group, by_name[name].score, ((reason,) if reason else ()) + by_name[name].reasons)
            for name, reason in chosen
        ]
        for candidate in candidates:  # fill up from retrieval when the model named fewer than k
            if len(ordered) >= k:
                break
            if candidate.department not in {r.department for r in ordered}:
                ordered.append(candidate)
        return TriageResult(ordered[:k], "retrieval+model", fallback.notes)


def parse_choice(reply: str, allowed: Sequence[str]) -> list[tuple[str, str]]:
    """(department, reason) pairs from the model's JSON, keeping allowed names only, without repeats."""
    match = _JSON.search(reply or "")
    if not match:
        return []
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return []
    items = value.get("departments") if isinstance(value, dict) else None
    out: list[tuple[str, str]] = []
    for item in items if isinstance(items, list) else []:
        name = item.get("name") if isinstance(item, dict) else item if isinstance(item, str) else None
        reason = item.get("reason", "") if isinstance(item, dict) else ""
        if isinstance(name, str) and name.strip() in allowed and name.strip() not in {n for n, _ in out}:
            out.append((name.strip(), str(reason).strip()))
    return out
