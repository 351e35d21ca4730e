"""dataset.py: reading, cleaning, dedup, pretokenizing, packing, sharding, caching, bad input."""

import gzip
import inspect
import json
import math
import pickle
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import corpus
import dataset
import prepare as pipeline  # the module; its function prepare() is imported below
import dedup
import evaluator
from corpus import builtin_corpus, clean_text, iter_texts, stdlib_docstrings
from dataset import PretrainDataset, ShardedSampler, open_split
from prepare import check_tokenizer, load_meta, prepare
from dedup import lsh_bands, minhash
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bench_data import PaddedDataset  # noqa: E402
from bench_dedup import letters_edited, respaced, sentence_moved  # noqa: E402 (edits)
from tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, load_tokenizer, save_tokenizer,
                       token_bytes, train_tokenizer)

WORDS = ("model data token train learn text corpus clean window batch layer weight loss "
         "python river mountain garden kitchen window letter summer winter music paper "
         "market doctor teacher student engine bridge forest island ocean planet signal "
         "memory network thread socket buffer packet stream filter parser number vector "
         "matrix tensor gradient optimizer scheduler sampler shard rank epoch step value "
         "yellow purple orange silver golden quiet loud early late bright dark warm cold").split()
HANZI = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工"
         "也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小"
         "物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形")


def english_doc(rng, n_words=80):
    words = [rng.choice(WORDS) for _ in range(n_words)]
    sentences = [" ".join(words[i:i + 10]).capitalize() + "." for i in range(0, n_words, 10)]
    return " ".join(sentences)


def chinese_doc(rng, n_chars=150):
    chars = [rng.choice(HANZI) for _ in range(n_chars)]
    return "".join(c + ("。" if i % 20 == 19 else "，" if i % 7 == 6 else "")
                   for i, c in enumerate(chars))


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                    encoding="utf-8")
    return path


def decoded_documents(tok, prepared, split):
    tokens, starts = open_split(prepared, split)
    return [tok.decode(tokens[starts[i]:starts[i + 1]].tolist(), skip_special_tokens=False)
            for i in range(len(starts) - 1)]


def unframe(text):
    assert text.startswith("<s>") and text.endswith("</s>")
    return text[3:-4]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    rng = random.Random(0)
    texts = [english_doc(rng) for _ in range(40)] + [chinese_doc(rng) for _ in range(40)]
    tok = train_tokenizer(texts, vocab_size=400)
    return save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def tok(tok_path):
    return load_tokenizer(tok_path)


def quick_prepare(sources, tok_path, cache_dir, **options):
    options = {"num_workers": 0, "verbose": False, **options}
    return prepare(sources, tok_path, cache_dir, **options)


# Sources


def test_stdlib_docstrings_are_sorted_by_path_and_skip_tests(tmp_path):
    (tmp_path / "zpkg").mkdir()
    (tmp_path / "test").mkdir()
    # created out of order on purpose
    (tmp_path / "zpkg" / "__init__.py").write_text('"""Package z."""\n')
    (tmp_path / "b.py").write_text('"""Module b."""\ndef f():\n    """Function f."""\n')
    (tmp_path / "a.py").write_text('"""Module a."""\nclass C:\n    """Class C."""\n')
    (tmp_path / "test" / "t.py").write_text('"""Skipped."""\n')
    (tmp_path / "broken.py").write_text('"""Broken."""\nprint "python 2"\n')
    assert stdlib_docstrings(tmp_path) == [
        "a\nModule a.\n\na.C\nClass C.", "b\nModule b.\n\nb.f\nFunction f.", "zpkg\nPackage z."]


def test_builtin_corpus_is_pydoc_topics_then_stdlib_docstrings():
    import json as json_module

    import pydoc_data.topics

    docs = builtin_corpus()
    topics = pydoc_data.topics.topics
    assert docs[:len(topics)] == [topics[k] for k in sorted(topics)]
    json_doc = next(d for d in docs if d.startswith("json\n"))
    # ast's docstrings are cleaned like inspect's
    assert f"json.dumps\n{inspect.getdoc(json_module.dumps)}" in json_doc
    assert sum(map(len, docs)) > 2_000_000


def test_iter_texts_reads_jsonl_txt_gzip_and_globs(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ["first", "second"])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped 中文"}) + "\n\n")  # blank lines are skipped
    (tmp_path / "c.txt").write_text("para one\nstill one\n\n\npara two\n", encoding="utf-8")
    with gzip.open(tmp_path / "d.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\ufeffzipped paragraph\n")  # a byte-order mark is not text
    assert list(iter_texts(str(tmp_path / "*"))) == [
        "first", "second", "zipped 中文", "para one\nstill one\n", "para two\n",
        "zipped paragraph\n"]
    write_jsonl(tmp_path / "e.jsonl", ["other field"])
    (tmp_path / "e.jsonl").write_text('{"content": "other field"}\n')
    assert list(iter_texts(tmp_path / "e.jsonl", text_field="content")) == ["other field"]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok one"}\n{"text": "ok two"}\n{"text": broken\n{"text": "ok"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON") as error:
        list(iter_texts(path))
    assert "--skip_bad_lines" in str(error.value) and "\n" not in str(error.value)
    counts = {"bad_lines": 0}
    assert list(iter_texts(path, skip_bad_lines=True, counts=counts)) == ["ok one", "ok two", "ok"]
    assert counts["bad_lines"] == 1


@pytest.mark.parametrize("line, message", [
    (b'{"content": "x"}\n', r"f\.jsonl:2: no 'text' field.*--text_field"),
    (b'{"text": 42}\n', r"f\.jsonl:2: field 'text' is int"),
    (b'["text"]\n', r"f\.jsonl:2: no 'text' field"),
    (b'{"text": "caf\xe9"}\n', r"f\.jsonl:2: bytes that are not UTF-8"),
])
def test_each_bad_line_gives_a_one_line_error(tmp_path, line, message):
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"text": "good"}\n' + line)
    with pytest.raises(ValueError, match=message) as error:
        list(iter_texts(path))
    assert "\n" not in str(error.value)
    counts = {"bad_lines": 0}
    assert list(iter_texts(path, skip_bad_lines=True, counts=counts)) == ["good"]
    assert counts["bad_lines"] == 1


def test_missing_and_unsupported_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        list(iter_texts(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"\*\.jsonl"):
        list(iter_texts(str(tmp_path / "*.jsonl")))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        list(iter_texts(tmp_path / "data.csv"))
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="damaged gzip"):
        list(iter_texts(tmp_path / "broken.jsonl.gz"))


# Cleaning


@pytest.mark.parametrize("raw, cleaned, rules", [
    ("a clean sentence that is long enough.", "a clean sentence that is long enough.", []),
    ("null\x00 and bell\x07 are gone, tab\tstays", "null and bell are gone, tab\tstays",
     ["control_chars"]),
    ("windows\r\nline ends\rbecome newlines here", "windows\nline ends\nbecome newlines here",
     []),  # line ends are normalised, not counted as control characters
    ("name" + " " * 12 + "value, but code\n        indentation stays",
     "name value, but code\n        indentation stays", ["space_runs"]),
    ("one paragraph\n\n\n\n\nanother paragraph", "one paragraph\n\nanother paragraph",
     ["space_runs"]),
    ("Title of the section\n====================\nbody", "Title of the section\n===\nbody",
     ["symbol_runs"]),
    ("好的！！！！！！！！我们开始吧，这是一个足够长的句子。", "好的！！！我们开始吧，这是一个足够长的句子。",
     ["symbol_runs"]),
    ("  too short  ", None, ["too_short"]),
    ("<s>short</s> <s>text</s>", None, ["too_short"]),  # markers are not content
    ("{}[]();:,.!?<>/\\|@#$%^&*+= ab {}[]();:,.!?", None, ["mostly_symbols"]),
])
def test_cleaning_rules(raw, cleaned, rules):
    assert clean_text(raw, markers=SPECIAL_TOKENS[1:]) == (cleaned, rules)


def test_minimind_lines_keep_their_markers():
    line = "<s>第一段文字，足够长的内容在这里。</s> <s>Second part of the same line.</s>"
    assert clean_text(line, markers=SPECIAL_TOKENS[1:]) == (line, [])


# Deduplication


def test_shingles_are_runs_of_letters_that_spacing_and_punctuation_do_not_change():
    same = dedup.shingles("Hello, World!  It's 2024.")
    assert same.tolist() == dedup.shingles("hello world its 2024").tolist()
    assert len(same) == len("helloworldits2024") - 4 + 1  # runs of 5 outside CJK, the tail
    assert len(dedup.shingles("你好，世界和平")) == 6 - 3 + 1  # runs of 4 from a CJK character
    assert len(dedup.shingles("abc")) == 1 and len(dedup.shingles("...")) == 0
    assert len(set(dedup.shingles("abcdeabcde").tolist())) == 5  # abcde bcdea ... eabcd
    # every letter is in some shingle: an edit at the very end changes one
    a, b = dedup.shingles("你好世界abcd"), dedup.shingles("你好世界abcz")
    assert dedup.jaccard(np.unique(a), np.unique(b)) < 1
    # sizes are chosen per position: a text half CJK keeps its shingles when edited
    mixed = "systemd 下的日志服务 journald 记录内核信息 kernel messages 和系统消息"
    a, b = dedup.shingles(mixed), dedup.shingles(mixed.replace("journald", "journal"))
    assert dedup.jaccard(np.unique(a), np.unique(b)) > 0.7


def test_minhash_estimates_jaccard_similarity():
    a = np.arange(0, 1000, dtype=np.uint64) * np.uint64(2654435761)
    b = np.arange(200, 1200, dtype=np.uint64) * np.uint64(2654435761)
    sig = minhash([a, b], num_perm=256)
    # |a & b| = 800, |a | b| = 1200
    assert abs((sig[0] == sig[1]).mean() - 800 / 1200) < 0.08
    # processing rows in small chunks gives the same signatures
    assert (minhash([a, b, a[:5]], 256, chunk=333) == minhash([a, b, a[:5]], 256)).all()
    assert (minhash([a, a[:0]], 64)[1] == 2**32 - 1).all()  # no shingles: nothing to match


def test_lsh_bands_find_pairs_a_margin_above_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_bands(128, threshold)
        copy = threshold + dedup.LSH_MARGIN * (1 - threshold)
        assert bands * rows <= 128
        assert 1 - (1 - copy**rows) ** bands >= 0.99
        assert 1 - (1 - threshold**rows) ** bands >= 0.5  # found at the threshold itself
        # one more row would miss too many pairs there
        more = rows + 1
        assert 1 - (1 - copy**more) ** (128 // more) < 0.99


def mixed_texts(rng, n):
    alphabet = list("abcXYZ 019_-.,!?\t\n") + ["中", "文", "の", "한", "é", "ß", "😀", "𠀀",
                                                  "\u3000", "٣", "²", "・", "\ud800"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(n)]


def test_fast_shingles_and_signatures_equal_the_plain_definitions():
    rng = random.Random(2)
    texts = mixed_texts(rng, 300) + [english_doc(rng), chinese_doc(rng), "x" * 200]
    fast = [dedup.shingles(t) for t in texts]
    signatures = dedup.minhash(fast, num_perm=32)
    for text, hashes, signature in zip(texts, fast, signatures):
        plain = dedup.shingles_plain(text)
        assert hashes.tolist() == plain, text
        assert signature.tolist() == dedup.minhash_plain(set(plain), num_perm=32), text
    for a, b in zip(texts[:-1], texts[1:]):
        fast_a, fast_b = dedup.shingles(a), dedup.shingles(b)
        plain_a, plain_b = dedup.shingles_plain(a), dedup.shingles_plain(b)
        assert dedup.jaccard(np.unique(fast_a), np.unique(fast_b)) == dedup.jaccard_plain(
            set(plain_a), set(plain_b))
        if plain_a:
            assert dedup.parts_found(fast_a, np.unique(fast_b)) == pytest.approx(
                dedup.parts_found_plain(plain_a, set(plain_b)), abs=1e-12)


def test_the_fast_rule_equals_the_plain_rule_on_pairs_of_every_kind():
    """Near copies, pages that share a licence, extensions, unrelated texts: given the pair
    as a candidate, the fast path drops the copy exactly when is_near_copy_plain says so."""
    rng = random.Random(6)
    licence, kinds = english_doc(rng, 40), set()
    for _ in range(60):
        a = rng.choice([english_doc(rng, rng.randint(5, 120)), chinese_doc(rng, 200)])
        b = rng.choice([letters_edited(a, 0.03, rng), licence + english_doc(rng, 40),
                        a + " " + english_doc(rng, 20), english_doc(rng), a.upper()])
        if rng.random() < 0.5:
            a = licence + " " + a
        plain = dedup.is_near_copy_plain(dedup.shingles_plain(a), dedup.shingles_plain(b),
                                         dedup.DEDUP_THRESHOLD)
        doc_shingles = [dedup.shingles(a), dedup.shingles(b)]
        drop, _ = dedup.near_duplicates(np.array([[0, 1]]), doc_shingles.__getitem__,
                                        dedup.DEDUP_THRESHOLD)
        assert (drop == [1]) == plain, (a, b)
        kinds.add(plain)
    assert kinds == {True, False}


def test_fast_candidates_equal_the_plain_banding():
    """Clusters of near copies plus unrelated documents: every pair that agrees on a band,
    as the plain definition lists them."""
    rng = random.Random(3)
    base = [english_doc(rng, 40) for _ in range(20)]
    docs = base + [near_copy(rng, d, False) for d in base[:10]] + [
        near_copy(rng, d, False) for d in base[:5]]
    signatures = dedup.minhash([dedup.shingles(d) for d in docs], num_perm=32)
    bands, rows = dedup.lsh_bands(32, 0.5)
    fast = dedup.candidate_pairs(dedup.band_hashes(signatures, bands, rows),
                                 np.ones(len(docs), bool))
    plain = dedup.candidate_pairs_plain(signatures.tolist(), bands, rows)
    assert len(plain) > 10 and {tuple(p) for p in fast.tolist()} == plain


def test_bucket_members_are_compared_with_each_other_not_only_with_the_first():
    """Three documents share a bucket in every band; the first is unrelated to the other
    two, which are near copies. Pairing members only with the first missed the copy."""
    rng = random.Random(4)
    unrelated, doc = english_doc(rng), english_doc(rng)
    texts = [unrelated, doc, near_copy(rng, doc, False)]
    doc_shingles = [dedup.shingles(t) for t in texts]
    assert dedup.jaccard(np.unique(doc_shingles[1]), np.unique(doc_shingles[2])) >= 0.8
    assert dedup.jaccard(np.unique(doc_shingles[0]), np.unique(doc_shingles[1])) < 0.2
    band_values = np.full((3, 4), 7, np.uint64)  # one bucket in every band
    pairs = dedup.candidate_pairs(band_values, np.ones(3, bool))
    assert {tuple(p) for p in pairs.tolist()} == {(0, 1), (0, 2), (1, 2)}
    drop, report = dedup.near_duplicates(pairs, doc_shingles.__getitem__, 0.8)
    assert drop == [2] and report["clusters"] == 1


def test_near_dedup_recall_holds_when_unrelated_documents_crowd_the_buckets(tmp_path, tok_path,
                                                                           tok):
    """Many short documents from one template share buckets; planted copies among them must
    still be found, and the distinct documents kept."""
    rng = random.Random(5)
    template = "Question: what is the {} of the {}? Answer: the {} of the {} is {}."
    docs = [template.format(*(rng.choice(WORDS) for _ in range(5))) for _ in range(150)]
    docs = list(dict.fromkeys(docs))  # distinct
    copies = [d.replace("Answer:", "Answer :") + " ok" for d in docs[:40]]
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", docs + copies), tok_path,
                             tmp_path, val_fraction=0, dedup_threshold=0.5)
    kept = {unframe(t) for t in decoded_documents(tok, prepared, "train")}
    found = sum(c not in kept for c in copies) / len(copies)
    assert found >= 0.9
    assert sum(d in kept for d in docs) >= 0.9 * len(docs)


def test_exact_dedup_keeps_distinct_texts_under_a_hash_collision(tmp_path, tok_path, tok,
                                                                  monkeypatch):
    monkeypatch.setattr(pipeline, "text_hash", lambda normalized: 42)  # every hash collides
    texts = ["The first document, long enough to keep.",
             "A second document, different from the first.",
             "THE FIRST   document, long enough to keep.",  # equal after normalising
             "A third document that is also different."]
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", texts), tok_path, tmp_path,
                             near_dedup=False, val_fraction=0)
    kept = [unframe(t) for t in decoded_documents(tok, prepared, "train")]
    assert kept == [texts[0], texts[1], texts[3]]
    assert load_meta(prepared)["report"]["exact_duplicates"] == 1


def shingle_set(text):
    """The shingles of the dedup rule, written independently: from each letter or digit,
    the run of 4 of them if it is CJK, else of 5, where the text has that many left, and
    the last 5; lower-cased, everything else left out."""
    chars = re.sub(r"[\W_]+", "", text.lower())
    cjk = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
    sizes = [4 if cjk.match(c) else 5 for c in chars]
    return {chars[i:i + k] for i, k in enumerate(sizes) if i + k <= len(chars)} | {chars[-5:]}


def true_jaccard(a, b):
    a, b = shingle_set(a), shingle_set(b)
    return len(a & b) / len(a | b)


def near_copy(rng, text, chinese):
    """text with one unit replaced and sometimes a short tail added or removed."""
    if chinese:
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice(HANZI) + text[i + 1:]
        return text + "好的。" if rng.random() < 0.5 else text[:-3]
    words = text.split(" ")
    words[rng.randrange(len(words))] = rng.choice(WORDS)
    text = " ".join(words)
    return text + " Thanks." if rng.random() < 0.5 else text


def test_near_dedup_finds_planted_near_duplicates_english_and_chinese(tmp_path, tok_path, tok):
    rng = random.Random(1)
    bases = {"en": [english_doc(rng) for _ in range(80)],
             "zh": [chinese_doc(rng) for _ in range(80)]}
    planted = {"en": [], "zh": []}
    for lang, docs in bases.items():
        for doc in docs[:60]:
            copy = near_copy(rng, doc, lang == "zh")
            if true_jaccard(doc, copy) >= 0.85:  # a near duplicate by the rule's own measure
                planted[lang].append(copy)
        assert len(planted[lang]) >= 40
    texts = bases["en"] + bases["zh"] + planted["en"] + planted["zh"]
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", texts), tok_path, tmp_path,
                             val_fraction=0)
    kept = {unframe(t) for t in decoded_documents(tok, prepared, "train")}
    assert set(bases["en"] + bases["zh"]) <= kept  # no false removal
    for lang in ("en", "zh"):
        recall = sum(copy not in kept for copy in planted[lang]) / len(planted[lang])
        assert recall >= 0.9, lang
    report = load_meta(prepared)["report"]
    assert report["near_duplicates"] == len(texts) - len(kept)


LICENCE = ("This program is free software: you can redistribute it and/or modify it under the "
           "terms of the GNU General Public License as published by the Free Software "
           "Foundation, either version 3 of the License, or (at your option) any later version. "
           "It is distributed in the hope that it will be useful, but WITHOUT ANY WARRANTY; "
           "without even the implied warranty of MERCHANTABILITY.")  # 60 words
EDIT_KINDS = {"3% edits": lambda rng, t: letters_edited(t, 0.03, rng),
              "a sentence moved": lambda rng, t: sentence_moved(t, rng),
              "spacing and punctuation": lambda rng, t: respaced(t, rng)}


@pytest.mark.parametrize("kind", EDIT_KINDS)
@pytest.mark.parametrize("lang, length", [("en", 8), ("en", 2000), ("zh", 50), ("zh", 10000)])
def test_the_default_rule_finds_copies_with_each_kind_of_edit(kind, lang, length):
    """Copies people make (3% of the letters edited, a sentence moved, spacing and
    punctuation changed), in both languages, short and long documents (length in words or
    characters): at least 95% found."""
    rng = random.Random(f"{kind} {lang} {length}")  # a str seed: the same in every process
    n = 60 if length < 1000 else 8
    make = (lambda: english_doc(rng, length)) if lang == "en" else lambda: chinese_doc(rng, length)
    bases = [make() for _ in range(n)]
    copies = [EDIT_KINDS[kind](rng, b) for b in bases]
    drop, _ = dedup.find_near_duplicates(bases + copies)
    assert drop == sorted(drop) and set(drop) <= set(range(n, 2 * n))  # no original dropped
    assert len(drop) >= 0.95 * n


def test_distinct_documents_that_share_a_form_are_kept():
    """Poems of one form, question-answer lines of one template, pages that share a licence
    (a quarter, half or three quarters of their text): none is removed."""
    rng = random.Random(7)
    refrain = "春风又绿江南岸，明月何时照我还。"  # poems of one form, sharing two lines
    poems = [refrain + "".join("".join(rng.choice(HANZI) for _ in range(5)) + "，。"[k % 2]
                               for k in range(6)) for _ in range(300)]
    qa = [f"问：请问{chinese_doc(rng, 3)}是什么意思？答：{chinese_doc(rng, 3)}的意思是"
          f"{chinese_doc(rng, 25)}" for _ in range(300)] + [
        f"Q: what is the {rng.choice(WORDS)} of the {rng.choice(WORDS)}? A: the answer is "
        + english_doc(rng, 12) for _ in range(300)]
    closest = max(dedup.jaccard(np.unique(dedup.shingles(a)), np.unique(dedup.shingles(b)))
                  for a in poems[:60] for b in poems[60:120])
    assert closest > 0.1  # they do share runs: the rule has something to keep apart
    pages = [LICENCE + " " + english_doc(rng, rng.choice([20, 60, 180])) for _ in range(300)]
    for form in (poems, qa, pages):
        assert len(set(form)) == len(form)
        drop, report = dedup.find_near_duplicates(form)
        assert drop == [], [form[i][:80] for i in drop]
    assert report["parts_rejected"] > 0  # some pages share enough to pass the threshold


def test_the_histogram_holds_the_plain_similarity_of_every_checked_pair():
    rng = random.Random(9)
    bases = [english_doc(rng, 30) for _ in range(10)]
    docs = bases + [letters_edited(b, 0.03, rng) for b in bases]  # clusters of two: none skipped
    pairs = np.array([(i, j) for i in range(20) for j in range(i + 1, 20)])
    _, report = dedup.near_duplicates(pairs, lambda i: dedup.shingles(docs[i]), 0.5)
    plain = [0] * 10
    for i, j in pairs.tolist():
        similarity = dedup.jaccard_plain(set(dedup.shingles_plain(docs[i])),
                                         set(dedup.shingles_plain(docs[j])))
        plain[min(int(similarity * 10), 9)] += 1
    assert report["histogram"] == plain and report["checked"] == len(pairs)


def test_signatures_set_aside_only_pairs_below_the_threshold():
    rng = random.Random(10)
    bases = [chinese_doc(rng, 150) for _ in range(60)] + [english_doc(rng, 30) for _ in range(60)]
    docs = bases + [letters_edited(b, 0.03, rng) for b in bases]
    sketches = dedup.minhash([dedup.shingles(d) for d in docs]).astype(np.uint16)
    pairs = np.array([(i, j) for i in range(len(docs)) for j in range(i + 1, len(docs))])
    kept = {tuple(p) for p in dedup.likely_pairs(pairs, sketches, 0.5).tolist()}
    assert {(k, k + len(bases)) for k in range(len(bases))} <= kept  # every planted copy
    plain = [set(dedup.shingles_plain(d)) for d in docs]
    for i, j in pairs.tolist():
        if (i, j) not in kept:
            assert dedup.jaccard_plain(plain[i], plain[j]) < 0.5
    assert len(kept) < 0.05 * len(pairs)


def test_the_cut_report_counts_every_checked_pair_in_its_histogram(tmp_path, tok_path, tok):
    rng = random.Random(8)
    bases = [english_doc(rng, 60) for _ in range(40)]
    texts = bases + [letters_edited(b, 0.03, rng) for b in bases[:20]] + [
        LICENCE + " " + english_doc(rng, 20) for _ in range(10)]
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", texts), tok_path, tmp_path,
                             val_fraction=0)
    r = load_meta(prepared)["report"]
    # every dropped document came from a checked pair at the threshold or above
    assert sum(r["similarity_histogram"][5:]) >= r["near_duplicates"] >= 20
    assert r["candidate_pairs_checked"] + r["candidate_pairs_unlikely"] <= r["candidate_pairs"]
    similarity, a, b = r["cut_examples"]["above"]
    head, tail = a.split(" … ")  # the example's first and last characters
    assert similarity >= 0.5 and any(t.startswith(head) and t.endswith(tail) for t in texts)
    assert r["parts_rejected"] > 0 and r["cut_examples"]["parts"][0] >= 0.5
    report = pipeline.format_report(load_meta(prepared))
    assert "0.5-0.6" in next(line for line in report.splitlines() if "<- the cut" in line)
    assert "just above the cut, dropped" in report


# Pretokenizing and splitting


def test_pretokenize_decodes_back_to_the_cleaned_documents(tmp_path, tok_path, tok):
    texts = ["English text with enough characters to keep.",
             "中文文本，包含足够多的字符，可以保留下来。",
             "emoji 😀🚀 and 👩‍👩‍👧 inside a sentence that is long enough",
             "<s>MiniMind 格式的第一段，已经带标记。</s> <s>and its second part here</s>",
             "a control\x07 character is removed from this line"]
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", texts), tok_path, tmp_path,
                             val_fraction=0.3)
    decoded = decoded_documents(tok, prepared, "train") + decoded_documents(tok, prepared, "val")
    expected = ["<s>" + t + "</s>" for t in texts[:3]] + [
        texts[3], "<s>a control character is removed from this line</s>"]
    assert sorted(decoded) == sorted(expected)
    for split in ("train", "val"):
        tokens, starts = open_split(prepared, split)
        for i in range(len(starts) - 1):
            assert tokens[starts[i]] == BOS_ID and tokens[starts[i + 1] - 1] == EOS_ID
    assert load_meta(prepared)["dtype"] == "uint16"


@pytest.mark.parametrize("text", ["<s>an opening marker without its closing one, long enough",
                                  "a closing marker without the opening one, long enough</s>",
                                  "no marker at all in this document, long enough to keep"])
def test_preparation_and_evaluation_frame_a_document_alike(tmp_path, tok_path, tok, text):
    """One <s> at the start and one </s> at the end, whichever the text already has: what
    training sees is what evaluation scores (evaluator.text_windows)."""
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", [text]), tok_path, tmp_path,
                             val_fraction=0)
    tokens, _ = open_split(prepared, "train")
    body = tok.encode(text.removeprefix("<s>").removesuffix("</s>"),
                      add_special_tokens=False).ids
    assert tokens.tolist() == [BOS_ID, *body, EOS_ID]  # by hand: markers once each
    (window,) = evaluator.text_windows(tok, [text], max_seq_len=10_000)
    assert window == tokens.tolist()


def test_data_report_counts_the_bytes_of_text_that_evaluation_counts(tmp_path, tok_path, tok):
    """Bytes per token = UTF-8 bytes of the text, markers excluded (they are not text), over
    all tokens, markers included: the accounting of bits per byte (tokenizer.token_bytes)."""
    texts = ["<s>MiniMind 格式的第一段，已经带标记。</s> <s>and its second part here</s>",
             "plain English text that is long enough to be kept as it is."]
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", texts), tok_path, tmp_path,
                             val_fraction=0)
    tokens, _ = open_split(prepared, "train")
    text_bytes = sum(len(t.replace("<s>", "").replace("</s>", "").encode("utf-8"))
                     for t in texts)
    report = load_meta(prepared)["report"]
    assert report["bytes_per_token"] == pytest.approx(text_bytes / len(tokens))
    table = token_bytes(tok)
    assert sum(len(table[t]) for t in tokens.tolist()) == text_bytes


def test_train_and_val_are_disjoint_and_stable(tmp_path, tok_path, tok):
    rng = random.Random(2)
    texts = [english_doc(rng, 30) for _ in range(200)]
    first = quick_prepare(write_jsonl(tmp_path / "a.jsonl", texts), tok_path, tmp_path / "c",
                          val_fraction=0.2, near_dedup=False)
    train = set(decoded_documents(tok, first, "train"))
    val = set(decoded_documents(tok, first, "val"))
    assert not train & val and len(train | val) == 200
    assert 20 <= len(val) <= 60
    # more documents: the new prepared directory keeps every old document in its old split
    more = texts + [english_doc(rng, 30) for _ in range(100)]
    second = quick_prepare(write_jsonl(tmp_path / "b.jsonl", more), tok_path, tmp_path / "c",
                           val_fraction=0.2, near_dedup=False)
    assert second != first
    assert train <= set(decoded_documents(tok, second, "train"))
    assert val <= set(decoded_documents(tok, second, "val"))


def test_tiny_corpus_still_gets_a_validation_document(tmp_path, tok_path):
    texts = ["the only two documents of the corpus", "and this is the second one of them"]
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", texts), tok_path, tmp_path)
    splits = load_meta(prepared)["splits"]
    assert splits["train"]["documents"] == 1 and splits["val"]["documents"] == 1


def test_weights_repeat_or_thin_out_a_source(tmp_path, tok_path, tok):
    rng = random.Random(3)
    a = [english_doc(rng, 20) for _ in range(20)]
    b = [chinese_doc(rng, 40) for _ in range(100)]
    prepared = quick_prepare([write_jsonl(tmp_path / "a.jsonl", a),
                              write_jsonl(tmp_path / "b.jsonl", b)], tok_path, tmp_path,
                             weights=[2, 0.5], val_fraction=0, near_dedup=False)
    train = [unframe(t) for t in decoded_documents(tok, prepared, "train")]
    assert all(train.count(t) == 2 for t in a)
    kept_b = [t for t in b if t in train]
    assert all(train.count(t) == 1 for t in kept_b) and 30 <= len(kept_b) <= 70
    # first every document once, then the second copies: repeats are not side by side
    assert train[:20 + len(kept_b)] == a + kept_b and train[20 + len(kept_b):] == a


@pytest.mark.parametrize("near_dedup", [False, True], ids=["exact", "near"])
def test_a_copy_is_kept_in_the_source_of_the_highest_weight(tmp_path, tok_path, tok,
                                                            near_dedup):
    """A text in a weight-0 source listed first and in a weight-2 source: weights apply to
    what dedup keeps, so it is trained on twice, not dropped with the weight-0 copy."""
    rng = random.Random(5)
    shared, unique = english_doc(rng, 40), [english_doc(rng, 40) for _ in range(6)]
    # near dedup: the copy differs by one word's case, which normalisation does not undo
    copy = shared.replace(shared.split()[3], shared.split()[3].upper(), 1) if near_dedup \
        else shared
    prepared = quick_prepare([write_jsonl(tmp_path / "zero.jsonl", [copy] + unique[:3]),
                              write_jsonl(tmp_path / "half.jsonl", [copy] + unique[3:4]),
                              write_jsonl(tmp_path / "two.jsonl", [shared] + unique[4:])],
                             tok_path, tmp_path, weights=[0, 0.5, 2], val_fraction=0,
                             near_dedup=near_dedup)
    train = [unframe(t) for t in decoded_documents(tok, prepared, "train")]
    assert train.count(shared) == 2
    assert near_dedup is False or copy not in train  # the near copies were dropped
    assert all(train.count(t) == 2 for t in unique[4:]) and not set(unique[:3]) & set(train)


def test_vocab_above_65536_uses_uint32(tmp_path, tok):
    big = load_tokenizer(save_tokenizer(tok, tmp_path / "small.json"))
    big.add_tokens([f"extra{i}" for i in range(66_000)])
    big_path = save_tokenizer(big, tmp_path / "big.json")
    text = "words extra65999 and extra3 are single tokens now"
    prepared = quick_prepare(write_jsonl(tmp_path / "d.jsonl", [text]), big_path, tmp_path)
    assert load_meta(prepared)["dtype"] == "uint32"
    tokens, _ = open_split(prepared, "train")
    assert big.token_to_id("extra65999") in tokens.tolist()
    assert big.decode(tokens.tolist(), skip_special_tokens=False) == f"<s>{text}</s>"


def test_worker_processes_give_the_same_files(tmp_path, tok_path):
    rng = random.Random(4)
    texts = [english_doc(rng, 30) for _ in range(300)] + [chinese_doc(rng) for _ in range(300)]
    path = write_jsonl(tmp_path / "d.jsonl", texts + texts[:50])
    serial = quick_prepare(path, tok_path, tmp_path / "serial")
    parallel = quick_prepare(path, tok_path, tmp_path / "parallel", num_workers=2)
    for name in ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy"):
        assert (serial / name).read_bytes() == (parallel / name).read_bytes()


def test_empty_corpus_after_cleaning_is_an_error(tmp_path, tok_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["short", "=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-"])
    with pytest.raises(ValueError, match="no documents left after cleaning") as error:
        quick_prepare(path, tok_path, tmp_path)
    assert "\n" not in str(error.value)
    assert not list(tmp_path.glob("d-*")) and not list(tmp_path.glob(".tmp*"))


# Caching


def test_prepared_data_is_reused_and_rebuilt_when_inputs_change(tmp_path, tok_path, tok):
    rng = random.Random(5)
    source = write_jsonl(tmp_path / "d.jsonl", [english_doc(rng, 30) for _ in range(20)])
    first = quick_prepare(source, tok_path, tmp_path / "cache")
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert quick_prepare(source, tok_path, tmp_path / "cache") == first
    assert (first / "meta.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    check_tokenizer(first, tok)

    # the same size and a new text: a content change, not just a new timestamp
    original = source.read_text()
    source.write_text(original.replace("a", "b", 1))
    changed_source = quick_prepare(source, tok_path, tmp_path / "cache")
    assert changed_source != first

    source.write_text(original)
    other_tok = train_tokenizer([english_doc(rng) for _ in range(20)], vocab_size=300)
    other_path = save_tokenizer(other_tok, tmp_path / "other" / "tokenizer.json")
    changed_tok = quick_prepare(source, other_path, tmp_path / "cache")
    assert changed_tok not in (first, changed_source)
    assert quick_prepare(source, tok_path, tmp_path / "cache") == first  # back to the original
    assert quick_prepare(source, tok_path, tmp_path / "cache", seed=1) != first  # an option
    with pytest.raises(ValueError, match="another tokenizer") as error:
        check_tokenizer(first, other_tok)
    assert "\n" not in str(error.value)


def test_interrupted_prepare_leaves_nothing_that_looks_complete(tmp_path, tok_path,
                                                                 monkeypatch):
    rng = random.Random(6)
    source = write_jsonl(tmp_path / "d.jsonl", [english_doc(rng, 30) for _ in range(20)])

    def interrupt(tok):  # called near the end, after the token files are written
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "sentence_end_ids", interrupt)
        with pytest.raises(KeyboardInterrupt):
            quick_prepare(source, tok_path, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="prepare the data first"):
        load_meta(tmp_path / "cache" / "anything")
    prepared = quick_prepare(source, tok_path, tmp_path / "cache")
    assert load_meta(prepared)["splits"]["train"]["documents"] > 0


# Samples


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tok_path):
    rng = random.Random(7)
    texts = ([english_doc(rng, rng.randrange(5, 60)) for _ in range(60)]
             + [chinese_doc(rng, rng.randrange(20, 300)) for _ in range(60)])
    folder = tmp_path_factory.mktemp("prepared")
    return quick_prepare(write_jsonl(folder / "d.jsonl", texts), tok_path, folder)


def test_packed_windows_cover_every_token_once(prepared):
    tokens, _ = open_split(prepared, "train")
    tokens = torch.tensor(tokens.astype(np.int64))
    ds = PretrainDataset(prepared, "train", max_seq_len=32)
    assert len(ds) == math.ceil((len(tokens) - 1) / 32)
    targets = []
    for i in range(len(ds)):
        x, y, mask = ds[i]
        assert x.dtype == y.dtype == torch.int64 and mask.dtype == torch.float32
        assert x.shape == y.shape == mask.shape == (32,)
        n = int(mask.sum())
        assert torch.equal(x[:n], tokens[i * 32:i * 32 + n])
        assert torch.equal(y[:n], tokens[i * 32 + 1:i * 32 + 1 + n])
        assert (y[n:] == PAD_ID).all() and (mask[:n] == 1).all()
        targets.append(y[:n])
    assert torch.equal(torch.cat(targets), tokens[1:])  # each token after the first, once
    assert ds.padding_share == pytest.approx(1 - (len(tokens) - 1) / (len(ds) * 32))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_padded_samples_give_one_document_per_sample(prepared, tok):
    """The benchmark's MiniMind-style padded loader (scripts/bench_data.py)."""
    tokens, starts = open_split(prepared, "train")
    documents = [tokens[starts[i]:starts[i + 1]].tolist() for i in range(len(starts) - 1)]
    ds = PaddedDataset(prepared, "train", max_seq_len=64)
    assert any(len(d) > 65 for d in documents)  # some documents need splitting
    sentence_ends = {i for i in range(tok.get_vocab_size())
                     if tok.decode([i]).endswith((".", "。", "\n"))} | {EOS_ID}
    pieces = []
    for i in range(len(ds)):
        x, y, mask = ds[i]
        n = int(mask.sum()) + 1
        piece = x[:1].tolist() + y[:n - 1].tolist()
        assert (x[n:] == PAD_ID).all() and (mask[n - 1:] == 0).all()
        pieces.append(piece)
    # the pieces of each document, in order, are the document: nothing lost, nothing mixed
    rebuilt, k = [], 0
    for doc in documents:
        parts = []
        while sum(map(len, parts)) < len(doc):
            parts.append(pieces[k])
            k += 1
        assert sum(parts, []) == doc
        for part in parts[:-1]:  # cut after a sentence end, unless a sentence fills a window
            assert part[-1] in sentence_ends or len(part) >= 64
        rebuilt.append(parts)
    assert k == len(pieces)
    # padding share: the share of positions whose loss mask is 0
    masks = torch.stack([ds[i][2] for i in range(len(ds))])
    assert ds.padding_share == pytest.approx(1 - masks.mean().item())
    assert ds.padding_share > PretrainDataset(prepared, "train", 64).padding_share
    # the report's figure, from document lengths alone, is the least padding can cost
    least = pipeline.padding_share(np.diff(starts), 64)
    assert PretrainDataset(prepared, "train", 64).padding_share < least <= ds.padding_share


def test_padding_share_from_document_lengths_by_hand():
    # max_seq_len 4 (samples of 5 tokens): a 3-token document is 1 sample predicting 2 of 4
    # positions; a 12-token one is 3 samples (5 + 5 + 2 tokens) predicting 4 + 4 + 1
    assert pipeline.padding_share([3], 4) == pytest.approx(1 - 2 / 4)
    assert pipeline.padding_share([3, 12], 4) == pytest.approx(1 - (2 + 9) / (4 * 4))
    assert pipeline.padding_share([], 4) == 0.0


def test_dataset_pickles_without_its_tokens(prepared):
    ds = PretrainDataset(prepared, "train", max_seq_len=16)
    first = ds[0]
    payload = pickle.dumps(ds)
    assert len(payload) < 2_000  # the memory map is not copied into the pickle
    clone = pickle.loads(payload)
    assert all(torch.equal(a, b) for a, b in zip(clone[0], first))
    assert clone.vocab_size == load_meta(prepared)["vocab_size"] == 400
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    x, y, mask = next(iter(loader))
    assert x.shape == (4, 16) and torch.equal(x[0], first[0])


def test_missing_split_is_an_error(prepared):
    with pytest.raises(ValueError, match="no split 'test'"):
        PretrainDataset(prepared, "test")


# Sharding


def test_shards_are_disjoint_equal_and_cover_the_epoch():
    shards = [list(ShardedSampler(103, rank=r, world_size=4, seed=1)) for r in range(4)]
    assert [len(s) for s in shards] == [25] * 4
    assert [len(ShardedSampler(103, rank=r, world_size=4)) for r in range(4)] == [25] * 4
    seen = sum(shards, [])
    assert len(set(seen)) == 100 and set(seen) <= set(range(103))  # 3 left out: 103 % 4
    whole = list(ShardedSampler(103, seed=1))
    assert sorted(whole) == list(range(103))
    assert set(seen) == set(whole[:100])


def test_shuffle_is_fixed_by_seed_and_epoch():
    def order(seed, epoch):
        return list(ShardedSampler(50, seed=seed, epoch=epoch))

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert order(0, 0) != list(range(50))


def test_resume_with_another_world_size_continues_exactly():
    whole = list(ShardedSampler(100, seed=3, epoch=2))
    # 2 ranks take 7 samples each, then the run resumes on 3 ranks at start = 14
    before = [list(ShardedSampler(100, r, 2, seed=3, epoch=2))[:7] for r in range(2)]
    after = [list(ShardedSampler(100, r, 3, seed=3, epoch=2, start=14)) for r in range(3)]
    assert sorted(sum(before, [])) == sorted(whole[:14])
    assert [len(a) for a in after] == [28] * 3  # (100 - 14) // 3, one sample left out
    assert sorted(sum(after, [])) == sorted(whole[14:98])
    assert len(ShardedSampler(100, 0, 3, start=200)) == 0
    with pytest.raises(ValueError, match="rank"):
        ShardedSampler(10, rank=2, world_size=2)


# Command line


def test_cli_prints_the_report(tmp_path, tok_path, capsys):
    rng = random.Random(8)
    texts = [english_doc(rng, 30) for _ in range(30)]
    source = write_jsonl(tmp_path / "d.jsonl", texts + texts[:5] + ["tiny"])
    dataset.main(["--data_path", str(source), "--tokenizer", str(tok_path), "--data_dir",
                  str(tmp_path / "out"), "--prep_workers", "0", "--quiet", "--max_seq_len", "64"])
    out = capsys.readouterr().out
    for rule in ("control_chars", "space_runs", "symbol_runs", "too_short", "mostly_symbols"):
        assert rule in out
    assert re.search(r"exact duplicates\s+5", out) and re.search(r"too_short\s+1", out)
    assert re.search(r"padding\s+\d+\.\d% .* max_seq_len 64", out)


def test_cli_refuses_weights_that_do_not_match_the_sources(capsys):
    with pytest.raises(SystemExit):
        dataset.parse_args(["--data_path", "a.jsonl", "b.jsonl", "--weights", "1"])
    assert "--weights: 1 weights for 2 --data_path entries" in capsys.readouterr().err


def test_verbose_prepare_prints_the_report_also_when_reusing(tmp_path, tok_path, capsys):
    source = write_jsonl(tmp_path / "d.jsonl", ["a document that is long enough to keep"] * 2)
    for _ in range(2):
        prepare(source, tok_path, tmp_path, num_workers=0, verbose=True)
        out = capsys.readouterr()
        assert re.search(r"exact duplicates\s+1", out.out)


def test_cli_errors_are_one_line(tmp_path, tok_path):
    with pytest.raises(SystemExit) as exit_info:
        dataset.main(["--data_path", str(tmp_path / "none.jsonl"), "--tokenizer", str(tok_path),
                      "--data_dir", str(tmp_path), "--quiet"])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "none.jsonl" in message and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        dataset.main(["--data_path", "builtin", "--tokenizer", str(tmp_path / "no_tok.json"),
                      "--data_dir", str(tmp_path), "--quiet"])
    assert "no_tok.json" in str(exit_info.value.code)


def test_character_classes_agree_with_the_regex_definitions():
    """The numpy lookups stand in for regex passes: alphanumerics as [^\\W_], whitespace as
    str.split() sees it."""
    rng = random.Random(0)
    alphabet = list("abcXYZ 019_-.,!?\t\n") + ["中", "文", "の", "한", "é", "İ", "ß", "😀",
                                                  "𠀀", "\u3000", "\u00a0", "٣", "²", "==",
                                                  "・", "゛", "\ud800"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        cp = corpus.code_points(text)
        alnum = corpus.char_class(cp, corpus.IS_ALNUM_BMP, str.isalnum)
        space = corpus.char_class(cp, corpus.IS_SPACE_BMP, str.isspace)
        assert alnum.sum() == len(re.sub(r"[\W_]+", "", text))
        assert len(cp) - space.sum() == len("".join(text.split()))
