"""Word lists and regular expressions for de-identification (deid.py holds the logic that uses them).

Every pattern is anchored on a shape that ordinary clinical text does not have (an 18-digit number with a
valid checksum, an @, a 1[3-9] mobile prefix with 11 digits) or on a context word (患者, 姓名：, 住院号, Mr.).
Numbers that medicine is full of (血压 120/80, 2 片, 10.5×10^9/L) match none of them.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- names
# common single-character surnames (Chinese), and compound ones; a name is surname + 1-2 given characters
SURNAMES_1 = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范"
    "金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄"
    "聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶"
    "解牟艾尤阳时穆农司卓古吉缪简车项连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇"
    "桑郎甄丛仲虞敖巩明佘池麻苑迟邝"
)
# characters that are surnames but far more often ordinary words (应当, 时候, 和): never taken as a surname
SURNAMES_1 -= set("应时和祝解")
# surnames that are also everyday words (常感, 高热, 方可, 严禁, 安排): a name starting with one needs a clear
# boundary after it ("患者常明，男") when only a preceding context word ("患者") announces it
WEAK_SURNAMES = set("常高方严全成安明向万易余单关连解宁尚石白金文齐于任温程苏叶谷路华房商")
SURNAMES_2 = {"欧阳", "司马", "诸葛", "上官", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "夏侯", "令狐", "端木", "独孤", "南宫", "西门"}

# characters that end a name: a given name almost never uses them, and they often follow a name in a record
# ("张三男，45岁", "李四诉头痛", "王五于今日入院"); also words that start with a surname character ("高热", "常规")
NAME_STOP_CHARS = set(
    "的了是在于因自诉述主入出来去到和与及或等今昨次男女性岁年月日时分后前内外左右上下，。、；：！？（）()《》“”\"' \t\n"
    "患病症疗治诊查检验术药医院科室床号护热痛血压糖脂率度烧咳痰吐泻晕肿痒痹瘤癌炎伤折断体温脉心肺肝肾胃肠脑骨皮眼耳鼻口喉"
    "无有未已也都就还再又很更最被把让给向从对为以将要会能应该需须请说问答想知道看听做用吃喝睡服输注射打拿带送接电话"
    "反持突近既现感发伴经半每约第侧手腿脚足腰背腹胸颈头面臂膝肩房资继签记陪代同拒确否称表叙咨询议告教求帮助谢麻烦当该禁忌"
    "我你他她您它们这那哪跟灸"
    "某"
)
# two-character words that begin with a surname character and are never a name in clinical text
NOT_NAMES = {
    "高热", "高烧", "高压", "高血", "常规", "常见", "方面", "方便", "方法", "方案", "方可", "马上", "于是", "白天", "白细", "金黄",
    "文化", "时间", "时候", "安静", "安全", "全身", "全血", "全部", "全科", "石膏", "万一", "龙胆", "明显", "明确", "明天", "成年",
    "成人", "连续", "关节", "关注", "关于", "管理", "应用", "单位", "单纯", "单独", "师傅", "房间", "房颤", "宫颈", "宫腔", "车祸",
    "项目", "简单", "解释", "解决", "甘油", "甘草", "柴胡", "黄疸", "黄体", "黄色", "白色", "曲张", "毛发", "毛囊", "党参", "谷丙",
    "谷草", "谷氨", "米饭", "包括", "包块", "包扎", "冷敷", "冷汗", "温度", "温水", "路上", "游泳", "华法", "麦粒", "司机", "卫生",
    "易感", "齐全", "严重", "严格", "季节", "尚可", "尚未", "符合", "舒张", "舒适", "凌晨", "莫名", "康复", "施行", "杜绝", "程度",
    "苏醒", "余下", "叶酸", "丁香", "任何", "陆续", "范围", "谢谢", "许多", "许可", "曾经", "何时", "何种", "何处", "胡萝", "周围",
    "周期", "周末", "周岁", "陈旧", "陈述", "黄芪", "葛根", "牛奶", "牛肉", "宁可", "左侧", "右侧", "查房", "查体", "祝您", "强烈",
    "正常", "向医", "江湖", "章节", "钟表", "孔径", "戴口", "毕业", "景象", "颜色", "麻烦", "麻醉", "麻木", "麻疹", "于一", "于两",
    "于半", "于去", "于前", "于近", "于本", "于上", "于下", "于次", "于凌", "于晨", "于早", "于晚", "于夜", "于外", "于院", "于我",
    "尤其", "于门", "于急", "于当", "于每", "于饭", "于餐", "于睡", "于术", "于产", "于同", "于妊", "于孕", "高中", "初中", "高龄", "周边",
}
# a word that ends in a surname character ("感谢医生", "谢谢医生"): the character after it is not a name
WORDS_ENDING_IN_SURNAME = {"感谢", "多谢", "谢谢", "致谢", "答谢", "道谢", "主任", "责任", "信任", "担任", "继任", "前任", "现任", "及时",
                           "同时", "按时", "当时", "平时", "随时", "准时", "定时", "有时", "暂时", "小时", "完全", "安全", "周全", "健全",
                           "任何", "如何", "为何", "经管", "主管", "分管", "监管", "血管", "尽管", "不管", "插管", "几何", "正常", "异常", "非常", "健康", "小康", "了解", "理解", "缓解", "讲解"}
# words that put a name right after them ("患者张三", "家属李四", "主治医师王五"); bare 医生 / 母亲 are left out
# on purpose: in patients' own words a verb follows them far more often than a name ("医生建议", "母亲商量")
NAME_PREFIXES = (
    "患者家属", "患者", "病人", "病患", "患儿", "产妇", "孕妇", "伤者", "就诊者", "受检者", "家属", "其子", "其女", "其夫", "其妻",
    "之子", "之女", "之夫", "之妻", "之母", "之父",
    "陪护", "陪同人", "委托人", "联系人", "监护人", "主治医师", "主治医生", "主管医生", "经治医师", "住院医师", "主任医师",
    "副主任医师", "责任护士", "护士长", "护士", "记录者",
    "我叫", "名叫", "叫做", "姓名是", "名字是", "名字叫", "本人",
)
# kinship and role words that a name follows in forms and messages ("丈夫 蒋文博", "母亲王丽", "主任冯国萍", "我是周涛的女儿"):
# used with a space or colon allowed after them, and only when the following characters read as a name
# (surname first, boundary after a weak surname; the jieba person tag confirms names after words that verbs follow)
KIN_PREFIXES = (
    "丈夫", "妻子", "爱人", "老公", "老婆", "儿子", "女儿", "母亲", "父亲", "妈妈", "爸爸", "姐姐", "哥哥", "弟弟", "妹妹",
    "其姐姐", "其哥哥", "其母", "其父", "外孙女", "外孙", "孙子", "孙女", "儿媳", "女婿", "侄子", "侄女", "配偶", "主任", "副主任",
    "医生", "大夫", "护士", "患者", "病人", "家属", "我是", "代诉人", "主诉人", "先生（", "女士（", "先生(", "女士(",
    "外婆", "外公", "奶奶", "爷爷", "姥姥", "姥爷", "舅舅", "叔叔", "阿姨", "姑姑", "婆婆", "公公", "岳父", "岳母", "继父", "继母",
    "同事", "朋友", "室友", "同学", "老师", "班主任", "老板", "邻居",
    "姓名", "患者姓名", "联系人", "紧急联系人", "签名", "签字", "监护人", "委托人",
)
# prefixes after which any surname-led name counts without the segmenter's agreement (forms: "患者：", "丈夫 ")
KIN_WEAK = ("医生", "大夫", "护士", "我是", "妈妈", "爸爸", "同事", "朋友", "室友", "同学", "老师", "班主任", "老板", "邻居")  # verbs often follow these: the segmenter must agree
KIN_STRONG = tuple(k for k in KIN_PREFIXES if k not in KIN_WEAK)
# labelled fields ("姓名：李四"): the name follows a colon
NAME_FIELDS = (
    "患者姓名", "病人姓名", "家属姓名", "联系人姓名", "姓名", "名字", "联系人", "紧急联系人", "家属", "监护人", "签名", "签字",
    "主治医师", "主治医生", "经治医师", "主管医生", "责任护士", "记录人", "报告人", "审核人", "送检医生", "申请医生", "填表人",
    "检查医师", "报告医师", "医师", "医生",
)
# titles after a surname (+ given name): "王女士", "李明先生", "张医生"
NAME_TITLES = (
    "副主任医师", "主任医师", "副主任", "主治医师", "副教授", "老先生", "老太太", "先生", "女士", "小姐", "太太", "夫人", "老师", "医生", "医师", "大夫", "护士", "主任", "教授", "院长",
    "阿姨", "叔叔", "大爷", "大妈", "奶奶", "爷爷", "师傅", "同志", "同学",
)
# a verb right after a bare name at the start of a clause ("张三诉头痛三天", "李四于昨日入院")
NAME_VERBS = ("主诉", "自诉", "自述", "诉", "述")
# "由王芳陪同", "请李建国签字": a name between a preposition and what people do in a record
NAME_BEFORE = ("由", "经", "请", "让", "和", "与", "跟", "交给", "转告")
NAME_ACTS = ("签字", "签名", "陪同", "代诉", "代签", "护送", "陪护", "确认", "送入", "送来", "送至", "知情")

EN_TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sr|Jr)"
EN_NAME_TOKEN = r"[A-Z][a-z]+(?:[A-Z][a-z]+)?(?:[-'][A-Z][a-z]+)?"  # Smith, McDonald, O'Brien, Smith-Jones
# capitalised words that follow "patient" / a title but are not names
EN_NOT_NAMES = {
    "The", "This", "That", "He", "She", "They", "His", "Her", "Patient", "Doctor", "Nurse", "Hospital", "Clinic", "Department",
    "Blood", "Chest", "Heart", "Pain", "Fever", "History", "Name", "Date", "Today", "Yesterday", "Tomorrow", "Monday", "Tuesday",
    "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January", "February", "March", "April", "June", "July", "August",
    "September", "October", "November", "December", "Was", "Is", "Has", "Had", "Presented", "Reports", "Reported", "Denies", "With",
    "And", "Or", "Of", "In", "On", "At", "For", "To", "From", "By", "A", "An", "No", "Yes", "Emergency", "Room", "Unit", "Ward",
    "Mr", "Mrs", "Ms", "Miss", "Mx", "Dr", "Prof", "Sr", "Jr", "Not", "Unknown",
}
EN_NAME_CONTEXT = (
    r"(?:[Pp]atient(?:\s+[Nn]ame)?|[Nn]ame|[Nn]amed|[Cc]ontact(?:\s+person)?|[Ss]pouse|[Hh]usband|[Ww]ife|[Ss]on|[Dd]aughter|[Mm]other|"
    r"[Ff]ather|[Gg]uardian|[Nn]ext of kin|[Ss]igned by|[Ee]xamined by|[Rr]eferred by|[Ss]een by|[Aa]ttending(?:\s+physician)?|"
    r"[Pp]hysician|[Cc]aregiver|[Pp]t\.?)"
)

# ---------------------------------------------------------------- ID numbers (居民身份证)
PROVINCE_CODES = {"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37", "41", "42", "43", "44",
                  "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65", "71", "81", "82", "83"}
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK_CHARS = "10X98765432"  # ISO 7064 MOD 11-2: remainder -> check character
ID18 = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{4})(\d{2})(\d{2})(\d{3})([0-9Xx])(?![0-9A-Za-z])")
ID15 = re.compile(r"(?<![0-9A-Za-z])(\d{6})(\d{2})(\d{2})(\d{2})(\d{3})(?![0-9A-Za-z])")
ID_CONTEXT = re.compile(r"(身份证|证件号|公民身份号码|身份号码|ID\s*(card|number|no\.?)|identity card)", re.IGNORECASE)

# ---------------------------------------------------------------- phones
_SEP = r"[\s\-]?"
PHONE_PATTERNS = [
    # mainland mobile, optionally +86 / 0086: 138 1234 5678, 138-1234-5678, 13812345678
    re.compile(r"(?<![\d+])(?:(?:\+|00)86" + _SEP + r")?1[3-9]\d" + _SEP + r"\d{4}" + _SEP + r"\d{4}(?!\d)"),
    # landline with area code: 010-87654321, (0755) 1234 5678, 0571-8888888
    re.compile(r"(?<![\d+])(?:\(0\d{2,3}\)|（0\d{2,3}）|0\d{2,3})" + _SEP + r"\d{3,4}" + _SEP + r"\d{3,4}(?!\d)"),
    # international mainland landline: +86 10 8765 4321, +86-755-12345678
    re.compile(r"(?<![\d+])(?:\+|00)86" + _SEP + r"[1-9]\d{1,2}" + _SEP + r"\d{3,4}" + _SEP + r"\d{4}(?!\d)"),
    # North American: (555) 123-4567, 555-123-4567, +1 555 123 4567
    re.compile(r"(?<![\d+])(?:\+1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}(?!\d)"),
]
PHONE_CONTEXT = re.compile(r"(电话|手机|联系方式|联系|致电|tel|phone|mobile|call)", re.IGNORECASE)

# ---------------------------------------------------------------- emails
EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9])")

# ---------------------------------------------------------------- medical record / insurance numbers
MRN = re.compile(
    r"(?:住院号码?|病历号|病案号|门诊号码?|就诊号|就诊卡号|诊疗卡号|医保卡号|医保号|医保账号|社保卡号|社会保障卡号|医疗保险号|保险单号|保单号|参保号|"
    r"医疗卡号|健康卡号|银行卡号|卡号|"
    r"登记号|检查号|MRN|Medical\s+Record\s+(?:Number|No\.?)|Record\s+(?:Number|No\.?)|Patient\s+ID|Hospital\s+(?:Number|No\.?)|"
    r"Insurance\s+(?:ID|Number|No\.?)|Policy\s+(?:Number|No\.?)|Member\s+ID)"
    # the number may be grouped with single spaces or hyphens ("3101 2345 6789"): every group belongs to it
    r"\s*(?:[:：#]|是|为|is)?\s*([A-Za-z]{0,4}-?\d[0-9A-Za-z\-]{3,24}(?: [0-9][0-9A-Za-z\-]{1,24}){0,5})",
    re.IGNORECASE,
)

# ---------------------------------------------------------------- dates (exact: a day is named)
EN_MONTHS = r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
CN_DIGIT = "〇零一二三四五六七八九十"
DATE_PATTERNS = [
    # 2023年5月12日 / 2023 年 5 月 12 号
    ("ymd", re.compile(r"(?<!\d)((?:19|20)\d{2})\s*年\s*(\d{1,2})\s*月\s*(\d{1,2})\s*[日号](?!\d)")),
    # 二〇二三年五月十二日
    ("cn", re.compile(r"[〇零一二三四五六七八九]{4}年[一二三四五六七八九十]{1,2}月[一二三四五六七八九十]{1,3}[日号]")),
    # 2023-05-12, 2023/5/12, 2023.05.12
    ("ymd", re.compile(r"(?<![\d.\-/])((?:19|20)\d{2})([\-/.])(\d{1,2})\2(\d{1,2})(?![\d\-/]|\.\d)")),
    # 12/05/2023, 5-12-2023 (day and month order unknown: either reading must be a real date)
    ("dmy", re.compile(r"(?<![\d.\-/])(\d{1,2})([\-/.])(\d{1,2})\2((?:19|20)\d{2})(?![\d\-/]|\.\d)")),
    # 5月12日 (month and day, no year)
    ("md", re.compile(r"(?<![\d年])(\d{1,2})\s*月\s*(\d{1,2})\s*[日号](?!\d)")),
    # May 12, 2023 / May 12th 2023
    ("en", re.compile(r"(?<![A-Za-z])" + EN_MONTHS + r"\.?\s+\d{1,2}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{2}(?!\d)")),
    # 12 May 2023 / 12th of May, 2023
    ("en", re.compile(r"(?<![\dA-Za-z])\d{1,2}(?:st|nd|rd|th)?\s+(?:of\s+)?" + EN_MONTHS + r"\.?,?\s+(?:19|20)\d{2}(?!\d)")),
]

# ---------------------------------------------------------------- addresses
PROVINCES = (
    "北京", "天津", "上海", "重庆", "河北", "山西", "辽宁", "吉林", "黑龙江", "江苏", "浙江", "安徽", "福建", "江西", "山东", "河南",
    "湖北", "湖南", "广东", "海南", "四川", "贵州", "云南", "陕西", "甘肃", "青海", "台湾", "内蒙古", "广西", "西藏", "宁夏", "新疆",
    "香港", "澳门",
)
CITIES = (
    "广州", "深圳", "珠海", "佛山", "东莞", "汕头", "南京", "苏州", "无锡", "常州", "南通", "扬州", "徐州", "杭州", "宁波", "温州",
    "绍兴", "嘉兴", "金华", "台州", "合肥", "芜湖", "福州", "厦门", "泉州", "南昌", "赣州", "济南", "青岛", "烟台", "潍坊", "临沂",
    "郑州", "洛阳", "开封", "武汉", "宜昌", "襄阳", "长沙", "株洲", "岳阳", "成都", "绵阳", "贵阳", "遵义", "昆明", "大理", "西安",
    "咸阳", "兰州", "西宁", "银川", "乌鲁木齐", "拉萨", "南宁", "桂林", "柳州", "海口", "三亚", "石家庄", "唐山", "保定", "太原",
    "大同", "呼和浩特", "包头", "沈阳", "大连", "鞍山", "长春", "吉林", "哈尔滨", "大庆", "齐齐哈尔",
)
ADDRESS_TRIGGERS = (
    "家庭住址", "现住址", "联系地址", "通讯地址", "户籍地址", "住址", "地址", "家住", "现住", "住在", "居住在", "居住于", "现居",
    "住于", "户籍地", "户籍", "籍贯", "来自",
)
ADMIN_SUFFIX = r"(?:特别行政区|自治区|自治州|自治县|省|市|区|县|旗|盟|镇|乡|街道|村|社区)"
ROAD_SUFFIX = r"(?:大街|大道|胡同|路|街|巷|弄)"
PLACE_SUFFIX = r"(?:小区|花园|公寓|大厦|家园|新村|广场|苑|号院)"
# characters that never sit inside a place name: a "component" running through them is a clinical phrase
ADDRESS_STOP = "的了是在于因诉述患者病症痛热咳痰就诊治疗查检药术岁"
ADDRESS_NAME_COMPONENT = re.compile(
    r"(?:(?![" + ADDRESS_STOP + r"])[\u4e00-\u9fff]){1,10}?(?:" + ADMIN_SUFFIX + "|" + ROAD_SUFFIX + "|" + PLACE_SUFFIX + ")"
)
ADDRESS_NUMBER_COMPONENT = re.compile(r"(?:[A-Za-z]?\d+(?:-\d+)*|[一二三四五六七八九十]+)(?:号楼|号院|号|栋|幢|座|单元|楼|层|室|弄|巷|段|期)")
EN_ADDRESS = re.compile(
    r"\b\d{1,5}\s+(?:[A-Z][a-z]+\.?\s+){1,3}(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Way|Place|Terrace|Parkway|Highway|"
    r"(?:St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Pkwy|Hwy)\b\.?)(?:,?\s+(?:Apt|Apartment|Suite|Unit|#)\.?\s*[\w\-]+)?"
    r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+)*)?(?:,\s*[A-Z]{2})?(?:\s+\d{5}(?:-\d{4})?)?"
)
