"""Which levers give a better model for the same compute: one fixed shape trained for a fixed
number of steps with train_pretrain.py's own code, once per variant and seed, judged by the
held-out bits per byte that the run logs every --eval_interval. Prints a markdown table:
the final bpb, and the steps and training seconds to reach --target_bpb (interpolated
linearly between two evaluations), each as the mean ± half the range over the seeds.

    python scripts/speedrun.py --variant base="" muon="--optimizer muon" lr="--learning_rate 1e-3"
    python scripts/speedrun.py --corpus zh --zh_poetry package/dist  # see below

Corpora: en, the built-in corpus (Python's own documentation, train_pretrain.py's default);
zh, poems of chinese-poetry 2.0.1 (npm, MIT: `npm pack chinese-poetry@2.0.1`, untar, pass
package/dist), one poem a document or (--zh_page_chars) a page of one poet's poems, written
as MiniMind jsonl ({"text": ...} a line). Both are prepared once per --work_dir; dataset.py
carves the validation split by document (a seeded hash of each document falls below
--val_fraction), so no document is in both splits. Every finished run leaves speedrun.json
in its folder.
Seconds are training time only (the log's tokens per second leave evaluation out), on
whatever else the machine is doing: compare steps first.

Variants may carry the data levers (--quality_model, --quality_keep, --quality_threshold,
--order): each is then trained on data prepared with them, whose validation split is the
same documents. --quality_model auto trains a scorer once per corpus (reference_scorer), and
--zh_junk mixes generated junk into the poems for it to find:

    python scripts/speedrun.py --corpus zh --zh_poetry package/dist --zh_junk 0.3 \
        --variant base="" keep70="--quality_model auto --quality_keep 0.7" \
        similar="--order similar" curriculum="--quality_model auto --order curriculum"

--minimind DIR adds a row for MiniMind 2025's own trainer/train_pretrain.py (a checkout of
github.com/jingyaogong/minimind at commit c65335b; it needs transformers) on the same training
split and shape, one epoch; its weights are scored by the same evaluator, its final bpb is
the target and its steps the budget. It runs on the CPU (its --device cpu) in fp32, as
MiniMind does on any CPU, and saves fp16 weights, which are scored as saved. A finished run
is reused by a later call whose resolved flags (defaults included) are the same.
"""

import argparse
import glob
import importlib.util
import json
import math
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_pretrain  # noqa: E402
from checkpoint import load_model, save_config, save_torch  # noqa: E402
from data_quality import KINDS, save_scorer, train_scorer  # noqa: E402
from dataset import PretrainDataset, open_split  # noqa: E402
from prepare import load_meta, prepare  # noqa: E402
from evaluator import evaluate  # noqa: E402
from scripts.import_hf import minimind_to_myllm  # noqa: E402
from tokenizer import (load_tokenizer, read_sample, save_tokenizer, token_byte_counts,  # noqa: E402
                       train_tokenizer)

SHAPE = "--dim 192 --n_layers 4 --accumulation_steps 1"  # QUICK_FLAGS' model


def write_poetry_jsonl(dist_dir, path, max_docs, page_chars=0):
    """Tang shi and Song ci of chinese-poetry as MiniMind jsonl: title, author, then the
    lines of each poem. One poem a document, or with page_chars, a page of one poet's poems
    in file order, closed once it holds page_chars characters or the poet changes (a longer
    document, as most pretraining text is). The first max_docs, in file order, so that every
    call agrees."""
    files = sorted(glob.glob(f"{dist_dir}/quantangshi/poet.tang.*.json")) + sorted(
        glob.glob(f"{dist_dir}/songci/ci.song.*.json"))
    if not files:
        raise SystemExit(f"--zh_poetry {dist_dir}: no quantangshi/ or songci/ inside; pass the "
                         "package/dist folder of `npm pack chinese-poetry@2.0.1`, untarred")
    docs, page, author = [], [], None
    for file in files:
        for poem in json.loads(Path(file).read_text(encoding="utf-8")):
            title = poem.get("title") or poem.get("rhythmic") or ""
            if page and (poem.get("author") != author or not page_chars):
                docs.append("\n\n".join(page))  # a new poet, or one poem a document
                page = []
            author = poem.get("author")
            page.append("\n".join([title, poem.get("author", ""), *poem["paragraphs"]]))
            if sum(map(len, page)) >= page_chars > 0:
                docs.append("\n\n".join(page))
                page = []
            if len(docs) == max_docs:
                break
        if len(docs) == max_docs:
            break
    if page and len(docs) < max_docs:
        docs.append("\n\n".join(page))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                    encoding="utf-8")
    return path


def corpus_dir(args):
    """Where --corpus is prepared and its runs are kept: one folder per corpus."""
    name = "en" if args.corpus == "en" else f"zh-{args.zh_max_docs}-{args.zh_page_chars}" + (
        f"-junk{args.zh_junk}" if args.zh_junk else "")
    return Path(args.work_dir) / name


def corpus_sources(args):
    """The raw sources of --corpus (None: the built-in corpus), written once."""
    if args.corpus == "en":
        return None
    jsonl = corpus_dir(args) / "poems.jsonl"
    if not jsonl.exists():
        write_poetry_jsonl(args.zh_poetry, jsonl, args.zh_max_docs, args.zh_page_chars)
        if args.zh_junk > 0:
            add_junk(jsonl, args.zh_junk)
    return [str(jsonl)]


def add_junk(jsonl, fraction, seed=0):
    """Mix generated junk (scripts/junk.py's kinds, in equal parts) into a jsonl
    file, so that junk is `fraction` of its documents; each junk line is labelled
    {"junk": KIND} beside its text, which preparation ignores."""
    from junk import JUNK_KINDS, junk
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    clean = [json.loads(line)["text"] for line in lines]
    rng = random.Random(seed)
    n = round(len(clean) * fraction / (1 - fraction))
    kinds = [JUNK_KINDS[i % len(JUNK_KINDS)] for i in range(n)]
    lines += [json.dumps({"text": junk(k, clean, rng, "zh"), "junk": k}) for k in kinds]
    rng.shuffle(lines)
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")


def prepare_corpus(args, levers=None):
    """(tokenizer path, prepared data directory) of --corpus, made once in --work_dir;
    levers: a variant's data levers (prepare()'s quality_model, order, ...), which prepare
    a directory of their own with the same validation split."""
    root = corpus_dir(args)
    sources = corpus_sources(args)
    tok_path = root / "tokenizer.json"
    if not tok_path.exists():
        texts, _ = read_sample(sources, verbose=False)
        save_tokenizer(train_tokenizer(texts, args.vocab_size), tok_path)
    prepared = prepare(sources, tok_path, root / "data", val_fraction=args.val_fraction,
                       verbose=False, **(levers or {}))
    return tok_path, prepared


def reference_scorer(args, tok_path):
    """The quality scorer of --corpus (data_quality.py, --quality_kind), trained once on
    text set apart as the reference against the corpus itself: for zh, the poems that follow
    the corpus's in chinese-poetry's files (none of them in it); for en, Python's language
    reference (pydoc's topics, the first part of the built-in corpus)."""
    path = corpus_dir(args) / f"quality_{args.quality_kind}.pt"
    if path.exists():
        return path
    sources = corpus_sources(args)
    if args.corpus == "zh":
        more = corpus_dir(args) / "more_poems.jsonl"
        write_poetry_jsonl(args.zh_poetry, more, args.zh_max_docs + 5000, args.zh_page_chars)
        reference = [json.loads(line)["text"] for line in
                     more.read_text(encoding="utf-8").splitlines()[args.zh_max_docs:]]
        if len(reference) < 10:
            raise SystemExit(f"--quality_model auto: chinese-poetry has {len(reference)} poems "
                             f"beyond the corpus's {args.zh_max_docs}; lower --zh_max_docs")
    else:
        import pydoc_data.topics
        reference = list(pydoc_data.topics.topics.values())
    raw, _ = read_sample(sources, verbose=False)
    tok = load_tokenizer(tok_path)
    model = train_scorer(args.quality_kind, tok, reference, raw, steps=args.quality_steps)
    return save_scorer(model, args.quality_kind, tok, path)


def clean_heldout(args, tok_path):
    """With --zh_junk: a held-out set of clean text that no filter touched and no run or
    scorer saw, the 1,000 poems that follow the scorer's reference in chinese-poetry's
    files, prepared with the corpus's tokenizer; None otherwise. (The validation split
    holds junk in the corpus's share, which a filtered run is not meant to model.)"""
    if args.corpus != "zh" or not args.zh_junk:
        return None
    root = corpus_dir(args)
    extra = root / "heldout_source.jsonl"
    if not (root / "heldout.jsonl").exists():
        write_poetry_jsonl(args.zh_poetry, extra, args.zh_max_docs + 6000, args.zh_page_chars)
        lines = extra.read_text(encoding="utf-8").splitlines()[args.zh_max_docs + 5000:]
        (root / "heldout.jsonl").write_text("".join(line + "\n" for line in lines),
                                            encoding="utf-8")
    if len((root / "heldout.jsonl").read_text(encoding="utf-8").splitlines()) < 10:
        print("no clean held-out set: chinese-poetry has too few poems beyond the corpus and "
              "the reference")
        return None
    return prepare([str(root / "heldout.jsonl")], tok_path, root / "heldout", val_fraction=0.9,
                   verbose=False)


def add_clean_bpb(result, args, tok_path, heldout):
    """result["clean_bpb"]: its final weights' bits per byte on clean_heldout."""
    if heldout is not None and "clean_bpb" not in result:
        out_dir = Path(result["argv"][result["argv"].index("--out_dir") + 1])
        weights = next(p for p in out_dir.glob("pretrain_*.pth") if "resume" not in p.name)
        result["clean_bpb"] = heldout_bpb(weights, tok_path, heldout, args.max_seq_len,
                                          args.batch_size)
        (out_dir / "speedrun.json").write_text(json.dumps(result))
    return result


def split_levers(flags):
    """(the data levers among a variant's flags, as prepare() takes them; the other flags):
    the levers change the data, which the variant gets prepared for it."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--quality_model", "--order"):
        parser.add_argument(flag)
    for flag in ("--quality_keep", "--quality_threshold"):
        parser.add_argument(flag, type=float)
    levers, rest = parser.parse_known_args(shlex.split(flags))
    return {k: v for k, v in vars(levers).items() if v is not None}, shlex.join(rest)


def train_seconds(records):
    """{step: training seconds so far} at every train record: each record's tokens over its
    tokens per second is the time of the steps since the one before."""
    clock, seconds, tokens = {}, 0.0, 0
    for r in records:
        if r["kind"] == "train":
            seconds += (r["tokens"] - tokens) / r["tokens_per_sec"]
            tokens = r["tokens"]
            clock[r["step"]] = seconds
    return clock


def run_one(args, name, flags, seed, tok_path, prepared, train_flags=None):
    """One training run; returns {"curve": [[step, seconds, val_bpb], ...], ...}.
    train_flags: the variant's flags less its data levers (split_levers)."""
    out_dir = corpus_dir(args) / f"{name}-seed{seed}"
    val_batches = math.ceil(len(PretrainDataset(prepared, "val", args.max_seq_len)) /
                            args.batch_size)  # all of the split: the same text for every seed
    argv = (shlex.split(args.shape) + [
        "--max_seq_len", str(args.max_seq_len), "--batch_size", str(args.batch_size),
        "--max_steps", str(args.max_steps), "--eval_interval", str(args.eval_interval),
        "--log_interval", str(args.eval_interval), "--save_interval", str(10**9),
        "--eval_iters", str(val_batches), "--seed", str(seed), "--data_path", str(prepared),
        "--tokenizer", str(tok_path), "--out_dir", str(out_dir), "--resume", "none",
        "--quiet"] + shlex.split(flags if train_flags is None else train_flags))
    done = out_dir / "speedrun.json"
    resolved = vars(train_pretrain.parse_args(argv))  # defaults included: they change
    if done.exists() and json.loads(done.read_text()).get("resolved") == resolved:
        return json.loads(done.read_text())  # this very run, finished by an earlier call
    summary = train_pretrain.main(argv)
    if summary["stopped_by"]:  # cut short: not a result to keep
        raise SystemExit(f"{name} seed {seed} stopped by {summary['stopped_by']}")
    log = Path(summary["log_path"])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    clock = train_seconds(records)
    curve = [[r["step"], clock[r["step"]], r["val_bpb"]] for r in records if r["kind"] == "val"]
    weights = summary["weights_path"]
    result = {"name": name, "flags": flags, "seed": seed, "argv": argv, "resolved": resolved,
              "curve": curve,
              "final_bpb": heldout_bpb(weights, tok_path, prepared, args.max_seq_len,
                                       args.batch_size)}
    done.write_text(json.dumps(result))
    return result


# MiniMind 2025's trainer/train_pretrain.py (commit c65335b, 2025-12-31), its recipe as shipped:
# AdamW at 5e-4 (torch's other defaults), a cosine from 5e-4 to 5e-5 without warmup, each
# document padded to max_seq_len and truncated there. Only the shape and the data are ours.
MINIMIND_FLAGS = ("--epochs 1 --learning_rate 5e-4 --accumulation_steps 1 --device cpu "
                  "--num_workers 1")
STAND_INS = {  # MiniMind's dataset module imports these; it only reads a jsonl with them
    "datasets": "import json\n\ndef load_dataset(kind, data_files, split):\n"
                "    with open(data_files, encoding='utf-8') as f:\n"
                "        return [json.loads(line) for line in f if line.strip()]\n",
    "pandas": ""}


def heldout_bpb(weights, tok_path, prepared, max_seq_len, batch_size):
    """eval_model.py's bits per byte of a weights file on all of the validation split."""
    tok = load_tokenizer(tok_path)
    model = load_model(weights, tok.get_vocab_size())
    val = PretrainDataset(prepared, "val", max_seq_len)
    loader = torch.utils.data.DataLoader(val, batch_size=batch_size)
    return evaluate(model, loader, token_byte_counts(tok))["bits_per_byte"]


def minimind_weights(path):
    """MiniMind's weights file (its trainer/ layout) as a MyLLM one beside it, with its config
    file, converted by import_hf.minimind_to_myllm (the same logits to 1e-6)."""
    state, config = minimind_to_myllm(torch.load(path, map_location="cpu", weights_only=True))
    out = path.with_name(f"myllm_{path.name}")
    save_torch(state, out)
    save_config(config, out)
    return out


def minimind_jsonl(tok_path, prepared, path, seed):
    """The training split, decoded back to text, as MiniMind jsonl (<s>text</s> a line), in
    an order shuffled by seed: MiniMind seeds its weights and data order with 42 always, so
    the order of its file is what a seed can change."""
    tok = load_tokenizer(tok_path)
    tokens, starts = open_split(prepared, "train")
    docs = [tok.decode(tokens[a:b].tolist(), skip_special_tokens=True)
            for a, b in zip(starts[:-1], starts[1:])]
    random.Random(seed).shuffle(docs)
    path.write_text("".join(json.dumps({"text": f"<s>{d}</s>"}, ensure_ascii=False) + "\n"
                            for d in docs), encoding="utf-8")


def run_minimind(args, seed, tok_path, prepared):
    """One epoch of MiniMind's own trainer on the training split, in a copy of its model/,
    dataset/ and trainer/ with our tokenizer in model/; its log lines time the steps."""
    out_dir = corpus_dir(args) / f"minimind-seed{seed}"
    shape = train_pretrain.parse_args(shlex.split(args.shape))
    steps = math.ceil(load_meta(prepared)["splits"]["train"]["documents"] / args.batch_size)
    argv = ["train_pretrain.py", *shlex.split(MINIMIND_FLAGS),
            "--hidden_size", str(shape.dim), "--num_hidden_layers", str(shape.n_layers),
            "--batch_size", str(args.batch_size), "--max_seq_len", str(args.max_seq_len),
            "--data_path", "../train.jsonl", "--save_dir", "../out",
            "--log_interval", str(args.eval_interval), "--save_interval", str(steps)]
    done = out_dir / "speedrun.json"
    if done.exists() and json.loads(done.read_text())["argv"] == argv:
        return json.loads(done.read_text())  # this very run, finished by an earlier call
    for sub in ("model", "dataset", "trainer"):
        shutil.copytree(Path(args.minimind) / sub, out_dir / sub, dirs_exist_ok=True)
    save_tokenizer(load_tokenizer(tok_path), out_dir / "model")
    for name, text in STAND_INS.items():
        if importlib.util.find_spec(name) is None:
            (out_dir / f"{name}.py").write_text(text)
    minimind_jsonl(tok_path, prepared, out_dir / "train.jsonl", seed)
    # unbuffered: each log line must reach us when it is printed, or the clock means nothing
    env = {**os.environ, "PYTHONPATH": str(out_dir), "PYTHONUNBUFFERED": "1"}
    clock = {}  # step: when its log line arrived
    with subprocess.Popen([sys.executable, *argv], cwd=out_dir / "trainer", env=env,
                          stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            logged = re.match(r"Epoch:\[\d+/\d+\]\((\d+)/\d+\)", line)
            if logged:
                clock[int(logged.group(1))] = time.perf_counter()
    if proc.returncode or len(clock) < 2:
        raise SystemExit(f"MiniMind's train_pretrain.py failed in {out_dir / 'trainer'}")
    (first, t0), (last, t1) = min(clock.items()), max(clock.items())
    seconds = (t1 - t0) / (last - first) * steps  # its steady rate, start-up left out
    weights = minimind_weights(out_dir / "out" / f"pretrain_{shape.dim}.pth")
    bpb = heldout_bpb(weights, tok_path, prepared, args.max_seq_len, args.batch_size)
    result = {"name": "minimind", "flags": MINIMIND_FLAGS, "seed": seed, "argv": argv,
              "curve": [[steps, seconds, bpb]], "final_bpb": bpb}
    done.write_text(json.dumps(result))
    return result


def time_to_target(curve, target):
    """(steps, seconds) where the bpb first reaches target, linear between evaluations;
    None if it never does."""
    previous = None
    for step, seconds, bpb in curve:
        if bpb <= target:
            if previous is None:
                return step, seconds
            step0, seconds0, bpb0 = previous
            frac = (bpb0 - target) / (bpb0 - bpb)
            return step0 + frac * (step - step0), seconds0 + frac * (seconds - seconds0)
        previous = step, seconds, bpb
    return None


def mean_spread(values, fmt):
    """'mean ± half the range', or '-' when a value is missing (a target not reached)."""
    if not values or any(v is None for v in values):
        return "not reached" if values else "-"
    half_range = (max(values) - min(values)) / 2
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(half_range)}"


def table(results, target):
    """The markdown table: one row per variant, its runs over the seeds."""
    clean = all("clean_bpb" in r for runs in results.values() for r in runs)
    rows = ["| variant | flags | final bpb | steps to target | seconds to target |" +
            (" clean held-out bpb |" if clean else ""),
            "|---|---|---|---|---|" + ("---|" if clean else "")]
    for name, runs in results.items():
        # MiniMind's row is the target: the mean of its seeds, reached by each at its end
        reached = [time_to_target(r["curve"], target) or
                   (tuple(r["curve"][-1][:2]) if name == "minimind" else None) for r in runs]
        steps = [None if x is None else x[0] for x in reached]
        seconds = [None if x is None else x[1] for x in reached]
        finals = [r["final_bpb"] for r in runs]
        rows.append(f"| {name} | `{runs[0]['flags'] or '(defaults)'}` | "
                    f"{mean_spread(finals, '{:.4f}')} | {mean_spread(steps, '{:.0f}')} | "
                    f"{mean_spread(seconds, '{:.0f}')} |" +
                    (f" {mean_spread([r['clean_bpb'] for r in runs], '{:.4f}')} |" if clean
                     else ""))
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", nargs="+", default=['base=""'],
                   help='NAME="train_pretrain.py flags" each, e.g. muon="--optimizer muon"')
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--corpus", choices=["en", "zh"], default="en")
    p.add_argument("--zh_poetry", help="chinese-poetry's package/dist folder (--corpus zh)")
    p.add_argument("--zh_max_docs", type=int, default=60000, help="documents to take")
    p.add_argument("--zh_page_chars", type=int, default=0,
                   help="one document: a page of one poet's consecutive poems, closed once "
                        "it reaches this many characters or the poet changes (0: one poem)")
    p.add_argument("--zh_junk", type=float, default=0.0,
                   help="the share of generated junk documents mixed into the poems "
                        "(scripts/junk.py's kinds), for the quality levers")
    p.add_argument("--quality_kind", default="ngrams", choices=KINDS,
                   help="the scorer that a variant's --quality_model auto trains")
    p.add_argument("--quality_steps", type=int, default=300, help="its training steps")
    p.add_argument("--shape", default=SHAPE, help="train_pretrain.py flags of the model")
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_steps", type=int, default=None,
                   help="the budget, in optimizer steps (default 200, or with --minimind the "
                        "steps of its epoch: the same positions seen)")
    p.add_argument("--eval_interval", type=int, default=25, help="optimizer steps")
    p.add_argument("--val_fraction", type=float, default=0.05, help="documents held out")
    p.add_argument("--vocab_size", type=int, default=6400)
    p.add_argument("--target_bpb", type=float, default=None,
                   help="default: the worst final bpb of any run, which every run reaches")
    p.add_argument("--work_dir", default="out/speedrun")
    p.add_argument("--minimind", default=None,
                   help="a checkout of MiniMind (commit c65335b): add a row of its own "
                        "train_pretrain.py on the same data, and make its bpb the target")
    args = p.parse_args(argv)
    if not args.minimind:
        args.max_steps = args.max_steps or 200
    elif not (Path(args.minimind) / "trainer" / "train_pretrain.py").is_file():
        p.error(f"--minimind {args.minimind}: no trainer/train_pretrain.py inside; pass a "
                "checkout of github.com/jingyaogong/minimind at commit c65335b")
    elif args.vocab_size != 6400:
        p.error("--minimind: MiniMind's model has 6,400 tokens, whatever the tokenizer; pass "
                "--vocab_size 6400")
    elif train_pretrain.parse_args(shlex.split(args.shape)).accumulation_steps != 1:
        p.error("--minimind: MiniMind's trainer runs with --accumulation_steps 1 here, so the "
                "positions a step agree only with --accumulation_steps 1 in --shape")
    args.variants = dict(v.split("=", 1) if "=" in v else (v, "") for v in args.variant)
    if args.corpus == "zh" and not args.zh_poetry:
        p.error("--corpus zh needs --zh_poetry: the package/dist folder of chinese-poetry")
    return args


def main(argv=None):
    args = parse_args(argv)
    tok_path, prepared = prepare_corpus(args)
    heldout = clean_heldout(args, tok_path)
    results = {"minimind": []} if args.minimind else {}
    results.update({name: [] for name in args.variants})
    for seed in args.seeds:  # seed by seed: an interrupted call has every variant once
        if args.minimind:
            results["minimind"].append(run_minimind(args, seed, tok_path, prepared))
            args.max_steps = args.max_steps or results["minimind"][-1]["curve"][-1][0]
        for name, flags in args.variants.items():
            levers, rest = split_levers(flags)
            if levers.get("quality_model") == "auto":
                levers["quality_model"] = reference_scorer(args, tok_path)
            data = prepare_corpus(args, levers)[1] if levers else prepared
            result = run_one(args, name, flags, seed, tok_path, data, rest)
            results[name].append(add_clean_bpb(result, args, tok_path, heldout))
    finals = {name: [r["final_bpb"] for r in runs] for name, runs in results.items()}
    target = args.target_bpb or (statistics.mean(finals["minimind"]) if args.minimind else
                                 max(max(f) for f in finals.values()))
    print(f"{args.corpus} corpus, {args.shape}, {args.max_steps} steps, seeds {args.seeds}, "
          f"target {target:.4f} bpb (val: {prepared})\n")
    print(table(results, target))
    return results


if __name__ == "__main__":
    main()
