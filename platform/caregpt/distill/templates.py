"""Prompt templates: the defaults per kind, which fields each template may use, and rendering.

Templates are Python format strings (`{seed}`, `{question}`, ...). Literal braces, as in a JSON example
inside a prompt, are written doubled: `{{` and `}}`.
"""

from __future__ import annotations

import string

DEFAULT_SYSTEM = "你是一名经验丰富、严谨负责的临床医生。回答要准确、通俗，遇到急症提醒及时就医，不替代医生面诊。"

DEFAULT_QUESTION = (
    "请以患者的口吻，围绕“{seed}”提出一个真实、具体的医疗咨询问题。只输出问题本身，不要任何解释。"
)
DEFAULT_ANSWER = "请回答下面的医疗咨询问题，给出清晰、可操作的建议，并说明何时需要就医。\n\n问题：{question}"
DEFAULT_JUDGE = (
    "下面是一个医疗咨询问题和两个回答。请判断哪个回答更准确、更安全、更有帮助。\n\n"
    "问题：{question}\n\n回答A：{answer_a}\n\n回答B：{answer_b}\n\n"
    '只输出一个 JSON 对象，例如 {{"better": "A", "reason": "..."}}，better 的值只能是 "A" 或 "B"。'
)
DEFAULT_DIALOGUE = (
    "请围绕“{seed}”写一段患者与医生之间的多轮中文问诊对话，共 {turns} 轮（每轮患者说一次、医生答一次），"
    "由患者开始、医生结束。只输出一个 JSON 数组，例如 "
    '[{{"role": "user", "content": "..."}}, {{"role": "assistant", "content": "..."}}]，不要其他文字。'
)
DEFAULT_DOCUMENT = (
    "请为医疗知识库写一篇关于“{seed}”的简明科普文档：包括概述、常见表现、就诊科室与检查、处理原则和注意事项。"
    "直接输出正文。"
)

# template key -> the fields it may use; checked when the config loads, so a typo fails before any request
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "question_template": ("seed", "variant"),
    "answer_template": ("question", "seed", "variant"),
    "alt_answer_template": ("question", "seed", "variant"),
    "judge_template": ("question", "answer_a", "answer_b"),
    "dialogue_template": ("seed", "variant", "turns"),
    "document_template": ("seed", "variant"),
}

# which templates shape the output of each kind (they are part of every seed id of that kind)
KIND_TEMPLATES: dict[str, tuple[str, ...]] = {
    "sft": ("question_template", "answer_template"),
    "multiturn": ("dialogue_template",),
    "preference": ("question_template", "answer_template", "alt_answer_template", "judge_template"),
    "kb_document": ("document_template",),
}


def template_fields(template: str) -> set[str]:
    """Names used as `{name}` in a format string; raises ValueError for unbalanced braces."""
    names = set()
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            names.add(field.split(".")[0].split("[")[0])
    return names


def check_template(key: str, template: str) -> None:
    """Raise ValueError naming the bad field and the allowed ones."""
    allowed = TEMPLATE_FIELDS[key]
    try:
        used = template_fields(template)
    except ValueError as exc:
        raise ValueError(f"{key} is not a valid template ({exc}); write literal braces as '{{{{' and '}}}}'") from None
    shown = ", ".join("{" + f + "}" for f in allowed)
    if "" in used:
        raise ValueError(f"{key} uses an empty field {{}}; name the field, one of: {shown}")
    unknown = sorted(used - set(allowed))
    if unknown:
        raise ValueError(f"{key} uses {{{unknown[0]}}}, which is not available here; allowed: {shown}")


def render(template: str, **values: object) -> str:
    return template.format(**values)
