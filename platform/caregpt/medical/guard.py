"""Safety guard for a medical chat: urgent-care advice first, refusals for harmful requests, a disclaimer.

    guard = SafetyGuard(GuardConfig(emergency_number="120"))
    decision = guard.check(messages)        # OpenAI-style [{"role", "content"}, ...]
    decision.action                         # "pass" | "urgent" | "refuse"

How serving uses a decision:
- pass:   answer as usual, then append `decision.disclaimer` (empty when the conversation already has it).
- urgent: put `decision.reply_prefix` (what to do now, the emergency number) before the model's answer.
- refuse: do not call the model; answer `decision.reply_prefix` alone (for self-harm it is the crisis message).
`decision.labels()` gives {"action", "category", "rule", "layer"} for counting decisions as metrics.

Layers, cheapest first; every decision names the layer and the reason (`decision.layer`, `decision.rule`):
1. normalisation (guard_normalize.py): width, traditional -> simplified, spaces, pinyin-level homophone repair;
   clauses about the past or an imagined case are set aside for the emergency checks;
2. rules (guard_rules.py): precise patterns for harmful requests (incl. controlled substances, covert dosing,
   poison amounts) and emergencies;
3. concepts (guard_concepts.py): a red-flag symptom with severity / onset / a vulnerable person;
4. the learned classifier (guard_classifier.py): character n-grams, trained on the dev set, threshold from dev;
5. optionally an LLM judge (guard_judge.py, `GuardConfig.judge_base_url`/`judge_model`), which may only escalate
   a pass: the cheap layers' refusals and urgent advice always stand.

The latest user message is checked; when it passes, it is checked again joined to the previous user message,
so an emergency told across two turns ("我爸胸口疼" ... "现在出了一身冷汗") is caught. Earlier messages alone
are not re-flagged: they were answered (with their own advice) already. Nothing here logs message text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from caregpt.medical import guard_rules as R
from caregpt.medical.guard_concepts import concept_emergency
from caregpt.medical.guard_normalize import normalize, present_clauses

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
        "general": "你描述的情况可能很危险，需要尽快由医生当面评估。",
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
        "general": "What you describe may be dangerous and needs a doctor to see it soon.",
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
    classifier: bool = True  # the learned layer (trained on the shipped dev set when the guard is built)
    judge_base_url: str = ""  # optional LLM judge: an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    judge_model: str = ""  # the served model id the judge asks
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_timeout: float = 10.0


@dataclass(frozen=True)
class GuardDecision:
    action: str  # "pass" | "urgent" | "refuse"
    category: str  # "none", an emergency category (cardiac, stroke, ...) or a harm category
    reply_prefix: str  # urgent: text before the answer; refuse: the whole answer; pass: ""
    disclaimer: str  # text to append to the answer; "" when already in the conversation
    language: str = "zh"
    rule: str = ""  # the reason: the rule, concept set or model that decided (never message text)
    layer: str = "none"  # rules | concepts | classifier | judge | none

    def labels(self) -> dict[str, str]:
        """Bounded metric labels (never message text): action, category, rule (the reason) and deciding layer."""
        return {"action": self.action, "category": self.category, "rule": self.rule or "none", "layer": self.layer}


def message_text(message: dict) -> str:
    """The text of one OpenAI-style message (plain string or a list of content parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


# figures of speech that are not about self-harm or an emergency: "加班加到想死", "笑死我了", "热死了"
_IDIOMS = re.compile(r"(?:累|困|饿|热|冷|烦|忙|闷|无聊|加|气|笑|想你想|馋)[到得]?(?:想死|要死|死了?)|[笑热累气烦馋]死(?:我|人)?了?|想死你|"
                     r"心脏病都要犯|抽动症")
MAX_CHECKED_CHARS = 4000  # a message is checked on its first 4000 characters: bounded work per request


class SafetyGuard:
    """Stateless and fast (well under a millisecond per message without the judge): safe on every request."""

    def __init__(self, config: GuardConfig | None = None, classifier=None):
        self.config = config or GuardConfig()
        self.classifier = classifier
        if self.classifier is None and self.config.enabled and self.config.classifier:
            from caregpt.medical.guard_classifier import default_classifier

            self.classifier = default_classifier()  # trained once per process (about a second), here not per request
        self.judge = None
        if self.config.judge_base_url or self.config.judge_model:
            from caregpt.medical.guard_judge import GuardJudge

            self.judge = GuardJudge(self.config.judge_base_url, self.config.judge_model,
                                    self.config.judge_api_key_env, self.config.judge_timeout)

    def check(self, messages: Sequence[dict]) -> GuardDecision:
        users = [m for m in messages if m.get("role") == "user"]
        text = message_text(users[-1])[:MAX_CHECKED_CHARS] if users else ""
        language = "zh" if _CJK.search(text) else "en"
        disclaimer = self._disclaimer(messages, language)
        if not self.config.enabled or not text.strip():
            return GuardDecision("pass", "none", "", disclaimer, language)
        found = self.classify(text)
        if found is None and len(users) >= 2:  # an emergency told across the last two user turns
            earlier = message_text(users[-2])[:MAX_CHECKED_CHARS]
            if self.classify(earlier, learned=False) is None:
                joined = self.classify(earlier + "。" + text, learned=False)
                found = joined if joined and joined[0] == "urgent" else None
        if found is None and self.judge is not None:
            found = self.judge.classify(text)
        if found is None:
            return GuardDecision("pass", "none", "", disclaimer, language)
        action, category, layer, reason = found
        if action == "refuse":
            return GuardDecision("refuse", category, self._refusal(category, language), "", language, reason, layer)
        return GuardDecision("urgent", category, self._urgent(category, language), disclaimer, language, reason, layer)

    def classify(self, text: str, learned: bool = True) -> tuple[str, str, str, str] | None:
        """(action, category, layer, reason) for one text without the judge, or None when it passes."""
        normal = normalize(text)
        harmful = classify_harm(normal)
        if harmful:
            return "refuse", harmful[0], "rules", harmful[1]
        present = _IDIOMS.sub("", present_clauses(normal))
        emergency = classify_emergency(present) if present else None
        if emergency:
            return "urgent", emergency[0], "rules", emergency[1]
        concept = concept_emergency(present) if present else None
        if concept:
            return "urgent", concept[0], "concepts", concept[1]
        if learned and self.classifier is not None and present:
            label, _ = self.classifier.predict(normal)
            if label == "refuse":
                return "refuse", "harmful_request", "classifier", "classifier.char_ngram"
            if label == "urgent":
                return "urgent", _guess_category(present), "classifier", "classifier.char_ngram"
        return None

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


def _guess_category(text: str) -> str:
    """The category of the first red-flag word in a text the classifier flagged, else "general"."""
    from caregpt.medical.guard_concepts import _SYMPTOM, SYMPTOMS

    match = _SYMPTOM.search(text)
    return SYMPTOMS[match.group(0)] if match else "general"


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
    if R.SELF_METHOD_MORE.search(text):
        return "self_harm", "refuse.self_harm_method"
    if R.COVERT_DOSING.search(text):
        return "harm_others", "refuse.covert_dosing"
    if R.POISON_AMOUNT.search(text):
        return "lethal_means", "refuse.poison_amount"
    if R.CONTROLLED_ACQUIRE.search(text):
        return "illicit_drugs", "refuse.controlled_without_prescription"
    if R.TOXIC_GAS.search(text):
        return "lethal_means", "refuse.toxic_gas"
    return None
