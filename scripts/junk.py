"""Junk documents of five kinds, made from clean ones, for measuring the quality levers
(scripts/bench_quality.py, scripts/speedrun.py --zh_junk): navigation and copyright
boilerplate, keyword lists, a document's words (Chinese: characters) shuffled, one line
repeated, and mojibake (UTF-8 read as Latin-1) mixed with other scripts."""

JUNK_KINDS = ("boilerplate", "keywords", "shuffled", "repeated", "garbage")
BOILERPLATE = {
    "en": ["Home | About us | Products | Contact | Privacy policy | Terms of service",
           "Copyright © {year} {name} Ltd. All rights reserved.",
           "Subscribe to our newsletter for the latest news and offers.",
           "This website uses cookies to improve your experience. Accept all cookies.",
           "Click here to download the app. Follow us on social media.",
           "Powered by {name}. Page {year} of {name}. Back to top."],
    "zh": ["首页 | 关于我们 | 产品中心 | 联系我们 | 隐私政策 | 服务条款",
           "版权所有 © {year} {name}有限公司 保留所有权利",
           "订阅我们的新闻通讯，获取最新资讯和优惠信息。",
           "本网站使用 cookie 以改善您的浏览体验，点击接受全部。",
           "点击这里下载客户端，关注我们的官方微博和微信公众号。",
           "技术支持：{name}网络 备案号：京ICP备{year}号 返回顶部"]}
SCRIPTS = ("абвгдежзиклмнопрстуфхцчшщыэюя", "αβγδεζηθικλμνξοπρστυφχψω",
           "ぁあぃいぅうぇえぉおかがきぎくぐ", "�ÃÂ¤Â¥Ã©Ã¨Ã¢", "0123456789#@%&*+=<>")


def words_of(text, lang):
    return list(text.replace("\n", "")) if lang == "zh" else text.split()


def junk(kind, clean, rng, lang):
    """One junk document of a kind, made from clean documents of the language."""
    base = rng.choice(clean)
    join = "" if lang == "zh" else " "
    if kind == "boilerplate":
        lines = rng.sample(BOILERPLATE[lang], rng.randint(3, 6))
        return "\n".join(line.format(year=rng.randint(2005, 2026),
                                     name=rng.choice(words_of(base, lang)) * 2)
                         for line in lines)
    if kind == "keywords":  # words of other documents, listed: (for Chinese, 2 characters)
        text = " ".join(rng.sample(clean, 5))
        if lang == "zh":
            pool = "".join(c for c in text if c.isalnum())
            vocab, sep = [pool[i:i + 2] for i in range(0, len(pool) - 1, 2)], "，"
        else:
            vocab, sep = text.split(), rng.choice([", ", " ", " | "])
        return sep.join(rng.choice(vocab) for _ in range(rng.randint(30, 80)))
    if kind == "shuffled":
        units = words_of(base, lang)
        rng.shuffle(units)
        return join.join(units)
    if kind == "repeated":
        lines = [line for line in base.replace("。", "。\n").splitlines() if len(line) > 8]
        return "\n".join([rng.choice(lines or [base[:60]])] * rng.randint(5, 15))
    # garbage: the text as mojibake (UTF-8 read as Latin-1), with other scripts mixed in
    garbled = base[:300].encode("utf-8").decode("latin-1")
    noise = "".join(rng.choice(rng.choice(SCRIPTS)) for _ in range(rng.randint(40, 120)))
    cut = rng.randrange(len(garbled) + 1)
    return garbled[:cut] + noise + garbled[cut:]
