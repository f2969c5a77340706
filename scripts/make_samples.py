"""Write the small bundled samples in data/ (deterministic; run from the repo root).

The sentences are synthetic, built from templates and word lists written for this project, so
that the embedded-default run learns something in minutes without any download.
"""

import csv
import functools
import json
import random
from pathlib import Path

OUT = Path("data")
rng = random.Random(20261125)

SURNAMES = list(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈姚卢"
)
GIVEN = [
    "伟",
    "芳",
    "娜",
    "敏",
    "静",
    "丽",
    "强",
    "磊",
    "军",
    "洋",
    "勇",
    "艳",
    "杰",
    "涛",
    "明",
    "超",
    "秀英",
    "华",
    "慧",
    "建国",
    "晓明",
    "志强",
    "海燕",
    "国庆",
    "春梅",
    "小龙",
    "文博",
    "子涵",
    "雨欣",
    "浩然",
    "思远",
    "嘉怡",
]
LOCS = [
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "南京",
    "武汉",
    "成都",
    "西安",
    "重庆",
    "天津",
    "苏州",
    "长沙",
    "郑州",
    "沈阳",
    "青岛",
    "大连",
    "厦门",
    "昆明",
    "哈尔滨",
    "浙江",
    "江苏",
    "广东",
    "四川",
    "湖南",
    "山东",
    "河南",
    "云南",
    "新疆",
    "西藏",
    "日本",
    "美国",
    "法国",
    "德国",
    "英国",
    "俄罗斯",
    "巴西",
    "印度",
    "澳大利亚",
    "加拿大",
    "长江",
    "黄河",
    "泰山",
]
ORGS = [
    "新华社",
    "国务院",
    "教育部",
    "外交部",
    "人民银行",
    "中国科学院",
    "北京大学",
    "清华大学",
    "复旦大学",
    "浙江大学",
    "联合国",
    "世界卫生组织",
    "国家足球队",
    "人民日报社",
    "中央电视台",
    "工商银行",
    "铁道部",
    "卫生部",
    "最高人民法院",
    "中国足协",
    "奥委会",
    "红十字会",
    "科技部",
    "财政部",
    "共青团中央",
]
NER_TEMPLATES = [
    "{PER}昨天在{LOC}会见了{ORG}代表团。",
    "{ORG}今天在{LOC}召开新闻发布会，{PER}出席。",
    "据{ORG}报道，{PER}已经抵达{LOC}。",
    "{PER}表示，{LOC}的经济发展很快。",
    "来自{LOC}的{PER}加入了{ORG}。",
    "{ORG}发言人{PER}在记者会上回答了提问。",
    "{PER}和{PER}一起去{LOC}旅游。",
    "{LOC}和{LOC}签署了合作协议。",
    "{ORG}向{LOC}灾区捐款一千万元。",
    "{PER}说：“我很喜欢{LOC}。”",
    "今年春节，{PER}回到了家乡{LOC}。",
    "{ORG}与{ORG}联合发布了报告。",
    "记者从{ORG}获悉，{LOC}将新建一座机场。",
    "{PER}在{ORG}工作了二十年。",
    "我们在{LOC}度过了一个愉快的周末。",
    "会议由{ORG}主办，{PER}主持。",
    "{PER}教授是{ORG}的研究员。",
    "天气预报说明天{LOC}有大雨。",
    "这家公司的总部设在{LOC}。",
    "大家都很关心今年的高考。",
    "{PER}获得了比赛的冠军，{ORG}向他表示祝贺。",
]
CLUENER_TYPES = {"PER": "name", "LOC": "address", "ORG": "organization"}


def person():
    return rng.choice(SURNAMES) + rng.choice(GIVEN)


def fill(template: str, words: dict) -> tuple[str, list]:
    """A template's ``{KIND}`` slots filled in order by ``words[KIND]()``; the PER / LOC / ORG
    words are the sentence's entity spans."""
    text, spans, i = "", [], 0
    while i < len(template):
        if template[i] == "{":
            j = template.index("}", i)
            kind = template[i + 1 : j]
            word = words[kind]()
            if kind in ("PER", "LOC", "ORG"):
                spans.append((len(text), len(text) + len(word), kind))
            text += word
            i = j + 1
        else:
            text += template[i]
            i += 1
    return text, spans


def ner_sentence():
    template = rng.choice(NER_TEMPLATES)
    return fill(template, {"PER": person, "LOC": lambda: rng.choice(LOCS), "ORG": lambda: rng.choice(ORGS)})


def write_bio(path, sentences):
    with open(path, "w", encoding="utf-8") as f:
        for text, spans in sentences:
            tags = ["O"] * len(text)
            for s, e, label in spans:
                tags[s] = f"B-{label}"
                for k in range(s + 1, e):
                    tags[k] = f"I-{label}"
            f.write("".join(f"{c} {t}\n" for c, t in zip(text, tags)) + "\n")


CLASSES = {
    "体育": [
        "比赛",
        "球队",
        "冠军",
        "进球",
        "教练",
        "联赛",
        "运动员",
        "奥运会",
        "篮球",
        "足球",
        "决赛",
        "主场",
    ],
    "健康": [
        "医生",
        "营养",
        "睡眠",
        "病人",
        "药物",
        "锻炼",
        "饮食",
        "血压",
        "医院",
        "维生素",
        "感冒",
        "心脏",
    ],
    "军事": [
        "部队",
        "导弹",
        "演习",
        "军舰",
        "士兵",
        "武器",
        "国防",
        "战斗机",
        "航母",
        "雷达",
        "指挥官",
        "军队",
    ],
    "教育": ["学生", "老师", "考试", "学校", "课程", "高考", "大学", "校长", "教材", "作业", "招生", "课堂"],
    "汽车": [
        "发动机",
        "车型",
        "油耗",
        "驾驶",
        "轮胎",
        "变速箱",
        "车主",
        "新车",
        "底盘",
        "续航",
        "排量",
        "经销商",
    ],
}
FILLERS = [
    "今天",
    "记者了解到",
    "近日",
    "据悉",
    "专家认为",
    "有消息称",
    "这次",
    "我们发现",
    "值得注意的是",
    "总的来说",
]


def class_doc(label):
    words = CLASSES[label]
    parts = [rng.choice(FILLERS)]
    for _ in range(rng.randint(2, 4)):
        first, second = rng.choice(words), rng.choice(words)  # drawn in this order: the samples stay the same
        ending = rng.choice(["很重要", "引起关注", "有了变化", "表现不错", "成为焦点"])
        parts.append(f"{first}的{second}{ending}")
    return "，".join(parts) + "。"


EVENTS = {
    "组织关系-裁员": ["公司宣布裁员{n}人", "{org}大幅裁员"],
    "人生-死亡": ["{per}因病去世", "{per}不幸离世"],
    "财经/交易-上市": ["{org}在港交所上市", "{org}正式挂牌上市"],
    "司法行为-拘捕": ["警方拘捕了{per}", "{per}被警方逮捕"],
    "灾害/意外-地震": ["{loc}发生{m}级地震", "{loc}突发地震"],
    "竞赛行为-夺冠": ["{per}夺得冠军", "{org}队夺冠"],
}


def event_text(labels):
    clauses = []
    for label in labels:
        clauses.append(
            rng.choice(EVENTS[label]).format(
                n=rng.randint(3, 9000),
                m=rng.randint(3, 8),
                org=rng.choice(ORGS),
                per=person(),
                loc=rng.choice(LOCS),
            )
        )
    return "，".join(clauses) + rng.choice(["。", "！", "，引发关注。"])


def main():
    OUT.mkdir(exist_ok=True)
    ner = [ner_sentence() for _ in range(900)]
    write_bio(OUT / "ner_sample.train.bio", ner[:700])
    write_bio(OUT / "ner_sample.dev.bio", ner[700:800])
    write_bio(OUT / "ner_sample.test.bio", ner[800:])

    with open(OUT / "cluener_sample.json", "w", encoding="utf-8") as f:
        for text, spans in (ner_sentence() for _ in range(300)):
            label = {}
            for s, e, kind in spans:
                label.setdefault(CLUENER_TYPES[kind], {}).setdefault(text[s:e], []).append([s, e - 1])
            f.write(json.dumps({"text": text, "label": label}, ensure_ascii=False) + "\n")

    for split, n in (("train", 400), ("test", 100)):
        with open(OUT / f"classify_sample.{split}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "content"])
            for _ in range(n):
                label = rng.choice(sorted(CLASSES))
                w.writerow([label, class_doc(label)])

    events = sorted(EVENTS)
    for split, n in (("train", 500), ("test", 120)):
        with open(OUT / f"multilabel_sample.{split}.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "content"])
            for _ in range(n):
                labels = rng.sample(events, 1 if rng.random() < 0.75 else 2)
                w.writerow(["|".join(labels), event_text(labels)])

    with open(OUT / "generic_sample.jsonl", "w", encoding="utf-8") as f:
        for _ in range(30):
            text, spans = ner_sentence()
            ents = [{"start": s, "end": e, "label": k, "text": text[s:e]} for s, e, k in spans]
            f.write(json.dumps({"text": text, "entities": ents}, ensure_ascii=False) + "\n")

    # pre-LN (brightmart's ln_type "preln", as in xxlarge): from random weights it trains reliably,
    # where post-LN sometimes sits on the label-prior plateau for the whole of a short run
    (OUT / "albert_config_sample.json").write_text(
        json.dumps(
            {
                "attention_probs_dropout_prob": 0.0,
                "hidden_act": "gelu",
                "hidden_dropout_prob": 0.0,
                "embedding_size": 64,
                "hidden_size": 128,
                "initializer_range": 0.02,
                "intermediate_size": 512,
                "max_position_embeddings": 512,
                "num_attention_heads": 4,
                "num_hidden_layers": 4,
                "type_vocab_size": 2,
                "vocab_size": 21128,
                "ln_type": "preln",
            },
            indent=2,
        )
        + "\n"
    )


# ---- the demo's NER data (data/demo_ner.*.bio): the sample's word lists and frames plus many more
# frames (everyday and news sentences, Latin words, digits, emoji and punctuation around and between
# entities), more places and organisations, and sentences without entities. Drawn from a generator
# of its own, so the files above stay as they are.
DEMO_LOCS = LOCS + [
    "中国",
    "香港",
    "台湾",
    "福建",
    "河北",
    "安徽",
    "江西",
    "甘肃",
    "贵州",
    "海南",
    "宁波",
    "无锡",
    "济南",
    "合肥",
    "福州",
    "兰州",
    "拉萨",
    "韩国",
    "意大利",
    "西班牙",
    "埃及",
    "新加坡",
    "非洲",
    "欧洲",
    "太湖",
    "珠江",
    "黄山",
    "长城",
]
DEMO_ORGS = ORGS + [
    "交通部",
    "商务部",
    "公安部",
    "南开大学",
    "武汉大学",
    "中山大学",
    "中国银行",
    "建设银行",
    "中国移动",
    "国家统计局",
    "气象局",
    "人民法院",
    "市政府",
    "作家协会",
    "中国女排",
    "博物馆",
    "省委",
    "海关总署",
]
DEMO_TEMPLATES = NER_TEMPLATES + [
    "{PER}的女儿今年考上了{ORG}。",
    "听说{PER}下周要去{LOC}出差。",
    "{LOC}今天的最高气温是35度。",
    "{ORG}昨天公布了一季度的数据，{LOC}的增长最快。",
    "在{LOC}工作的{PER}每天坐地铁上班。",
    "{PER}：{LOC}的冬天一点也不冷！",
    "《{LOC}日记》的作者是{PER}。",
    "{PER}（{ORG}）在会上作了报告。",
    "{ORG}、{ORG}和{ORG}的代表出席了会议。",
    "{PER}从{LOC}寄来了一封信。",
    "这是{PER}第3次来{LOC}。",
    "{ORG}的新大楼在{LOC}落成。",
    "{PER}被{ORG}聘为顾问。",
    "{LOC}队以2比1战胜了{LOC}队。",
    "{PER}在朋友圈里晒了{LOC}的照片 📷。",
    "{PER}说他最想去的地方是{LOC}。",
    "经过10个小时的飞行，{PER}终于到达了{LOC}。",
    "{ORG}派出了一支医疗队前往{LOC}。",
    "{PER}和家人在{LOC}过了一个快乐的新年 🎉。",
    "{ORG}对{PER}的研究给予了高度评价。",
    "{LOC}、{LOC}等地将出现降温天气。",
    "{PER}是{LOC}人，今年28岁。",
    "{ORG}今年招收了1200名新生。",
    "记者{PER}报道：{LOC}的樱花开了。",
    "{PER}用 WeChat 给{PER}发了一条消息。",
    "{ORG} 2024 年的报告显示，{LOC}的空气质量有所改善。",
    "{PER}在{LOC}参加了 Marathon 比赛，跑出了好成绩 👍。",
    "周末{PER}带着孩子去了{LOC}的动物园。",
    "{PER}向{ORG}递交了辞职信。",
    "{ORG}驻{LOC}记者{PER}发回报道。",
    "{LOC}的房价又涨了。",
    "{PER}的演讲赢得了热烈的掌声。",
    "请把这份文件交给{ORG}的{PER}。",
    "{PER}、{PER}和{PER}是大学同学。",
    "昨天的 NBA 比赛非常精彩！",
    "这个周末天气很好，适合出去走走 😊。",
    "你吃饭了吗？我刚下班。",
    "今年的 GDP 增长了5%。",
    "下午3点开会，请大家准时参加。",
    "这本书我已经看了两遍，真的很好看。",
]


# Frames whose ordinary words vary too: {N} a noun, {V} a verb, {A} an adjective, drawn from the
# most frequent words of those parts of speech in jieba's dictionary (MIT; `pip install
# ".[samples]"`), never its person, place or organisation words. A model that saw only the frames'
# own few ordinary words takes any other word for an entity.
OPEN_TEMPLATES = [
    "{PER}{V}了{N}。",
    "{N}和{N}都很{A}。",
    "{ORG}正在{V}{N}。",
    "在{LOC}，{N}{V}得很{A}。",
    "{PER}认为{N}很{A}。",
    "{N}是{LOC}的{N}。",
    "{PER}打算去{LOC}{V}{N}。",
    "{ORG}的{N}对{N}很{A}。",
    "{N}{V}{N}，{PER}也{V}了。",
    "大家在{N}里{V}{N}。",
    "{PER}说，{N}比{N}更{A}。",
    "{LOC}的{N}越来越{A}了。",
    "{N}需要{V}，{ORG}已经开始{V}{N}。",
    "我们{V}了{N}和{N}。",
    "{PER}的{N}在{LOC}。",
    "关于{N}的{N}，{ORG}表示会{V}。",
]


def jieba_words(pos: str, count: int) -> list[str]:
    """The ``count`` most frequent two-to-four-character Chinese words tagged ``pos``."""
    import jieba

    rows = []
    with open(Path(jieba.__file__).parent / "dict.txt", encoding="utf-8") as f:
        for line in f:
            word, freq, tag = line.split()
            if tag == pos and 2 <= len(word) <= 4 and all("\u4e00" <= c <= "\u9fff" for c in word):
                rows.append((-int(freq), word))
    return [w for _, w in sorted(rows)[:count]]


def demo_ner_sentence(draw: random.Random, open_words: dict):
    template = draw.choice(DEMO_TEMPLATES if draw.random() < 0.6 else OPEN_TEMPLATES)
    words = {
        "PER": lambda: draw.choice(SURNAMES) + draw.choice(GIVEN),
        "LOC": lambda: draw.choice(DEMO_LOCS),
        "ORG": lambda: draw.choice(DEMO_ORGS),
        **{kind: functools.partial(draw.choice, choices) for kind, choices in open_words.items()},
    }
    return fill(template, words)


def write_demo_ner():
    draw = random.Random(20261207)
    open_words = {"N": jieba_words("n", 2000), "V": jieba_words("v", 500), "A": jieba_words("a", 300)}
    ner = [demo_ner_sentence(draw, open_words) for _ in range(3000)]
    for split, part in (("train", ner[:2400]), ("dev", ner[2400:2700]), ("test", ner[2700:])):
        with open(OUT / f"demo_ner.{split}.jsonl", "w", encoding="utf-8") as f:  # JSONL: texts hold spaces
            for text, spans in part:
                ents = [{"start": s, "end": e, "label": k, "text": text[s:e]} for s, e, k in spans]
                f.write(json.dumps({"text": text, "entities": ents}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
    write_demo_ner()
