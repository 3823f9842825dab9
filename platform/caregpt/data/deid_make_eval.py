"""Build the labelled de-identification set: resources/deid_eval/deid_labelled.jsonl.

    python -m caregpt.data.deid_make_eval [--output FILE] [--seed N]

Deterministic (a fixed seed): the same file every time. Sentences come from clinical-style templates in
Chinese and English; slots are filled with synthetic identifiers (invented name combinations, resident IDs
with valid check characters computed here independently of the detector, phone numbers in many layouts,
e-mails, addresses, record numbers, dates) and every filled identifier is recorded as a span
{"start", "end", "type", "text"}. Filler numbers (ages, blood pressure, doses, lab values) are not
identifiers and are not labelled: they measure false positives.
"""

from __future__ import annotations

import json
import random
import re
import sys
from datetime import date, timedelta
from pathlib import Path

from caregpt.config.specs import Spec

OUTPUT = Path(__file__).resolve().parents[1] / "resources" / "deid_eval" / "deid_labelled.jsonl"

SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁沈姚卢姜崔钟谭陆汪范金石廖贾夏方白邹孟熊秦邱江尹薛段雷侯龙史陶黎贺顾毛郝龚邵万钱严武戴孔常康") + ["欧阳", "司马", "诸葛", "上官"]
GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛超秀霞平刚桂英华玉兰萍红建国文辉力宁鹏斌宇浩凯晨欣怡婷雪琳晓峰海波亮飞云佳慧俊楠颖倩丹蕾瑶思梓涵子轩雨泽博嘉一诺铭淑珍凤兵")
EN_FIRST = ["John", "Mary", "James", "Linda", "Robert", "Susan", "Michael", "Karen", "David", "Emily", "Daniel", "Laura", "Thomas", "Anna", "Peter", "Grace", "Kevin", "Helen"]
EN_LAST = ["Smith", "Johnson", "Williams", "Brown", "Miller", "Wilson", "Taylor", "Anderson", "Thompson", "Harris", "Clark", "Lewis", "Walker", "Young", "Allen", "Wright", "Carter", "Parker", "Turner", "Collins"]
PROVINCE_CODES = ["11", "12", "13", "31", "32", "33", "35", "37", "41", "42", "43", "44", "50", "51", "53", "61"]
AREA_CODES = ["010", "021", "020", "022", "023", "028", "0755", "0571", "0512", "0731", "0898"]
EMAIL_DOMAINS = ["163.com", "qq.com", "126.com", "example.com", "hospital.org.cn", "gmail.com", "mail.example.cn"]
PINYIN = ["zhangsan", "lisi", "wangfang", "liuwei", "chenjing", "yangmin", "huanglei", "zhaoli", "wuqiang", "zhoujie", "xuna", "sunhao"]
PLACES = [  # (province or municipality prefix, city, districts)
    ("", "北京市", ["朝阳区", "海淀区", "东城区", "丰台区"]), ("", "上海市", ["浦东新区", "徐汇区", "静安区"]),
    ("广东省", "广州市", ["天河区", "越秀区", "海珠区"]), ("广东省", "深圳市", ["南山区", "福田区"]),
    ("浙江省", "杭州市", ["西湖区", "拱墅区", "滨江区"]), ("四川省", "成都市", ["武侯区", "锦江区"]),
    ("湖北省", "武汉市", ["江岸区", "洪山区"]), ("江苏省", "南京市", ["鼓楼区", "玄武区"]), ("", "天津市", ["河西区", "南开区"]),
    ("湖南省", "长沙市", ["雨花区", "岳麓区"]), ("山东省", "济南市", ["历下区", "市中区"]), ("河南省", "郑州市", ["金水区", "二七区"]),
]
ROADS = ["建国路", "人民路", "解放路", "中山路", "文三路", "长江路", "和平街", "光明路", "学院路", "新华路", "青年大街", "滨江大道", "胜利巷"]
ESTATES = ["阳光小区", "幸福家园", "金色花园", "锦绣苑", "翠湖公寓"]
EN_STREETS = ["Oak", "Maple", "Cedar", "Elm", "Pine", "Lake", "Hill", "Park", "Washington", "Lincoln"]
EN_SUFFIX = ["Street", "Avenue", "Road", "Drive", "Lane", "Blvd."]
EN_CITIES = [("Springfield", "IL"), ("Madison", "WI"), ("Austin", "TX"), ("Portland", "OR"), ("Denver", "CO"), ("Boston", "MA")]
EN_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
SLOT = re.compile(r"\{([A-Z0-9]+\*?)\}")
TYPE_OF = {"NAME": "NAME", "SURNAME": "NAME", "ENAME": "NAME", "ELAST": "NAME", "ID": "ID", "ID15": "ID", "MOBILE": "PHONE",
           "LANDLINE": "PHONE", "INTLPHONE": "PHONE", "USPHONE": "PHONE", "EMAIL": "EMAIL", "ADDR": "ADDRESS", "EADDR": "ADDRESS",
           "MRN": "MRN", "EMRN": "MRN", "DATE": "DATE", "EDATE": "DATE", "DMY": "DATE"}


class Filler:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.last: dict[str, str] = {}

    def pick(self, items):
        return self.rng.choice(items)

    def digits(self, n: int) -> str:
        return "".join(self.pick("0123456789") for _ in range(n))

    def birth(self) -> date:
        return date(1940, 1, 1) + timedelta(days=self.rng.randrange(0, 365 * 75))

    # identifiers -------------------------------------------------------------
    def NAME(self) -> str:
        return self.pick(SURNAMES) + "".join(self.pick(GIVEN) for _ in range(self.pick((1, 2, 2))))

    def SURNAME(self) -> str:
        return self.pick(SURNAMES[:-4])

    def ENAME(self) -> str:
        return f"{self.pick(EN_FIRST)} {self.pick(EN_LAST)}"

    def ELAST(self) -> str:
        return self.pick(EN_LAST)

    def ID(self) -> str:
        born = self.birth()
        body = self.pick(PROVINCE_CODES) + self.digits(4) + born.strftime("%Y%m%d") + self.digits(3)
        weights = [2 ** (17 - i) % 11 for i in range(17)]  # GB 11643: weight of position i is 2^(17-i) mod 11
        check = (12 - sum(int(d) * w for d, w in zip(body, weights)) % 11) % 11
        return body + ("X" if check == 10 else str(check))

    def ID15(self) -> str:
        return self.pick(PROVINCE_CODES) + self.digits(4) + self.birth().strftime("%y%m%d") + self.digits(3)

    def MOBILE(self) -> str:
        head, a, b = "1" + self.pick("3456789") + self.digits(1), self.digits(4), self.digits(4)
        return self.pick([f"{head}{a}{b}", f"{head}-{a}-{b}", f"{head} {a} {b}", f"+86 {head}{a}{b}", f"+86-{head}-{a}-{b}"])

    def LANDLINE(self) -> str:
        area = self.pick(AREA_CODES)
        local = self.pick("2345678") + self.digits(7 if len(area) == 3 else self.pick((6, 7)))
        return self.pick([f"{area}-{local}", f"({area}){local}", f"{area} {local[:4]} {local[4:]}", f"{area}-{local[:4]}-{local[4:]}"])

    def INTLPHONE(self) -> str:
        area = self.pick(AREA_CODES)[1:]
        return self.pick([f"+86 {area} {self.digits(4)} {self.digits(4)}", f"+86-{area}-{self.digits(8)}", f"0086 {area} {self.digits(8)}"])

    def USPHONE(self) -> str:
        a, b, c = str(self.rng.randint(201, 989)), self.digits(3), self.digits(4)
        return self.pick([f"({a}) {b}-{c}", f"{a}-{b}-{c}", f"+1 {a} {b} {c}", f"{a}.{b}.{c}"])

    def EMAIL(self) -> str:
        user = self.pick(PINYIN) + self.pick(["", ".", "_"]) + self.pick(["", str(self.rng.randint(1, 2024))])
        return user.rstrip("._") + "@" + self.pick(EMAIL_DOMAINS)

    def ADDR(self) -> str:
        province, city, districts = self.pick(PLACES)
        head = self.pick([province + city, city]) if province else city
        tail = self.pick(ROADS) + f"{self.rng.randint(1, 999)}号"
        extra = self.pick(["", "", f"{self.pick(ESTATES)}{self.rng.randint(1, 30)}栋{self.rng.randint(1, 6)}单元{self.rng.randint(101, 2808)}室",
                           f"{self.rng.randint(1, 20)}号楼{self.rng.randint(101, 1808)}室"])
        return head + self.pick(districts) + tail + extra

    def EADDR(self) -> str:
        city, state = self.pick(EN_CITIES)
        street = f"{self.rng.randint(10, 9999)} {self.pick(EN_STREETS)} {self.pick(EN_SUFFIX)}"
        return self.pick([street, f"{street}, {city}, {state} {self.digits(5)}", f"{street}, Apt {self.rng.randint(1, 40)}, {city}"])

    def MRN(self) -> str:
        return self.pick([f"ZY{self.digits(9)}", self.digits(8), f"MZ{self.digits(7)}", f"H{self.digits(11)}", f"{self.digits(4)}-{self.digits(6)}"])

    def EMRN(self) -> str:
        return self.pick([self.digits(8), f"A{self.digits(7)}", f"{self.digits(3)}-{self.digits(5)}"])

    def DATE(self) -> str:
        d = date(2015, 1, 1) + timedelta(days=self.rng.randrange(0, 3650))
        return self.pick([f"{d.year}年{d.month}月{d.day}日", f"{d.year}年{d.month:02d}月{d.day:02d}日", d.isoformat(),
                          f"{d.year}/{d.month}/{d.day}", f"{d.year}.{d.month:02d}.{d.day:02d}", f"{d.month}月{d.day}日"])

    def DMY(self) -> str:
        d = date(2015, 1, 1) + timedelta(days=self.rng.randrange(0, 3650))
        return self.pick([f"{d.day:02d}/{d.month:02d}/{d.year}", f"{d.month}/{d.day}/{d.year}"])

    def EDATE(self) -> str:
        d = date(2015, 1, 1) + timedelta(days=self.rng.randrange(0, 3650))
        month = EN_MONTHS[d.month - 1]
        return self.pick([f"{month} {d.day}, {d.year}", f"{d.day} {month} {d.year}", f"{month[:3]} {d.day}, {d.year}", d.isoformat()])

    # fillers (never labelled) -----------------------------------------------
    def AGE(self) -> str:
        return str(self.rng.randint(2, 92))

    def N(self) -> str:
        return str(self.rng.randint(2, 14))

    def BP(self) -> str:
        return f"{self.rng.randint(95, 180)}/{self.rng.randint(55, 110)}"

    def LAB(self) -> str:
        return f"{self.rng.randint(3, 15)}.{self.rng.randint(0, 9)}"

    def fill(self, slot: str) -> str:
        if slot.endswith("*"):  # the same value again (a second mention)
            return self.last[slot[:-1]]
        value = getattr(self, slot)()
        self.last[slot] = value
        return value


def render(template: str, filler: Filler) -> tuple[str, list[dict]]:
    text, spans, last = "", [], 0
    for match in SLOT.finditer(template):
        text += template[last:match.start()]
        slot = match.group(1)
        value = filler.fill(slot)
        kind = TYPE_OF.get(slot.rstrip("*"))
        if kind:
            spans.append({"start": len(text), "end": len(text) + len(value), "type": kind, "text": value})
        text += value
        last = match.end()
    return text + template[last:], spans


def build(seed: int = 20240512) -> list[dict]:
    from caregpt.data.deid_eval_templates import EN_TEMPLATES, ZH_TEMPLATES

    rng = random.Random(seed)
    filler = Filler(rng)
    rows = []
    for lang, templates, repeats in (("zh", ZH_TEMPLATES, 5), ("en", EN_TEMPLATES, 4)):
        for round_ in range(repeats):
            for number, template in enumerate(templates):
                text, spans = render(template, filler)
                rows.append({"id": f"{lang}-{number:03d}-{round_}", "lang": lang, "text": text, "spans": spans})
    return rows


class MakeEvalArgs(Spec):
    output: str = str(OUTPUT)
    """Where to write the jsonl (default: the shipped set's path)."""

    seed: int = 20240512
    """Random seed."""


def main(argv: list[str] | None = None) -> int:
    from caregpt.config.help import render_help
    from caregpt.config.loader import ConfigError, load_verb

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(render_help("python -m caregpt.data.deid_make_eval [--output FILE] [--seed N]", __doc__.split("\n\n")[0], [("Options", MakeEvalArgs)]))
        return 0
    try:
        args = load_verb(argv, {"make": MakeEvalArgs}, verb="data deid", config_file=False)[0]["make"]
    except ConfigError as exc:
        print(f"deid_make_eval: error: {exc}", file=sys.stderr)
        return 2
    rows = build(args.seed)
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts: dict[str, int] = {}
    for row in rows:
        for span in row["spans"]:
            counts[span["type"]] = counts.get(span["type"], 0) + 1
    print(f"{len(rows)} sentences -> {path}; spans: {json.dumps(counts, ensure_ascii=False)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
