"""How the department labels of dialogue data map onto the 60-department hospital catalog.

Triage is scored against the catalog, but datasets label dialogues with their own department names
(Toyhom's internal-medicine split: 心血管科, 肝病科, ...; CMtMedQA: 外科, 五官科, ...). Each entry below
lists the catalog departments that count as a correct answer for a label, with the reason. A label
that is a whole *group* in the catalog (外科, 儿科, 妇产科 ...) accepts any department of that group:
the data does not say which one, so any of them is a correct referral. Labels with no catalog
counterpart are listed in UNMAPPED with the reason; evaluation counts and reports them, never
silently drops them. `evaluate_triage` also reports the accuracy a random guess would get under this
mapping, so wide entries cannot pass for skill.

Targets are catalog department names or "group:<name>" for every department of a catalog group. A label that
is not in the table but is itself a catalog department or group name (消化内科, 骨科, 口腔科, 眼科) maps to itself.
"""

from __future__ import annotations

from collections.abc import Mapping

from caregpt.medical.catalog import Catalog

# label -> (targets, reason)
DEPARTMENT_MAP: dict[str, tuple[tuple[str, ...], str]] = {
    # Toyhom internal-medicine labels
    "心血管科": (("心内科",), "cardiology is 心内科 in the catalog"),
    "肝病科": (("消化内科", "感染病科"), "liver disease: hepatology sits in gastroenterology; viral hepatitis in infectious disease"),
    "消化科": (("消化内科",), "gastroenterology"),
    "神经科": (("神经内科",), "the Toyhom set is internal medicine, so neurology, not neurosurgery"),
    "内分泌科": (("内分泌科",), "same name"),
    "呼吸科": (("呼吸科",), "same name"),
    "肾内科": (("肾脏科",), "nephrology"),
    "感染科": (("感染病科",), "infectious disease"),
    "血液科": (("血液科",), "same name"),
    "普通内科": (("全科医学",), "general internal medicine is the catalog's general practice"),
    "风湿免疫科": (("风湿免疫科",), "same name"),
    # CMtMedQA labels
    "皮肤科": (("皮肤科",), "same name"),
    "皮肤性病科": (("皮肤科",), "the catalog's dermatology also covers sexually transmitted disease"),
    "外科": (("group:外科",), "a catalog group: any surgical department"),
    "儿科": (("group:儿科",), "a catalog group: any paediatric department"),
    "妇产科": (("group:妇产科",), "a catalog group: any obstetrics / gynaecology department"),
    "五官科": (("group:眼科", "group:耳鼻喉科", "口腔科"), "eye, ear-nose-throat and mouth: three catalog groups"),
    "整形美容": (("整形外科", "皮肤科"), "cosmetic questions: plastic surgery, and cosmetic dermatology (skin care, scars, pigment)"),
    "整形美容科": (("整形外科", "皮肤科"), "as 整形美容"),
    "美容": (("整形外科", "皮肤科"), "as 整形美容: cosmetic surgery or cosmetic dermatology"),
    "医学美容科": (("整形外科", "皮肤科"), "as 整形美容"),
    "中医科": (("全科医学",), "the catalog has no traditional-Chinese-medicine department; TCM questions span every organ "
                           "system, so the right first referral is general practice, which sees undifferentiated complaints"),
    "肿瘤科": (("肿瘤科", "肿瘤外科", "放射治疗科"), "oncology: medical, surgical and radiation oncology"),
    "内科": (("group:内科",), "a catalog group: any internal-medicine department"),
    "男科": (("泌尿外科",), "andrology is treated by urology in a hospital without an andrology department"),
    "传染病科": (("感染病科",), "infectious disease"),
    "传染科": (("感染病科",), "infectious disease"),
    "心理科": (("心理健康科",), "mental health"),
}

# label -> why it has no catalog counterpart
UNMAPPED: dict[str, str] = {
    "家居健康": "home health / lifestyle questions: not a hospital department",
    "其他": "'other': no department given",
    "nan": "missing label in the source data",
    "": "missing label",
}


def resolve_targets(label: str, catalog: Catalog, mapping: Mapping = DEPARTMENT_MAP) -> set[str] | None:
    """Catalog departments accepted for a data label, or None when the label is unmapped or unknown."""
    entry = mapping.get(label)
    groups = catalog.groups()
    if entry is None:
        # a label that already is a catalog department or group name means itself (消化内科, 骨科, 口腔科, 眼科)
        if label in catalog.names:
            return {label}
        if label in groups:
            return set(groups[label])
        return None
    accepted: set[str] = set()
    for target in entry[0]:
        if target.startswith("group:"):
            group = target.removeprefix("group:")
            if group not in groups:
                raise KeyError(f"department map {label!r}: no catalog group {group!r} (groups: {' '.join(groups)})")
            accepted.update(groups[group])
        else:
            catalog.get(target)  # raises with the valid names when the table has a typo
            accepted.add(target)
    return accepted
