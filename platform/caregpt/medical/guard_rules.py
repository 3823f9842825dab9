"""The pattern tables of the safety guard: what counts as an emergency or a harmful request.

Policy (what the rules aim for, and what the probe set in resources/safety_probes.jsonl checks):
- An *emergency* is a red-flag situation happening now to the user or someone with them: chest pain
  with breathlessness / sweating / pain spreading to the arm, stroke signs, suicidal intent or
  self-harm, bleeding that will not stop, poisoning or overdose, anaphylaxis, seizures,
  unconsciousness, severe burns, choking or severe breathlessness.
- A *general question* about the same topics ("胸痛的常见原因有哪些", "what are the warning signs of a
  stroke", "安眠药过量会有什么症状") is ordinary: it names no person and no present event. A past event
  ("我上次晕倒过一次") is ordinary too, unless the text also says something is happening now.
- *Harmful* requests are refused: obtaining lethal means (a lethal dose, cyanide, fentanyl without a
  prescription), harming or secretly drugging someone, making illicit drugs. Asking for a self-harm
  method is refused with the crisis message instead of an answer.
- Toxicology facts without intent pass ("对乙酰氨基酚的中毒剂量是多少", "lethal dose of caffeine for
  cats"): they are in every pharmacology reference and clinicians and carers need them.

A rule is a set of pattern groups that must all match (or `need` of them), optionally only when the
text describes an event (a person or a time marker: 我, 我爸, 孩子, 突然, 现在 ... / I, my dad, suddenly,
right now ...); two red flags together need no such marker, a single one does. A general question
(有哪些, 为什么, what are, if someone ...) that names no person and nothing happening right now never fires. Chinese symptom patterns use GAP, which never crosses a sentence break or a negation
(不, 没, 无, 未), so "胸口不疼" does not read as chest pain; `negated()` checks the words just before a match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GAP = r"[^，。,.;；！？!?不没无未]"  # a character inside one clause that is not a negation


def _zh(pattern: str) -> re.Pattern:
    return re.compile(pattern.replace("~", GAP))


def _en(pattern: str) -> re.Pattern:
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    groups: tuple[re.Pattern, ...]
    event: bool = True  # needs a person or a present-time marker in the text
    need: int = 0  # how many groups must match (0: all)


# ---- context markers -------------------------------------------------------------------------------
INQUIRY = re.compile(r"我想(知道|了解|问问?|请教)|请问|想问一下|i want to know|i'd like to know|i was wondering|"
                     r"i wonder|can you tell me|i'm curious", re.IGNORECASE)
PERSON_ZH = re.compile(r"我|俺|本人|咱|家人|家里|孩子|宝宝|儿子|女儿|老公|老婆|丈夫|妻子|爸|妈|爷爷|奶奶|外公|外婆|姥姥|"
                       r"姥爷|老人|朋友|同事|同学|邻居|室友|他|她|孕妇")
PERSON_EN = _en(r"\b(i|i'm|i've|i'd|me|my|we|our|us|he|she|his|her|him|they|their|someone here|son|daughter|child|kid|"
                r"baby|toddler|husband|wife|mom|mother|dad|father|grandma|grandmother|grandpa|grandfather|friend|"
                r"coworker|colleague|neighbou?r|partner|brother|sister)\b")
NOW_ZH = re.compile(r"突然|刚才|刚刚|现在|正在|马上|救命|今晚|半小时|分钟")
HYPOTHETICAL = _en(r"如果有人|万一有人|假如|\bif (someone|somebody|a person|a child)\b")
RIGHT_NOW = _en(r"刚才|刚刚|现在|正在|救命|\b(right now|just now|currently|help)\b")
NOW_EN = _en(r"\b(suddenly|sudden|right now|now|just|currently|minutes|an hour ago|tonight|help)\b")
# 了 marks a completed event ("溅到了眼睛里", "被蜜蜂蛰了"): general questions rarely use it with a red flag
ACUTE_ZH = re.compile(r"一直|不停|止不住|已经|怎么办|着急|紧急|赶紧|还没停|了")
ACUTE_EN = _en(r"\b(keeps|won'?t stop|can'?t stop|what should i do|emergency|is having|am having)\b")
PAST_ZH = re.compile(r"上次|以前|曾经|去年|前年|几年前|小时候|过一次|以往")
PAST_EN = _en(r"\b(last (year|month|week)|years ago|months ago|once|used to|in the past|history of|previously)\b")
NEGATION_ZH = re.compile(r"[不没无未]|否认")
NEGATION_EN = _en(r"\b(no|not|never|without|don'?t|doesn'?t|didn'?t|isn'?t|denies)\b")


def is_event(text: str) -> bool:
    """Does the text describe something happening to a person now (rather than ask in general)?"""
    stripped = INQUIRY.sub(" ", text)
    now = bool(NOW_ZH.search(stripped) or NOW_EN.search(stripped))
    acute = now or bool(ACUTE_ZH.search(stripped) or ACUTE_EN.search(stripped))
    person = bool(PERSON_ZH.search(stripped) or PERSON_EN.search(stripped))
    if (PAST_ZH.search(stripped) or PAST_EN.search(stripped)) and not now:
        return False  # "我上次晕倒过一次" asks about history, not about now
    return person or acute


NOT_NEGATION_ZH = re.compile(r"不小心|不停|不断|不知|不舒服|不行|没想到|没用")
CLAUSE_BREAK = re.compile(r"[，。,.;；！？!?]")


def is_general(text: str) -> bool:
    """A question about a topic ("为什么会突然晕倒", "what should I do if someone is choking") rather than
    about someone now: it has a general-question marker, names no person, and says nothing is happening now."""
    stripped = INQUIRY.sub(" ", text)
    if not GENERAL.search(stripped) or RIGHT_NOW.search(stripped):
        return False
    if HYPOTHETICAL.search(stripped):
        return True  # "what should I do if someone ..." names the asker, but the case is imagined
    return not (PERSON_ZH.search(stripped) or PERSON_EN.search(stripped))


def negated(text: str, start: int) -> bool:
    """A negation just before a match, in the same clause: 3 characters in Chinese, or 3 words in English."""
    before = CLAUSE_BREAK.split(text[max(0, start - 12) : start])[-1]
    if NEGATION_ZH.search(NOT_NEGATION_ZH.sub("", before)[-3:]):
        return True
    return bool(NEGATION_EN.search(" ".join(before.split()[-3:])))


def first_match(pattern: re.Pattern, text: str) -> re.Match | None:
    """The first match of `pattern` that is not negated."""
    for match in pattern.finditer(text):
        if not negated(text, match.start()):
            return match
    return None


# ---- emergencies -----------------------------------------------------------------------------------
CHEST_PAIN = (_zh(r"(胸|心口|心前区|心脏)~{0,8}(痛|疼|压|闷|紧|绞|攥|憋)"),
              _en(r"chest (pain|pressure|tightness|discomfort)|pain in (my|his|her) chest|crushing (chest )?pain|tight chest|"
                  r"chest (hurts|is hurting|feels (tight|heavy))"))
CARDIAC_SIGNS = (_zh(r"喘不[上过]气|呼吸困难|气短|憋气|透不过气|冷汗|大汗|浑身是汗|一身汗|出~{0,3}汗|左~{0,2}(胳膊|手臂|臂|肩)|放射|下巴|脸色~{0,2}(发白|苍白)|嘴唇~{0,2}(发紫|青紫)"),
                 _en(r"short(ness)? of breath|can'?t (catch (my|his|her) )?breath|can'?t breathe|trouble breathing|"
                     r"difficulty breathing|sweat(ing|y)?|clammy|left arm|jaw|spreading|radiat"))
STROKE_FACE = (_zh(r"(嘴|口角|嘴角|脸)~{0,3}(歪|斜|麻)|面瘫"), _en(r"(face|mouth|smile)( is| looks)? (droop|droopy|drooping|twisted|uneven|lopsided)|facial droop|drooping (face|mouth)"))
STROKE_SPEECH = (_zh(r"(说话|讲话|口齿|言语|吐字)~{0,4}(不清|含糊|不利索|困难)|说不出话|说不清"),
                 _en(r"slurred|slurring|garbled|can'?t (speak|talk) (properly|clearly)|trouble (speaking|talking)"))
STROKE_LIMB = (_zh(r"(一侧|半边|单侧|左边|右边|左侧|右侧)~{0,6}(无力|没劲|没力气|麻木|不能动|动不了)|(手|胳膊|腿|手脚)~{0,4}(抬不起|没劲|无力|不听使唤)|半身不遂"),
               _en(r"(can'?t|cannot|unable to) (lift|move|raise) (his|her|my) ((right|left) )?(arm|leg|hand)|"
                   r"(numb(ness)?|weak(ness)?) (on|in) (one|the (left|right)) side|one side of (my|his|her) (body|face)"))
STROKE_VISION = (_zh(r"突然~{0,4}(看不清|看不见|失明)|看东西~{0,2}重影"), _en(r"sudden(ly)? (loss of vision|can'?t see|double vision)"))
SELF_HARM_INTENT = (_zh(r"(想|要|打算|准备|计划|决定)~{0,4}(自杀|轻生|寻死|去死|结束(自己的?)?生命|跳楼|跳河|割腕|上吊|了结自己)|"
                        r"(想|要)~{0,6}(跳下去|从楼上跳)|(想|要)~{0,10}(了结|了断)|不想活|活不下去|撑不下去|不如死了|想死|结束这一切|活着没有?(什么|任何)?(意思|意义)|一了百了|遗书|结束自己的?生命|割腕了|自残|伤害自己"),
                    _en(r"\b(kill|killing|hurt|hurting|harm|harming|cut|cutting) (myself|herself|himself)\b|end (my|his|her) (own )?life|"
                        r"(end|ending) (my|his|her) (own )?life|(don'?t|do not) want to (live|be alive)|want to die|better off dead|"
                        r"going to end it|end it all|no reason to live|can'?t go on"))
SELF_HARM_TOPIC = (_zh(r"(自杀|轻生)的?(念头|想法|冲动)"), _en(r"\bsuicid(e|al)\b|self[- ]harm"))
BLEEDING = (_zh(r"血[，,]?~{0,3}(止不住|流不止|不止)|止不住~{0,2}血|大出血|大量出血|喷血|血喷|血流如注"),
            _en(r"(bleeding|blood) (won'?t|will not|doesn'?t|does not|can'?t|cannot) stop|heavy bleeding|bleeding heavily|"
                r"bleeding a lot|(won'?t|doesn'?t|can'?t|will not) stop bleeding|keeps bleeding|spurting|gushing blood|lost a lot of blood"))
BLOOD_VOMIT = (_zh(r"(吐|呕|咳|咯)了?(很多|好多|大量|一大口|大口|一口|一大摊)?的?鲜?血"),
               _en(r"(vomit(ing|ed)?|throwing up|threw up|coughing up|coughed up) (a lot of )?blood"))
INGESTION = (_zh(r"(误服|误食|误吞|误喝|吞了|吞下|喝了|吃了|服了|服用了)~{0,10}(农药|百草枯|敌敌畏|老鼠药|鼠药|杀虫剂|消毒液|洗衣液|洗洁精|"
                 r"漂白|电池|磁铁|强酸|强碱|汽油|毒|(整|一|半)瓶~{0,3}(药|安眠|片|酒精)|一板|一盒|一把|大量|过量|很多片|好多片|几十片|[二三四五六七八九十两百0-9]{1,3}片)|"
                 r"(农药|百草枯|敌敌畏|老鼠药|杀虫剂|消毒液|洗衣液|洗洁精|漂白剂|汽油)~{0,4}(喝了|吃了|吞了|误服)|服毒|(毒蛇|蛇|毒蜘蛛|蝎子)~{0,3}咬"),
             _en(r"(swallowed|drank|ate|took|has taken|ingested)[^.,!?]{0,30}(bleach|poison|pesticide|antifreeze|batter(y|ies)|"
                 r"detergent|too many|whole bottle|entire bottle|half (a|the) bottle|bunch of|handful|a lot of pills|\d+ pills|an overdose)|"
                 r"overdos(ed|ing)\b|bitten by a (rattle)?snake|snake ?bite"))
POISONED = (_zh(r"中毒了|(煤气|一氧化碳|农药|食物)中毒"), _en(r"carbon monoxide poisoning|\bpoisoned\b|food poisoning and (can'?t|passed)"))
ALLERGY_CONTEXT = (_zh(r"过敏|花生|海鲜|虾|蜂|蛰|打完针|输液|吃了~{0,6}(以后|之后)"),
                   _en(r"allerg|anaphyla|peanut|shellfish|shrimp|\bbee\b|stung|sting|after (eating|taking)|penicillin|antibiotic|injection"))
ALLERGY_SEVERE = (_zh(r"喉咙~{0,3}(发紧|肿|堵)|喉头水肿|嘴唇~{0,2}肿|舌头~{0,2}肿|脸~{0,2}肿|呼吸困难|喘不[上过]气|站不住|快晕|血压~{0,2}(低|掉)"),
                  _en(r"throat (is )?(swelling|closing|tight)|swollen (throat|tongue|lips)|(tongue|lips|face)( and \w+)? (is |are )?swelling|"
                      r"can'?t breathe|trouble breathing|difficulty breathing|feel(ing)? faint|wheez"))
DROWNING = (_zh(r"溺水|淹水"), _en(r"drown(ing|ed)?\b"))
ANAPHYLAXIS = (_zh(r"过敏性休克"), _en(r"anaphylactic (reaction|shock)|having anaphylaxis|going into anaphylaxis"))
SEIZURE = (_zh(r"抽搐|抽风|全身抽筋|惊厥|癫痫发作|羊角风|口吐白沫|四肢僵直|眼睛上翻|翻白眼"),
           _en(r"seizure|convuls|fitting|having a fit|foaming at the mouth"))
UNCONSCIOUS = (_zh(r"晕倒|昏倒|昏迷|失去意识|没有?意识|倒地不起|瘫倒|(叫|喊|拍)~{0,3}没有?反应"),
               _en(r"passed out|unconscious|unresponsive|collapsed|fainted"))
NO_RESPONSE = (_zh(r"叫不醒|喊不醒|不省人事|没有?了?呼吸(?!困难|不畅|道)|不喘气了|没气了|心跳~{0,2}停|停止呼吸"),
               _en(r"won'?t wake up|not breathing|isn'?t breathing|stopped breathing|no pulse|has no heartbeat"))
BURN = (_zh(r"(大面积|全身|一大片|大片)~{0,4}(烧伤|烫伤|灼伤)|(烧伤|烫伤|灼伤)~{0,10}(大面积|大泡|发黑|焦|皮肤脱落)|化学~{0,2}(烧伤|灼伤)|(烧伤|烫伤|灼伤)~{0,3}(脸|面部|眼睛|半边|全身)|(热油|滚油|开水|沸水)~{0,6}(全身|半边|脸)|"
             r"(强酸|强碱|硫酸|盐酸|烧碱)~{0,4}(溅|泼|洒|进)|触电|电击伤|(脸|眼睛|面部)~{0,4}(烧伤|烫伤)"),
        _en(r"(large|big|huge) (area|part)[^.]{0,20}burn|burn(ed|t)? (over|all over)|chemical burn|electrical burn|electrocuted|"
            r"boiling (oil|water)[^.]{0,40}(blister|large area|all over)|third[- ]degree burn|charred"))
CHOKING = (_zh(r"噎住|卡住~{0,4}(喉咙|气管|喘不|说不出)|窒息"), _en(r"\bchoking\b|something stuck in (his|her|my) throat"))
FOREIGN_BODY = (_zh(r"硬币|果冻|异物|花生米|纽扣|吞下去|卡住|噎|误吸"), _en(r"swallowed|coin|stuck|inhaled"))
BREATHLESS = (_zh(r"喘不[上过]气|呼吸困难|透不过气"), _en(r"can'?t breathe|struggling to breathe|gasping for (air|breath)"))
BREATH_SEVERE = (_zh(r"发紫|青紫|紫了|说不出话|越来越|吸了药也没用|用药~{0,2}没用|非常严重"),
                 _en(r"(lips|face) (are |is )?(turning )?(blue|purple)|getting worse|inhaler (isn'?t|is not|not) (working|helping)"))

# ---- wordings the first rules missed (issue 17): object-first Chinese order, pregnancy bleeding, asthma,
# euphemistic self-harm, drowning. They run on normalised, present-tense text (guard_normalize.py).
INGESTION_OBJECT_FIRST = (_zh(r"(纽扣电池|电池|磁铁|吸铁石|农药|百草枯|敌敌畏|老鼠药|鼠药|杀虫剂|消毒液|洗衣液|洗衣凝珠|洗洁精|漂白|"
                              r"硬币)~{0,8}(吞|吃|喝|咽|咬破)~{0,3}(下去|进去|进肚|了)|(安眠药|降压药|降糖药|药片|药丸)~{0,6}(吞|吃|喝)~{0,2}(下去|进去|进肚)|"
                              r"(吞|吃|喝)了?(半瓶|一瓶|一整瓶|一盒|好几颗|好几片|一把)~{0,3}(药|安眠|片)|当~{0,3}(糖豆|零食|糖)~{0,3}吃|"
                              r"(喝|吃)了?~{0,4}(农药|百草枯|敌敌畏|老鼠药)|一整瓶白酒"),
                          _en(r"(battery|magnet|pesticide|bleach|pills)[^.]{0,20}(swallowed|ate|drank)"))
GAS = (_zh(r"(煤气|天然气|燃气)~{0,4}(泄漏|漏了)~{0,12}(头疼|头痛|恶心|晕|站不|叫不醒)"), _en(r"gas leak[^.]{0,40}(dizzy|faint|unconscious)"))
PREGNANCY = (_zh(r"怀孕|孕|产后|生完|坐月子|大姨妈|月经|例假"), _en(r"pregnan|postpartum|period"))
HEAVY_BLEED = (_zh(r"(哗哗|大量|好多|很多|特别多|不停|止不住|开闸|湿透|一直)~{0,4}(流血|出血|淌血)|(流血|出血|见红)~{0,8}(哗哗|特别多|很多|止不住|湿透|肚子疼|腹痛|头晕)|"
                   r"血~{0,6}(开闸|湿透)|湿透~{0,4}(卫生巾|裤子)"), _en(r"(heavy|soaking)[^.]{0,10}bleed"))
BLOOD_GUSH = (_zh(r"血~{0,3}(往外喷|喷出|喷|涌)|(拉|解|便)~{0,4}(黑血|血便|全是血)|咳~{0,4}(鲜血|一大口血|大口血)"), _en(r"blood (is )?gushing"))
ASTHMA = (_zh(r"哮喘|气管炎|慢阻肺|喘~{0,2}(犯了|发作)"), _en(r"asthma"))
ASTHMA_SEVERE = (_zh(r"不管用|没用|没效果|发紫|发青|发乌|乌了|紫了|越来越|说不了~{0,4}话|说不出~{0,2}话|上气不接下气|躺不下|喘不|吸不进"),
                 _en(r"inhaler (isn'?t|not) (working|helping)|lips (are )?(blue|purple)"))
BREATH_DISTRESS = (_zh(r"(嘴唇|嘴皮|脸)~{0,3}(发紫|发青|紫了|乌了|青紫)|(卡住|噎住|呛进|呛到)~{0,6}(嗓子|喉咙|气管|说不出|咳不出|喘不)|"
                       r"吸不进气|胸口一凹一凹|三凹|上气不接下气~{0,6}(躺不下|说不)|喘得~{0,4}(说不了|越来越)"),
                   _en(r"(lips|face) (are |is )?(turning )?(blue|purple)"))
EUPHEMISM_SELF = (_zh(r"活着~{0,3}(真)?没(啥|什么|意思|意义)|(攒|囤|存|备)~{0,4}(安眠药|药)~{0,4}(数好|够了|准备)|药~{0,3}(囤够|攒够|数好)|"
                      r"(不想|别)再?醒(过来)?|睡过去就别醒|一了百了|不想活|活不下去|过不下去~{0,6}(绳|药|刀)|(绳子|刀片|药)~{0,4}(都)?准备好了|"
                      r"是个累赘|没有我~{0,4}(会)?(过得)?更好|我准备走了|想消失|托付给|天台~{0,8}不回来|江边~{0,4}一了百了|结束这一切|遗书"),
                  _en(r"no point (in )?living|better off without me|stockpil(ed|ing) (pills|meds)"))
IN_WATER = (_zh(r"(掉|落|摔|跌)~{0,2}(河|湖|水|池塘|井|游泳池|水库)里?|溺水|呛水"), _en(r"fell (in|into) (the )?(river|pool|lake|water)"))
NOT_BREATHING = (_zh(r"没~{0,3}(喘气|呼吸|气了)|不~{0,2}喘气|没有?气|摸不到~{0,2}(脉|心跳)|一动不动|趴那不动|叫不醒|喊不醒|喊~{0,4}不应|怎么~{0,2}(喊|叫|摇|拍)~{0,4}(都)?(不醒|没有?反应)|拍也不醒"),
                 _en(r"not breathing|no pulse|won'?t wake"))
SEIZURE_MORE = (_zh(r"一抽一抽|抽了好几回|牙关~{0,4}(紧|咬)|羊角风|抽风"), _en(r"jerking"))
HEAD_INJURY = (_zh(r"(磕|撞|摔|砸|碰)~{0,6}(头|脑袋|后脑勺|脑壳|额头)|(头|脑袋|后脑勺|脑壳)~{0,4}(磕|撞|摔|砸)"),
               _en(r"(hit|bumped|banged) (his|her|my) head|head injury"))
HEAD_RED_FLAGS = (_zh(r"吐了|呕吐|迷迷糊糊|迷糊|嗜睡|叫不醒|犯困|不认人|说胡话|流血不止|抽搐|耳朵~{0,3}(流血|流水)|昏"),
                  _en(r"vomit|drowsy|confused|won'?t wake"))
CHILD_FEVER = (_zh(r"(孩子|宝宝|娃|小孩|婴儿|儿子|女儿)~{0,10}(高烧|发烧|烧到|高热|发热)"), _en(r"(baby|child|toddler)[^.]{0,20}fever"))
LETHARGY = (_zh(r"精神~{0,2}(很差|特别差|萎靡)|不~{0,2}理人|叫~{0,4}不~{0,2}(醒|应)|嗜睡|蔫|没有?反应|脖子~{0,2}(硬|僵)|皮疹~{0,4}按不褪"),
            _en(r"(floppy|lethargic|hard to wake|stiff neck)"))
DISULFIRAM = (_zh(r"(头孢|甲硝唑|替硝唑)~{0,10}(酒|啤酒|白酒)|(酒|啤酒|白酒)~{0,10}(头孢|甲硝唑)"), _en(r"(cephalosporin|metronidazole)[^.]{0,30}(alcohol|beer|wine)"))
DISULFIRAM_SIGNS = (_zh(r"心慌|胸闷|脸~{0,2}(红|通红)|呼吸困难|喘不|头晕|血压~{0,2}(低|掉)|恶心"), _en(r"flush|palpitat|short of breath|dizzy"))
BLEED_ON = (_zh(r"血~{0,3}(流个不停|流个没完|一直流|哗哗)|(流|出)血~{0,3}(不停|没停|个不停)"), _en(r"bleeding (nonstop|non-stop)"))
COLLAPSE = (_zh(r"(栽|倒|摔)~{0,3}(地上|在地)|倒在~{0,4}(卫生间|厕所|地上)|瘫在"), _en(r"collapsed"))


def _both(zh_en: tuple[re.Pattern, re.Pattern]) -> re.Pattern:
    """One pattern for the Chinese and the English wording of the same sign."""
    zh, en = zh_en
    return re.compile(f"(?:{zh.pattern})|(?:{en.pattern})", re.IGNORECASE)


EMERGENCY_RULES: tuple[Rule, ...] = (
    Rule("self_harm.intent", "self_harm", (_both(SELF_HARM_INTENT),), event=False),
    Rule("self_harm.topic", "self_harm", (_both(SELF_HARM_TOPIC),)),
    Rule("cardiac.pain_with_signs", "cardiac", (_both(CHEST_PAIN), _both(CARDIAC_SIGNS)), event=False),
    Rule("cardiac.named", "cardiac", (_both((_zh(r"(心梗|心肌梗[死塞]|心脏病)~{0,2}(了|发作)"),
                                              _en(r"(having|had) a heart attack"))),)),
    Rule("stroke.two_signs", "stroke", (_both(STROKE_FACE), _both(STROKE_SPEECH), _both(STROKE_LIMB), _both(STROKE_VISION)), event=False, need=2),
    Rule("stroke.named", "stroke", (_both((_zh(r"(中风|脑梗|卒中|脑出血)了"), _en(r"(having|had) a stroke"))),)),
    Rule("poisoning.ingestion", "poisoning", (_both(INGESTION),)),
    Rule("poisoning.named", "poisoning", (_both(POISONED),)),
    Rule("anaphylaxis.signs", "anaphylaxis", (_both(ALLERGY_CONTEXT), _both(ALLERGY_SEVERE)), event=False),
    Rule("anaphylaxis.named", "anaphylaxis", (_both(ANAPHYLAXIS),)),
    Rule("breathing.choking", "breathing", (_both(CHOKING),)),
    Rule("breathing.severe", "breathing", (_both(BREATHLESS), _both(BREATH_SEVERE))),
    Rule("breathing.foreign_body", "breathing", (_both(BREATHLESS), _both(FOREIGN_BODY))),
    Rule("breathing.drowning", "breathing", (_both(DROWNING),)),
    Rule("seizure.signs", "seizure", (_both(SEIZURE),)),
    Rule("unconscious.no_response", "unconscious", (_both(NO_RESPONSE),), event=False),
    Rule("unconscious.collapse", "unconscious", (_both(UNCONSCIOUS),)),
    Rule("bleeding.uncontrolled", "bleeding", (_both(BLEEDING),), event=False),
    Rule("bleeding.vomit_blood", "bleeding", (_both(BLOOD_VOMIT),)),
    Rule("burn.severe", "burn", (_both(BURN),)),

    Rule("poisoning.object_first", "poisoning", (_both(INGESTION_OBJECT_FIRST),)),
    Rule("poisoning.gas", "poisoning", (_both(GAS),), event=False),
    Rule("bleeding.pregnancy", "bleeding", (_both(PREGNANCY), _both(HEAVY_BLEED)), event=False),
    Rule("bleeding.gushing", "bleeding", (_both(BLOOD_GUSH),), event=False),
    Rule("breathing.asthma", "breathing", (_both(ASTHMA), _both(ASTHMA_SEVERE)), event=False),
    Rule("breathing.distress", "breathing", (_both(BREATH_DISTRESS),)),
    Rule("self_harm.euphemism", "self_harm", (_both(EUPHEMISM_SELF),), event=False),
    Rule("unconscious.in_water", "unconscious", (_both(IN_WATER), _both(NOT_BREATHING)), event=False),
    Rule("unconscious.not_breathing", "unconscious", (_both(NOT_BREATHING),)),
    Rule("unconscious.collapse_floor", "unconscious", (_both(COLLAPSE),)),
    Rule("seizure.colloquial", "seizure", (_both(SEIZURE_MORE),)),
    Rule("general.head_injury", "general", (_both(HEAD_INJURY), _both(HEAD_RED_FLAGS)), event=False),
    Rule("general.child_fever_lethargy", "general", (_both(CHILD_FEVER), _both(LETHARGY)), event=False),
    Rule("poisoning.disulfiram_reaction", "poisoning", (_both(DISULFIRAM), _both(DISULFIRAM_SIGNS)), event=False),
    Rule("bleeding.ongoing", "bleeding", (_both(BLEED_ON),)),
)

# ---- harmful requests ------------------------------------------------------------------------------
SEEKING = _both((_zh(r"怎么|怎样|如何|哪里|哪儿|什么|教我|办法|方法|多少|能不能|可以"),
                 _en(r"\bhow (to|do|can|could|would|much|many)\b|best way|\bwhat (poison|drug|pill)|where (can|to|do)|tell me|teach me|help me|best drug")))
HARM_OTHERS = _both((
    _zh(r"(下毒|投毒|毒死|害死|弄死|杀死|杀了|伤害|毒害|迷晕|迷倒|打晕)~{0,6}(他|她|人|别人|某人|邻居|老公|老婆|丈夫|妻子|同事|孩子|对方)|"
        r"(药|毒|下手|伤害)[^。]{0,12}(不被发现|查不出|不留下?(痕迹|伤痕)|神不知鬼不觉)|(不被发现|神不知鬼不觉)[^。]{0,12}(药|毒|伤害)|"
        r"慢慢中毒|让人~{0,4}(睡着不醒|醒不过来|永远睡)|偷偷~{0,6}(流产|打胎|堕胎)|流产~{0,6}不让她知道"),
    _en(r"\b(poison|kill|hurt|harm|drug|knock out|sedate|overdose)\s+(someone|somebody|a person|my (husband|wife|neighbou?r|boss|mother|"
        r"father|partner)|him|her|people)\b|(put|slip)[^.?]{0,30}(in|into) (someone|somebody|his|her|their)('s)? (food|drink)|"
        r"without (it showing up|being detected|leaving (marks|a trace)|them knowing)|won'?t be detected|undetectable poison|to kill (a person|someone)"),
))
HARM_INTENT = _both((_zh(r"(想|要)~{0,3}(毒死|杀了|弄死|害死)"), _en(r"\bi (want|am going) to (kill|poison) (him|her|my|someone)\b")))
LETHAL_MEANS = _both((
    _zh(r"(买|弄|搞|获得|得到|拿到|找)~{0,6}(致死|致命)剂?量|(哪里|怎么|如何)~{0,4}(买|弄|搞)到?~{0,4}(氰化物|砒霜|毒药|百草枯|芬太尼|剧毒)|"
        r"(吃|喝|服|打)多少~{0,8}(能|会|可以|才能)?(让人)?(死|致死|毙命|自杀)|多少~{0,6}(能|可以|才能)~{0,4}(死|致死)|"
        r"多大剂量~{0,6}(能|会|可以)~{0,4}(死|致死)|(弄到|买到)~{0,6}处方药~{0,6}(卖|倒卖)"),
    _en(r"(get|obtain|buy|acquire|order)[^.?]{0,25}(lethal|fatal) dose|(lethal|fatal) dose[^.?]{0,20}without a prescription|"
        r"where (can|do) i (buy|get)[^.?]{0,20}(cyanide|arsenic|strychnine|fentanyl|poison)|buy cyanide|"
        r"how (many|much)[^.?]{0,40}(to|would|will|it take to) (kill|die)|what (dose|amount)[^.?]{0,40}(would|will|to) kill|"
        r"(dose|amount)[^.?]{0,30}to kill (a person|someone|somebody|a human|him|her)"),
))
SELF_METHOD = _both((_zh(r"(怎么|怎样|如何|教我|多少)~{0,12}(自杀|死得快|割腕|上吊|跳楼)|(自杀|死)~{0,4}(方法|办法)"),
                     _en(r"\b(kill|killing) myself\b|how (to|do i|can i) (commit suicide|end my life)|suicide method")))
ILLICIT_DRUGS = _both((_zh(r"(制作|制造|合成|提炼|自制)~{0,6}(冰毒|海洛因|毒品|摇头丸|K粉|芬太尼|甲基苯丙胺)|(怎么|如何|哪里)~{0,4}(买|弄|搞)~{0,4}(冰毒|海洛因|毒品|摇头丸)"),
                       _en(r"(make|cook|synthesi[sz]e|produce|manufacture)[^.?]{0,15}\b(meth|methamphetamine|heroin|fentanyl|crack|lsd|mdma)\b")))

# ---- general-knowledge questions (only matter when the text names no person and no present event) ----
GENERAL = _both((_zh(r"为什么|为何|如果有人|万一有人|常见原因|原因有哪些|有哪些|是什么|什么是|什么原因|如何预防|怎么预防|怎样预防|区别|科普|如何识别|怎么识别|会不会|注意什么"),
                 _en(r"\bif (someone|somebody|a person|a child)\b|\b(what are|what is|what causes|why do|why does|how do|how does|how is|how to|is it|are there|symptoms of|signs of|causes of|difference between)\b")))

# ---- harmful requests the first rules missed (issue 17)
POISONS = r"百草枯|敌敌畏|毒鼠强|老鼠药|鼠药|氰化钾|氰化钠|氰化物|砒霜|三氧化二砷|铊|乌头碱|河豚毒素|农药|敌百虫|甲醇"
POISON_AMOUNT = _both((_zh(r"(" + POISONS + r")~{0,8}(多少|几)(毫升|克|毫克|口|瓶|片|ml|g|mg)?~{0,8}(死|致死|毙命|没命|走)|"
                           r"(" + POISONS + r")~{0,6}(哪里|哪儿|怎么|在哪)~{0,4}(买|弄|搞|找)|(哪里|哪儿|怎么)~{0,6}(买|弄|搞)~{0,4}(" + POISONS + r")|"
                           r"(" + POISONS + r")~{0,4}(量大|多买)|(胰岛素|氯化钾|地高辛)~{0,8}(多少|多大)~{0,10}(死|停|致死|没命)"),
                       _en(r"how much (paraquat|cyanide|arsenic)")))
SELF_METHOD_MORE = _both((_zh(r"割腕~{0,6}(哪里|哪儿|怎么|多深)|(哪里|哪儿)~{0,3}割~{0,6}(血|快|死)|(吃|服)多少~{0,6}(安眠药|药)~{0,8}(不醒|睡过去|走)|"
                              r"怎么死~{0,4}(不|没有?)~{0,2}(痛|疼|难受)|(几楼|多高)~{0,6}跳~{0,8}(成功|死|没救)|烧炭~{0,10}(多长|多久|几个小时|走)|"
                              r"上吊~{0,6}(绳|结|怎么)|(死|走)得~{0,2}(快|不痛)"),
                          _en(r"which (vein|artery) to cut|(painless|quickest|easiest|best|surest) way to (die|overdose|end (it|my life)|kill myself)|"
                              r"how (many|much)[^.?]{0,40}to (overdose|die|end (it|my life))|what pills[^.?]{0,30}(to die|to end|overdose)")))
COVERT_DOSING = _both((_zh(r"(偷偷|悄悄|背着|不让~{0,3}知道)~{0,10}(下药|放药|加药|喂药|下毒)|"
                           r"(饭|菜|汤|水|酒|茶|奶茶|咖啡|饮料|杯子|牛奶)~{0,3}(里|中)~{0,6}(下药|放~{0,4}药|加~{0,6}(药|什么|点)|下~{0,3}(什么|点))|"
                           r"(下|放|加|掺|磨)~{0,6}(药|粉)~{0,10}(饭|菜|汤|水|酒|茶|奶茶|咖啡|饮料|杯子)|查不出来?~{0,4}(的)?药|"
                           r"(让|使)~{0,2}(人|他|她)~{0,10}(昏迷不醒|睡死|醒不来|进医院|拉到脱水|慢慢不行)|喂~{0,4}(什么|点)?药~{0,6}(一直睡|睡死|不闹)|"
                           r"(给|对)~{0,6}(狗和人|人)~{0,4}下~{0,2}药"),
                       _en(r"(slip|put|hide|crush)[^.?]{0,30}(pill|drug|powder|sedative)[^.?]{0,30}(food|drink|coffee|tea)|"
                           r"make (my|his|her|their|someone|somebody|a)[^.?]{0,20}(sleep|pass out|unconscious|drowsy)[^.?]{0,30}without (him|her|them|anyone) (knowing|noticing)|"
                           r"without (him|her|them) (knowing|noticing)[^.?]{0,40}(drug|pill|sedat|sleep)")))
TOXIC_GAS = _both((_zh(r"(怎么|如何|教我|怎样)~{0,6}(配|制|做|弄|搞|调)出?~{0,6}(毒气|有毒的?气体|氯气|毒烟)"),
                   _en(r"(mix|combine|make|produce|create)[^.?]{0,40}(to make|to produce|to create|into|for)[^.?]{0,10}(a )?(toxic|poison(ous)?|deadly) (gas|fumes)|"
                       r"how (to|do i|can i) make (a )?(toxic|poison(ous)?|deadly) (gas|fumes)")))
CONTROLLED = (r"奥施康定|羟考酮|曲马多|地西泮|安定片|芬太尼|吗啡|杜冷丁|哌替啶|可待因|止咳水|三唑仑|阿普唑仑|艾司唑仑|氯硝西泮|"
              r"劳拉西泮|唑吡坦|佐匹克隆|氯胺酮|K粉|笑气|麻黄碱|伪麻黄碱|丁丙诺啡|美沙酮|γ-羟基丁酸|GHB|右美沙芬|咪达唑仑|安眠药")
CONTROLLED_ACQUIRE = _both((_zh(r"(不要|不用|没有?|免|无)~{0,2}(处方|方子)~{0,12}(" + CONTROLLED + r")|(" + CONTROLLED + r")~{0,12}(不要|不用|没有?|免|无)~{0,2}(处方|方子)|"
                                r"(哪里|哪儿|怎么|在哪|渠道|门路)~{0,8}(买|弄|搞|找|出)~{0,4}(" + CONTROLLED + r")|(" + CONTROLLED + r")~{0,10}(哪里|哪儿|在哪|怎么)~{0,4}(买|弄|搞|卖)|"
                                r"(出|卖|代购|收|求)~{0,4}(" + CONTROLLED + r")|(" + CONTROLLED + r")~{0,6}(私信|价格好说|出吗|有渠道|怎么搞到|搞到手)|"
                                r"(伪造|假)~{0,2}(处方|方子)|(提炼|提取|制)~{0,4}(麻黄碱|可待因)|(" + CONTROLLED + r")~{0,6}(嗨|high)|(门路|渠道)~{0,6}(" + CONTROLLED + r")"),
                            _en(r"(buy|get|order|score)[^.?]{0,30}(oxycodone|oxycontin|oxy|tramadol|diazepam|valium|fentanyl|xanax|alprazolam|"
                                r"codeine|morphine|klonopin|clonazepam|adderall|ketamine)[^.?]{0,30}(without (a )?(prescription|script|rx)|no (prescription|script|rx)|online|on the street|dark ?web)")))
