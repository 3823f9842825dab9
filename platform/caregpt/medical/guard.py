"""Safety guard for a medical chat: urgent-care advice first, refusals for harmful requests, a disclaimer.

    guard = SafetyGuard(GuardConfig(emergency_number="120"))
    decision = guard.check(messages)        # OpenAI-style [{"role", "content"}, ...]
    decision.action                         # "pass" | "urgent" | "refuse"

How serving uses a decision:
- pass:   answer as usual, then append `decision.disclaimer` (empty when the conversation already has it).
- urgent: put `decision.reply_prefix` (what to do now, the emergency number) before the model's answer.
- refuse: do not call the model; answer `decision.reply_prefix` alone (for self-harm it is the crisis message).
`decision.labels()` gives {"action", "category", "rule"} for counting decisions as metrics.

Only the latest user message is checked: earlier ones were answered (with their own advice) already,
and repeating the urgent block on every later turn would bury the conversation. Rules and policy are
in guard_rules.py; nothing here logs message text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from caregpt.medical import guard_rules as R

EMERGENCY_ADVICE = {
    "zh": {
        "cardiac": "胸痛伴呼吸困难、出冷汗或疼痛向手臂/下巴放射，可能是心肌梗死等急症。",
        "stroke": "口角歪斜、言语不清、一侧肢体无力是脑卒中（中风）的典型信号，治疗越早越好，请记下症状开始的时间。",
        "self_harm": "你现在的感受很重要，你并不孤单。请立即联系身边信任的人陪着你，远离可能伤害自己的物品。",
        "bleeding": "大量或止不住的出血很危险：用干净的布持续用力按压伤口，不要松开查看。",
        "poisoning": "疑似中毒或服药过量：不要自行催吐，保留药瓶或可疑物品，离开有毒环境（如煤气泄漏时开窗、关闭气源）。",
        "anaphylaxis": "这可能是严重过敏反应（过敏性休克）：如有肾上腺素笔请立即使用，平躺并抬高双腿（呼吸困难时可坐起）。",
        "seizure": "抽搐发作时：让患者侧卧，移开周围硬物，不要往嘴里塞任何东西，不要强行按压肢体，记录发作时间。",
        "unconscious": "意识丧失或没有正常呼吸：如无反应且无正常呼吸，请立即开始胸外按压（心肺复苏），并让旁人寻找AED。",
        "burn": "严重烧烫伤或化学灼伤：用流动的凉水持续冲洗至少20分钟，不要涂抹牙膏、酱油等，不要弄破水泡。",
        "breathing": "严重呼吸困难或窒息：如为异物卡喉且不能说话，请立即使用海姆立克急救法。",
    },
    "en": {
        "cardiac": "Chest pain with breathlessness, sweating or pain spreading to the arm or jaw can be a heart attack.",
        "stroke": "A drooping face, slurred speech or weakness on one side are stroke signs; every minute counts, note when they started.",
        "self_harm": "What you are feeling matters and you are not alone. Please reach out to someone you trust right now and stay away from anything you could hurt yourself with.",
        "bleeding": "Heavy or uncontrolled bleeding is dangerous: press firmly on the wound with a clean cloth and keep pressing.",
        "poisoning": "Possible poisoning or overdose: do not make the person vomit, keep the container, and get away from fumes.",
        "anaphylaxis": "This may be a severe allergic reaction (anaphylaxis): use an adrenaline auto-injector if one is available; lie down with legs raised (sit up if breathing is hard).",
        "seizure": "During a seizure: lay the person on their side, move hard objects away, put nothing in their mouth, do not hold them down, time the seizure.",
        "unconscious": "Unresponsive or not breathing normally: start chest compressions (CPR) and have someone fetch an AED.",
        "burn": "Severe or chemical burns: cool with running water for at least 20 minutes; do not apply creams or break blisters.",
        "breathing": "Severe breathing trouble or choking: if something is stuck and the person cannot speak, use abdominal thrusts (Heimlich).",
    },
}

CALL = {
    "zh": "【紧急提醒】{advice}请立即拨打急救电话 {number} 或尽快前往最近医院的急诊，不要等待线上回复。",
    "en": "[Urgent] {advice} Call the emergency number {number} now or go to the nearest emergency department; do not wait for an online answer.",
}
CRISIS = {
    "zh": "{advice}如果你有伤害自己的想法或已经受伤，请立即拨打 {number}{crisis}。",
    "en": "{advice} If you might act on these thoughts or are hurt, call {number} now{crisis}.",
}
REFUSAL = {
    "zh": "抱歉，这个请求可能被用来伤害他人或自己，我不能提供相关信息。如果有人已经服下有害物质或处于危险中，请立即拨打 {number}。",
    "en": "Sorry, I can't help with this: the information could be used to hurt someone. If anyone has taken something harmful or is in danger, call {number} now.",
}
DISCLAIMER = {
    "zh": "以上内容仅供健康科普参考，不能替代医生的面诊和诊断；如症状持续或加重，请及时就医。",
    "en": "This is general health information, not a substitute for a doctor's examination and diagnosis; see a doctor if symptoms persist or get worse.",
}
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass(frozen=True)
class GuardConfig:
    """Settings of the guard (a deployment passes them from its config)."""

    enabled: bool = True
    emergency_number: str = "120"  # the local emergency number; 120 is mainland China's
    crisis_line: str = ""  # optional crisis hotline named in self-harm messages, e.g. a local 24-hour line
    disclaimer: bool = True  # add the disclaimer once per conversation
    disclaimer_text: dict = field(default_factory=lambda: dict(DISCLAIMER))


@dataclass(frozen=True)
class GuardDecision:
    action: str  # "pass" | "urgent" | "refuse"
    category: str  # "none", an emergency category (cardiac, stroke, ...) or a harm category
    reply_prefix: str  # urgent: text before the answer; refuse: the whole answer; pass: ""
    disclaimer: str  # text to append to the answer; "" when already in the conversation
    language: str = "zh"
    rule: str = ""  # the rule that decided, for metrics and debugging (never message text)

    def labels(self) -> dict[str, str]:
        return {"action": self.action, "category": self.category, "rule": self.rule or "none"}


def message_text(message: dict) -> str:
    """The text of one OpenAI-style message (plain string or a list of content parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


class SafetyGuard:
    """Rule-based, stateless and fast (microseconds per message): safe to call on every request."""

    def __init__(self, config: GuardConfig | None = None):
        self.config = config or GuardConfig()

    def check(self, messages: Sequence[dict]) -> GuardDecision:
        users = [m for m in messages if m.get("role") == "user"]
        text = message_text(users[-1]) if users else ""
        language = "zh" if _CJK.search(text) else "en"
        disclaimer = self._disclaimer(messages, language)
        if not self.config.enabled or not text.strip():
            return GuardDecision("pass", "none", "", disclaimer, language)
        harmful = classify_harm(text)
        if harmful:
            category, rule = harmful
            return GuardDecision("refuse", category, self._refusal(category, language), "", language, rule)
        emergency = classify_emergency(text)
        if emergency:
            category, rule = emergency
            return GuardDecision("urgent", category, self._urgent(category, language), disclaimer, language, rule)
        return GuardDecision("pass", "none", "", disclaimer, language)

    def _urgent(self, category: str, language: str) -> str:
        advice = EMERGENCY_ADVICE[language][category]
        number = self.config.emergency_number
        if category == "self_harm":
            crisis = self.config.crisis_line
            crisis = (f"，或拨打心理援助热线 {crisis}" if language == "zh" else f", or the crisis line {crisis}") if crisis else ""
            return CRISIS[language].format(advice=advice, number=number, crisis=crisis)
        return CALL[language].format(advice=advice, number=number)

    def _refusal(self, category: str, language: str) -> str:
        if category == "self_harm":  # a method request from someone at risk gets the crisis message, not a lecture
            return self._urgent("self_harm", language)
        return REFUSAL[language].format(number=self.config.emergency_number)

    def _disclaimer(self, messages: Sequence[dict], language: str) -> str:
        if not self.config.disclaimer:
            return ""
        texts = self.config.disclaimer_text
        said = [message_text(m) for m in messages if m.get("role") == "assistant"]
        if any(t and t in s for s in said for t in texts.values()):
            return ""
        return texts.get(language) or next(iter(texts.values()), "")


def classify_emergency(text: str) -> tuple[str, str] | None:
    """(category, rule id) of the first emergency rule that fires, or None."""
    event = R.is_event(text)
    general = R.is_general(text)
    for rule in R.EMERGENCY_RULES:
        if (rule.event and not event) or general:
            continue
        hits = sum(1 for group in rule.groups if R.first_match(group, text))
        if hits >= (rule.need or len(rule.groups)):
            return rule.category, rule.id
    return None


def classify_harm(text: str) -> tuple[str, str] | None:
    """(category, rule id) when the text asks for something harmful, or None."""
    seeking = bool(R.SEEKING.search(text))
    if R.first_match(R.SELF_METHOD, text) and seeking:
        return "self_harm", "refuse.self_harm_method"
    if R.HARM_INTENT.search(text) or (seeking and R.HARM_OTHERS.search(text)):
        return "harm_others", "refuse.harm_others"
    if R.LETHAL_MEANS.search(text):
        self_directed = re.search(r"自杀|自己|myself|kill me\b", text, re.IGNORECASE)
        return ("self_harm", "refuse.self_harm_method") if self_directed else ("lethal_means", "refuse.lethal_means")
    if R.ILLICIT_DRUGS.search(text):
        return "illicit_drugs", "refuse.illicit_drugs"
    return None
