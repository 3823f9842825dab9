"""Lay words -> the clinical vocabulary of the department guides, for triage queries.

Patients write 拉肚子, 发烧, 乙肝大三阳; the guides say 腹泻, 发热, 肝炎 / 消化系统. BM25 only matches
shared words, so triage adds the clinical terms of every lay phrase it finds in the query (the
patient's words stay; terms are appended once). The table is general medical knowledge written for
this project, grouped by body system; it is deliberately small and coarse (body system level), so it
helps any guide text that uses standard terms rather than fitting one data set. `caregpt triage
--no-expand` and `caregpt eval --task triage --no-expand` measure retrieval without it.
"""

from __future__ import annotations

# (lay phrases, clinical terms appended when any phrase occurs)
LAY_TERMS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("发烧", "发热", "高烧", "低烧", "体温"), "发热 感染"),
    (("咳嗽", "咳痰", "有痰", "痰多", "咳"), "咳嗽 呼吸系统 支气管炎"),
    (("喘", "气短", "憋气", "呼吸困难", "肺"), "呼吸系统 哮喘 肺部"),
    (("胸闷", "胸口", "心慌", "心悸", "心跳", "早搏", "心脏"), "心脏 心律失常 冠心病"),
    (("血压", "降压"), "心脏 心血管"),
    (("血脂", "胆固醇", "动脉硬化"), "心血管 心脏"),
    (("胃", "反酸", "烧心", "恶心", "呕吐", "拉肚子", "腹泻", "便秘", "肚子", "腹痛", "腹胀", "胀气", "消化不良", "大便"),
     "消化系统 胃炎 肠炎 消化道"),
    (("肝", "乙肝", "丙肝", "大三阳", "小三阳", "转氨酶", "黄疸", "胆"), "肝脏 肝炎 消化系统"),
    (("血糖", "糖尿病", "甲状腺", "甲亢", "甲减", "激素"), "内分泌 糖尿病 甲状腺"),
    (("头痛", "头疼", "头晕", "偏头痛", "失眠", "眩晕", "麻木", "手脚麻", "中风", "脑梗", "癫痫", "抽搐", "记忆力", "帕金森"),
     "神经系统 头痛 大脑"),
    (("尿频", "尿急", "尿痛", "血尿", "结石", "前列腺", "排尿", "小便"), "泌尿系统 尿道 膀胱"),
    (("肾", "蛋白尿", "肌酐", "尿毒症", "浮肿", "水肿"), "肾脏 肾病"),
    (("关节", "腰疼", "腰痛", "骨折", "扭伤", "颈椎", "腰椎", "膝盖", "骨头", "骨质", "腿疼"), "骨骼 关节炎 脊柱"),
    (("皮疹", "湿疹", "痒", "瘙痒", "痘", "痤疮", "脱发", "荨麻疹", "红疹", "疹子", "皮肤", "斑", "癣"), "皮肤病 皮肤"),
    (("月经", "白带", "阴道", "子宫", "卵巢", "痛经", "宫颈", "妇科"), "妇科 女性生殖系统 月经不调"),
    (("怀孕", "孕", "产后", "胎儿", "分娩", "备孕"), "孕期 产科 分娩"),
    (("孩子", "宝宝", "小孩", "儿童", "婴儿", "幼儿", "儿子", "女儿", "岁的"), "儿童"),
    (("新生儿", "刚出生", "满月"), "新生儿"),
    (("眼睛", "视力", "看不清", "近视", "眼", "散光"), "眼部 视力"),
    (("耳朵", "耳鸣", "听力", "耳"), "耳部 听力"),
    (("鼻塞", "流鼻涕", "鼻炎", "打喷嚏", "鼻"), "鼻子 鼻炎"),
    (("嗓子", "喉咙", "咽喉", "声音嘶哑", "咽炎", "扁桃体"), "喉部 喉咙"),
    (("牙", "牙疼", "牙龈", "口腔溃疡", "智齿"), "牙齿 口腔"),
    (("焦虑", "抑郁", "情绪", "压力大", "心情", "紧张", "心理"), "心理 焦虑 抑郁"),
    (("贫血", "白细胞", "血小板", "血象", "血常规"), "血液 贫血"),
    (("肿瘤", "癌", "肿块", "化疗", "放疗"), "肿瘤 恶性肿瘤"),
    (("过敏",), "过敏 免疫"),
    (("风湿", "红斑狼疮", "痛风", "强直"), "风湿 免疫 关节"),
    (("阳痿", "早泄", "性功能", "阴茎", "睾丸", "包皮"), "泌尿系统 生殖"),
    (("痔疮", "肛门", "便血", "肛"), "肠道"),
    (("整形", "双眼皮", "隆鼻", "祛斑", "美容", "疤痕"), "整形 美容"),
    (("艾滋", "梅毒", "性病", "尖锐湿疣", "疱疹", "淋病"), "性病 性传播疾病 感染"),
    (("结核", "寄生虫", "传染"), "感染 传染病"),
)


def expand_query(text: str) -> str:
    """`text` followed by the clinical terms of the lay phrases it contains (each term once)."""
    added: list[str] = []
    for phrases, terms in LAY_TERMS:
        if any(phrase in text for phrase in phrases):
            added += [t for t in terms.split() if t not in added]
    return f"{text}\n{' '.join(added)}" if added else text
