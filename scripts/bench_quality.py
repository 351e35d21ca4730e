"""Figures of the data levers (data_quality.py, data_order.py) on text from installed
packages and on planted junk; nothing is downloaded.

    python scripts/bench_quality.py --tasks scorers --zh_poetry package/dist
    python scripts/bench_quality.py --tasks similarity --zh_poetry package/dist
    python scripts/bench_quality.py --tasks cost --big_gb 1.1

"scorers": each scorer kind is trained on clean text (the reference) against a raw corpus
of other clean text mixed with planted junk (JUNK_KINDS), then scores held-out clean and
junk documents it has not seen. Printed per kind: the precision and recall of the junk it
flags when the cut drops as many documents as there is junk, the recall per junk kind, the
ranking quality (AUC: the chance that a clean document outscores a junk one), training
seconds and documents scored per second. English: Python's documentation (the built-in
corpus) in paragraphs; Chinese: poems of chinese-poetry 2.0.1 (npm, MIT; --zh_poetry, as
scripts/speedrun.py takes it).
"similarity": in-context order (data_order.py) with neighbours found by MinHash, as
preparation does, against neighbours found by a small language model's embeddings, on
documents whose relatedness is known: the poems of one poet (their titles and names
removed), and the pieces of one page of Python's documentation. Printed: the share of
documents followed by a related one, the mean Jaccard similarity of consecutive documents,
and the seconds each took.
"cost": dataset.py with each lever on scripts/bench_data.py's generated file of --train_mb
(and --big_gb): documents per second and peak memory.
"""

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import builtin_corpus, clean_text  # noqa: E402
from junk import JUNK_KINDS, junk  # noqa: E402
from data_order import NEIGHBOURS, greedy_path, in_context_order  # noqa: E402
from data_quality import KINDS, padded, save_scorer, score, train_scorer  # noqa: E402
from dedup import jaccard_plain, minhash, shingles, shingles_plain  # noqa: E402
from tokenizer import SPECIAL_TOKENS, save_tokenizer, train_tokenizer  # noqa: E402

def paragraphs(texts, min_chars=200, max_chars=1200):
    """Texts cut at blank lines into pieces of min_chars to max_chars."""
    out = []
    for text in texts:
        piece = ""
        for para in text.split("\n\n"):
            piece = f"{piece}\n\n{para}" if piece else para
            if len(piece) >= min_chars:
                out.append(piece[:max_chars])
                piece = ""
    return out


def cleaned(texts):
    """The texts as preparation cleans them (the scorer never sees the others)."""
    out = [clean_text(t, markers=SPECIAL_TOKENS[1:])[0] for t in texts]
    return [t for t in out if t is not None]


def poems(dist_dir, n):
    from speedrun import write_poetry_jsonl
    path = Path("/tmp") / f"bench_quality_poems_{n}.jsonl"
    write_poetry_jsonl(dist_dir, path, n)
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def auc(clean_scores, junk_scores):
    """P(a clean document outscores a junk one), ties counting half (Mann-Whitney)."""
    both = np.concatenate([clean_scores, junk_scores])
    ranks = np.argsort(np.argsort(both, kind="stable"), kind="stable") + 1.0
    for value in np.unique(both):  # average ranks of ties
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    n, m = len(clean_scores), len(junk_scores)
    return (ranks[:n].sum() - n * (n + 1) / 2) / (n * m)


def measure_scorers(args, lang, clean):
    rng = random.Random(0)
    rng.shuffle(clean)
    n = len(clean)
    reference, raw_clean, test_clean = clean[:2 * n // 5], clean[2 * n // 5:4 * n // 5], \
        clean[4 * n // 5:]
    per_kind_raw = len(raw_clean) * 3 // 7 // len(JUNK_KINDS)  # junk: 30% of the raw corpus
    per_kind_test = len(test_clean) * 3 // 7 // len(JUNK_KINDS)
    raw_junk = {k: cleaned([junk(k, raw_clean, rng, lang) for _ in range(per_kind_raw)])
                for k in JUNK_KINDS}
    test_junk = {k: cleaned([junk(k, test_clean, rng, lang) for _ in range(per_kind_test)])
                 for k in JUNK_KINDS}
    raw = raw_clean + [t for k in JUNK_KINDS for t in raw_junk[k]]
    tok = train_tokenizer(reference + raw, vocab_size=args.vocab_size)
    save_tokenizer(tok, Path(args.work_dir) / f"tok_{lang}" / "tokenizer.json")
    junk_test = [t for k in JUNK_KINDS for t in test_junk[k]]
    kinds = np.concatenate([np.full(len(test_junk[k]), i) for i, k in enumerate(JUNK_KINDS)])
    print(f"\n{lang}: reference {len(reference):,}, raw {len(raw):,} "
          f"({sum(map(len, raw_junk.values())):,} junk), test {len(test_clean):,} clean + "
          f"{len(junk_test):,} junk (after the counted cleaning rules)")
    print("| scorer | AUC | precision | recall | " + " | ".join(JUNK_KINDS) +
          " | training s | scored docs/s |")
    print("|---" * (6 + len(JUNK_KINDS)) + "|")
    for kind in KINDS:
        start = time.time()
        model = train_scorer(kind, tok, reference, raw, steps=args.steps, seed=0)
        trained = time.time() - start
        save_scorer(model, kind, tok, Path(args.work_dir) / f"{lang}_{kind}.pt")
        start = time.time()
        s_clean, s_junk = score(model, tok, test_clean), score(model, tok, junk_test)
        rate = (len(test_clean) + len(junk_test)) / (time.time() - start)
        cut = np.sort(np.concatenate([s_clean, s_junk]))[len(junk_test) - 1]
        flagged_junk, flagged_clean = s_junk <= cut, s_clean <= cut
        precision = flagged_junk.sum() / max(flagged_junk.sum() + flagged_clean.sum(), 1)
        recall = flagged_junk.mean()
        per_kind = [flagged_junk[kinds == i].mean() for i in range(len(JUNK_KINDS))]
        print(f"| {kind} | {auc(s_clean, s_junk):.3f} | {precision:.3f} | {recall:.3f} | " +
              " | ".join(f"{r:.2f}" for r in per_kind) + f" | {trained:.0f} | {rate:,.0f} |")


def embedding_neighbours(model, tok, texts, k=NEIGHBOURS, batch_size=64):
    """(n, k) ids of each text's k nearest others by the cosine of its mean final hidden
    state in the language model (exact search, a block of rows at a time)."""
    states = []
    hook = model.norm.register_forward_hook(lambda module, inputs, out: states.append(out))
    rows = [e.ids for e in tok.encode_batch_fast(list(texts), add_special_tokens=False)]
    vectors = []
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            ids, real = padded(rows[lo:lo + batch_size])
            model(ids)
            h = states.pop()
            mean = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
            vectors.append(torch.nn.functional.normalize(mean, dim=1))
    hook.remove()
    vectors = torch.cat(vectors)
    k = min(k, len(texts) - 1)
    ids = torch.empty(len(texts), k, dtype=torch.long)
    for lo in range(0, len(texts), 1024):
        cosine = vectors[lo:lo + 1024] @ vectors.T
        cosine[torch.arange(len(cosine)), torch.arange(lo, lo + len(cosine))] = -2  # not itself
        ids[lo:lo + 1024] = cosine.topk(k, dim=1).indices
    return ids.numpy()


def measure_similarity(args, lang, texts, labels):
    """Consecutive documents of each order: the share with the same label, and their mean
    Jaccard similarity of character shingles (over up to 5,000 consecutive pairs). The
    documents are shuffled first: a path's fresh starts follow the reading order, which
    would otherwise carry the labels' grouping in."""
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(texts))
    texts, labels = [texts[i] for i in shuffled], np.asarray(labels)[shuffled]
    tok = train_tokenizer(texts, vocab_size=args.vocab_size)
    plain = [set(shingles_plain(t)) for t in texts]
    pairs = rng.choice(len(texts) - 1, min(5000, len(texts) - 1), replace=False)
    related = np.bincount(labels)[labels] > 1  # a document with a related one at all
    print(f"\n{lang}: {len(texts):,} documents, {len(set(labels.tolist())):,} groups; "
          f"{related.mean():.1%} have a related document")
    print("| order | related next | Jaccard next | neighbour search s | documents/s |")
    print("|---|---|---|---|---|")

    def row(name, order, seconds):
        a, b = order[:-1], order[1:]
        same = (labels[a] == labels[b]).mean()
        jac = np.mean([jaccard_plain(plain[a[i]], plain[b[i]]) for i in pairs])
        rate = f"{len(texts) / seconds:,.0f}" if seconds else "-"
        print(f"| {name} | {same:.3f} | {jac:.4f} | {seconds:.0f} | {rate} |")

    row("random", rng.permutation(len(texts)), 0)
    start = time.time()
    sketches = minhash([shingles(t) for t in texts]).astype(np.uint16)
    row("similar: MinHash (signatures included)", in_context_order(sketches),
        time.time() - start)
    start = time.time()
    model = train_scorer("perplexity", tok, texts, [], steps=args.steps, seed=0)
    trained = time.time() - start
    start = time.time()
    row(f"similar: LM embeddings (+{trained:.0f} s to train it)",
        greedy_path(embedding_neighbours(model, tok, texts)), time.time() - start)


def similarity_sets(args):
    """(lang, texts, labels): English pages' pieces, and Chinese poems by poet."""
    pieces = [(page, piece) for page, text in enumerate(builtin_corpus())
              for piece in paragraphs([text])]
    yield "en", [piece for _, piece in pieces], [page for page, _ in pieces]
    if args.zh_poetry:
        bodies, poets, labels = [], {}, []
        for poem in poems(args.zh_poetry, args.sim_docs):
            title, poet, *lines = poem.split("\n")
            if lines:
                bodies.append("\n".join(lines))
                labels.append(poets.setdefault(poet, len(poets)))
        yield "zh", bodies, labels


def measure_cost(args):
    """dataset.py with each lever on a generated file: documents per second and peak
    memory. The scorers are trained briefly on the file itself: their cost, not their
    judgement, is measured."""
    from bench_data import run_with_peak_memory, write_corpus
    from corpus import iter_texts
    work = Path(args.work_dir) / "cost"
    work.mkdir(parents=True, exist_ok=True)
    files = [write_corpus(work / "small.jsonl", int(args.train_mb * 1e6), seed=1)]
    if args.big_gb > 0:
        files.append(write_corpus(work / "big.jsonl", int(args.big_gb * 1e9), seed=2))
    texts = [t for _, t in zip(range(4000), iter_texts(files[0]))]
    tok = train_tokenizer(texts, vocab_size=6400)
    tok_path = save_tokenizer(tok, work / "tok" / "tokenizer.json")
    scorers = {kind: save_scorer(train_scorer(kind, tok, texts[:2000], texts[2000:],
                                              steps=20), kind, tok, work / f"{kind}.pt")
               for kind in ("ngrams", "encoder")}
    levers = {"none": [], "quality (ngrams)": ["--quality_model", str(scorers["ngrams"]),
                                               "--quality_keep", "0.7"],
              "quality (encoder)": ["--quality_model", str(scorers["encoder"]),
                                    "--quality_keep", "0.7"],
              "similar": ["--order", "similar"],
              "curriculum (ngrams)": ["--quality_model", str(scorers["ngrams"]), "--order",
                                      "curriculum"]}
    dataset_py = Path(__file__).resolve().parent.parent / "dataset.py"
    for corpus in files:
        with open(corpus, "rb") as f:
            docs = sum(1 for _ in f)
        print(f"\n{corpus.stat().st_size / 1e6:,.0f} MB:")
        print("| lever | seconds | documents/s | peak memory (PSS, GB) |\n|---|---|---|---|")
        for name, flags in levers.items():
            if corpus != files[0] and not {name, name.split()[0]} & set(args.big_levers):
                continue
            out = work / "data"
            with open(work / "log.txt", "w") as log:
                wall, _, pss = run_with_peak_memory(
                    [sys.executable, str(dataset_py), "--data_path", str(corpus), "--tokenizer",
                     str(tok_path), "--data_dir", str(out), "--quiet", *flags], stdout=log)
            print(f"| {name} | {wall:.0f} | {docs / wall:,.0f} | {pss / 1e9:.2f} |")
            shutil.rmtree(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["scorers"],
                        choices=["scorers", "similarity", "cost"])
    parser.add_argument("--train_mb", type=float, default=50, help="cost: the small file")
    parser.add_argument("--big_gb", type=float, default=0, help="cost: a big file too")
    parser.add_argument("--big_levers", nargs="+", default=["none", "quality", "similar",
                                                            "curriculum"],
                        help="cost: the levers measured on the big file too (a name or "
                        "its first word)")
    parser.add_argument("--zh_poetry", default=None,
                        help="chinese-poetry's package/dist folder; without it, English only")
    parser.add_argument("--zh_docs", type=int, default=6000)
    parser.add_argument("--sim_docs", type=int, default=20000, help="similarity: poems")
    parser.add_argument("--steps", type=int, default=300, help="training steps of a scorer")
    parser.add_argument("--vocab_size", type=int, default=4000)
    parser.add_argument("--work_dir", default="/tmp/myllm_bench_quality")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    if "scorers" in args.tasks:
        measure_scorers(args, "en", cleaned(paragraphs(builtin_corpus())))
        if args.zh_poetry:
            measure_scorers(args, "zh", cleaned(poems(args.zh_poetry, args.zh_docs)))
    if "similarity" in args.tasks:
        for lang, texts, labels in similarity_sets(args):
            measure_similarity(args, lang, texts, labels)
    if "cost" in args.tasks:
        measure_cost(args)


if __name__ == "__main__":
    main()
