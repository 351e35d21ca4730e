"""Benchmark figures of the data pipeline, on generated text (nothing is downloaded).

    python scripts/bench_data.py --work_dir /tmp/myllm_bench            # all figures
    python scripts/bench_data.py --work_dir /tmp/myllm_bench --big_gb 0 # skip the 1 GB run
    python scripts/bench_data.py --tasks cluster   # needs requirements-scale.txt
    python scripts/bench_data.py --tasks padding --data_path dataset/pretrain_hq.jsonl \
        --tokenizer out/tokenizer.json --data_dir out/data   # on the data training prepared

Figures (--tasks): "prepare": tokenizer training time on 50 MB, pretokenize throughput
(MB/s) on Chinese text, near-dedup documents per second, and peak memory (summed RSS of the
process tree) while preparing a generated >1 GB file; "padding": training steps on packed
and on MiniMind-style padded samples, and the tokens per second that carry loss; "cluster"
(not in the default): dataset.py against scripts/prepare_cluster.py on the same generated
files of --train_mb and --big_gb: time, peak memory, and whether they wrote the same files.
The generated text imitates MiniMind's pretrain_hq.jsonl: lines of <s>...</s> segments of
Chinese with some English, Zipf-distributed words, and planted exact and near duplicates;
tests and bench use the same generator (write_corpus).
"""

import argparse
import filecmp
import json
import os
import random
import shutil
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench  # noqa: E402
import dataset  # noqa: E402
import dedup  # noqa: E402
import prepare  # noqa: E402
from bench import format_rows, timed_rounds  # noqa: E402
from bench_dedup import letters_edited  # noqa: E402
from corpus import builtin_corpus, clean_text, iter_texts  # noqa: E402
from device import pick_device  # noqa: E402
from flags import add_prepare_flags, add_source_flags  # noqa: E402
from tokenizer import (SPECIAL_TOKENS, load_tokenizer, save_tokenizer,  # noqa: E402
                       train_tokenizer)

HANZI = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工"
         "也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小"
         "物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形"
         "相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建"
         "月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长"
         "求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战"
         "先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受"
         "联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议")
ENGLISH = ("the model learns from data and each token is predicted from the tokens before it "
           "while training we measure the loss on held out text to see how well it generalizes "
           "a small network can still write fluent sentences when the corpus is clean").split()


def make_lexicon(n_words=6000):
    """Chinese 'words' of 1-4 characters and the cumulative Zipf distribution over them; the
    same for every corpus, so a tokenizer trained on one fits the others."""
    rng = np.random.default_rng(12345)
    lengths = rng.choice([1, 2, 2, 2, 3, 4], n_words)
    words = ["".join(rng.choice(list(HANZI), n)) for n in lengths]
    p = 1 / np.arange(1, n_words + 1)
    return words, np.cumsum(p / p.sum())


def make_line(rng, words, cdf):
    """One MiniMind-format line: 1-3 <s>...</s> segments, ~300 characters on median."""
    segments = []
    for _ in range(rng.integers(1, 4)):
        n = max(8, int(rng.lognormal(4.3, 0.7)))
        picks = np.minimum(np.searchsorted(cdf, rng.random(n)), len(words) - 1)
        # about 11 characters between punctuation marks, as in ordinary Chinese prose
        marks = np.array(["", "，", "。", "、"])[np.searchsorted([0.78, 0.93, 0.98],
                                                                rng.random(n))]
        text = "".join(words[i] + mark for i, mark in zip(picks, marks))
        if rng.random() < 0.1:
            text += " " + " ".join(rng.choice(ENGLISH, 12)) + "."
        segments.append("<s>" + text + "。</s>")
    return " ".join(segments)


def write_corpus(path, n_bytes, seed=0):
    """Write MiniMind-format jsonl of about n_bytes, with 5% exact and 5% near duplicates."""
    rng = np.random.default_rng(seed)
    words, cdf = make_lexicon()
    written, recent = 0, []
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            r = rng.random()
            if recent and r < 0.05:
                text = recent[rng.integers(len(recent))]
            elif recent and r < 0.10:
                text = recent[rng.integers(len(recent))]
                i = rng.integers(len(text))
                text = text[:i] + HANZI[rng.integers(len(HANZI))] + text[i + 1:]
            else:
                text = make_line(rng, words, cdf)
                recent = (recent + [text])[-1000:]
            line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode("utf-8"))
    return path


def tree_memory(pid):
    """(summed RSS, summed PSS) in bytes of a process and its descendants. RSS counts pages
    that forked workers share once per process (an upper bound); PSS splits them fairly."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            rss += int(fields["Rss"].split()[0]) * 1024
            pss += int(fields["Pss"].split()[0]) * 1024
        except (OSError, KeyError):
            pass  # the process ended meanwhile
    return rss, pss


def run_with_peak_memory(cmd, stdout=None):
    """Run cmd; return (seconds, peak summed RSS, peak summed PSS), polling every 0.2 s.
    stdout: a file for its output, which then goes nowhere else."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=None if stdout is None else stdout)
    peak_rss = peak_pss = 0
    while proc.poll() is None:
        rss, pss = tree_memory(proc.pid)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"{cmd} failed with exit code {proc.returncode}")
    return time.time() - start, peak_rss, peak_pss


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process and its finished children)."""
    start, cpu = time.time(), os.times()
    result = fn(*args, **kwargs)
    end = os.times()
    used = sum(getattr(end, k) - getattr(cpu, k)
               for k in ("user", "system", "children_user", "children_system"))
    return result, time.time() - start, used


def encode_all(tok, texts, batch_size=2000):
    return sum(len(e.ids) for i in range(0, len(texts), batch_size)
               for e in tok.encode_batch_fast(texts[i:i + batch_size]))


def sign_all(texts):
    for i in range(0, len(texts), 1000):
        dedup.minhash([dedup.shingles(t) for t in texts[i:i + 1000]])


def measure_prepare(args, work):
    """Tokenizer training, encoding, signing and preparing the generated corpus."""
    corpus = work / "zh.jsonl"
    if not corpus.exists():
        write_corpus(corpus, int(args.train_mb * 1e6))
    texts = list(iter_texts(corpus))
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tok, wall, cpu = timed(train_tokenizer, texts, vocab_size=6400)
    print(f"tokenizer training on {mb:.1f} MB, vocab 6400: {wall:.0f} s ({cpu:.0f} CPU s)")
    tok_path = save_tokenizer(tok, work / "tok" / "tokenizer.json")
    tok = load_tokenizer(tok_path)
    n_tokens, wall, cpu = timed(encode_all, tok, texts)
    print(f"encode_batch_fast on Chinese: {mb / wall:.2f} MB/s ({mb / cpu:.2f} MB per CPU "
          f"second; {mb * 1e6 / n_tokens:.2f} bytes/token)")
    sample = texts[:20000]
    _, wall, cpu = timed(sign_all, sample)
    print(f"shingles + MinHash in one process: {len(sample) / cpu:,.0f} docs per CPU second "
          f"(docs of {mb * 1e6 / len(texts):,.0f} bytes on average)")
    shutil.rmtree(work / "data", ignore_errors=True)
    prepared, wall, cpu = timed(prepare.prepare, corpus, tok_path, work / "data",
                                verbose=False)
    meta = prepare.load_meta(prepared)
    r, s = meta["report"], meta["report"]["seconds"]
    print(f"prepare {mb:.0f} MB: {wall:.0f} s, {cpu:.0f} CPU s; {r['documents_read']:,} docs, "
          f"{r['exact_duplicates']:,} exact and {r['near_duplicates']:,} near duplicates dropped")
    print(f"  read + clean + near dedup (shingles, MinHash, LSH, Jaccard check): "
          f"{r['documents_read'] / (s['read_clean'] + s['dedup']):,.0f} docs/s")
    kept_mb = r["bytes_per_token"] * sum(x["tokens"] for x in meta["splits"].values()) / 1e6
    print(f"  pretokenize: {kept_mb / s['tokenize']:.2f} MB/s ({kept_mb:.1f} MB)")
    return tok_path


def measure_big_file(args, work, tok_path):
    """Prepare a generated file of --big_gb in a subprocess, polling its memory."""
    big = work / "big.jsonl"
    start = time.time()
    write_corpus(big, int(args.big_gb * 1e9), seed=1)
    size = big.stat().st_size / 1e9
    print(f"generated {size:.2f} GB in {time.time() - start:.0f} s")
    cmd = [sys.executable, str(Path(dataset.__file__)), "--data_path", str(big), "--tokenizer",
           str(tok_path), "--data_dir", str(work / "big_data"), "--quiet"]
    wall, rss, pss = run_with_peak_memory(cmd)
    print(f"prepare {size:.2f} GB: {wall:.0f} s; peak memory {pss / 1e9:.2f} GB PSS, "
          f"{rss / 1e9:.2f} GB RSS (summed over the processes)")
    if not args.keep:
        big.unlink()
        shutil.rmtree(work / "big_data", ignore_errors=True)


def padded_samples(tokens, doc_starts, is_sentence_end, max_seq_len):
    """Padded mode's samples, one document each: (starts, lengths), lengths <= max_seq_len + 1.

    A longer document is cut after the last sentence end that fits in the window, or at the
    window's edge when one sentence is longer than a window.
    """
    window = max_seq_len + 1
    doc_starts = np.asarray(doc_starts, np.int64)
    starts, lengths = doc_starts[:-1], np.diff(doc_starts)
    fits = lengths <= window
    out_starts, out_lengths = [starts[fits]], [lengths[fits]]
    for start, end in zip(starts[~fits].tolist(), (starts + lengths)[~fits].tolist()):
        while end - start > window:
            # A piece that ends with the sentence end at start + 1 + k holds k + 2 tokens.
            # Cuts leave at least 2 tokens behind: a 1-token piece would have nothing to predict.
            search = tokens[start + 1:min(start + window, end - 2)]
            ends = np.flatnonzero(is_sentence_end[search])
            cut = start + 2 + int(ends[-1]) if len(ends) else start + window
            if end - cut == 1:
                cut -= 1
            out_starts.append([start])
            out_lengths.append([cut - start])
            start = cut
        out_starts.append([start])
        out_lengths.append([end - start])
    starts, lengths = np.concatenate(out_starts), np.concatenate(out_lengths)
    order = np.argsort(starts, kind="stable")
    return starts[order], lengths[order]


class PaddedDataset(dataset.PretrainDataset):
    """MiniMind's samples, for comparison with packing: one document per sample, padded with
    PAD_ID (a longer document cut by padded_samples). On short documents most positions are
    padding."""

    def __init__(self, prepared_dir, split="train", max_seq_len=512):
        super().__init__(prepared_dir, split, max_seq_len)
        meta = prepare.load_meta(prepared_dir)
        is_end = np.zeros(self.vocab_size, bool)
        is_end[meta["sentence_end_ids"]] = True
        tokens, doc_starts = dataset.open_split(prepared_dir, split)
        self.starts, self.lengths = padded_samples(tokens, doc_starts, is_end, max_seq_len)
        self.n_samples = len(self.starts)
        positions = self.n_samples * max_seq_len
        self.padding_share = 1 - int((self.lengths - 1).sum()) / positions if positions else 0.0

    def window(self, i):
        start = int(self.starts[i])
        return self._tokens[start:start + int(self.lengths[i])]


def padding_datasets(args, work):
    """(packed, padded) training splits of --data_path (default: a generated corpus), with
    --tokenizer (default: one trained on the data), prepared by prepare.prepare with
    train_pretrain.py's options and split seed: in --data_dir, training's prepared data is
    found again and reused, not prepared a second time."""
    sources = args.data_path
    if sources is None:
        sources = [str(write_corpus(work / "padding.jsonl", int(args.padding_mb * 1e6)))]
    tokenizer = Path(args.tokenizer or work / "padding_tok" / "tokenizer.json")
    if not tokenizer.exists():
        save_tokenizer(train_tokenizer(iter_texts(sources), 6400), tokenizer)
    prepared = prepare.prepare(sources, tokenizer, args.data_dir or work / "data",
                               verbose=False, **prepare.prepare_options(args))
    return (dataset.PretrainDataset(prepared, "train", args.max_seq_len),
            PaddedDataset(prepared, "train", args.max_seq_len))


def measure_padding(args, datasets, device):
    """{mode: figures}: training steps (bench.make_step) of the 512 x 8 model on each of
    datasets, counting the tokens that carry loss (loss_mask 1) per second; batches are
    loaded inside the timed window, as in training."""
    model_args = bench.parse_args(["--max_seq_len", str(args.max_seq_len), "--device",
                                   device.type, "--batch_size", str(args.batch_size)])
    step = bench.make_step(bench.build_model(model_args, device), device, "float32")
    g = torch.Generator().manual_seed(0)
    batches = {mode: iter(torch.utils.data.DataLoader(ds, args.batch_size, shuffle=True,
                                                      generator=g, drop_last=True))
               for mode, ds in datasets.items()}
    useful = {mode: [] for mode in datasets}

    def window(mode):
        def run():
            taken = [next(batches[mode]) for _ in range(args.steps)]
            useful[mode].append(sum(float(mask.sum()) for _, _, mask in taken))
            for batch in taken:
                step(iter([batch]))
        return run

    for mode in datasets:
        window(mode)()  # warm-up
        useful[mode].clear()
    runs = timed_rounds({mode: window(mode) for mode in datasets}, args.repeats, device)
    return {mode: {"useful_tokens_per_sec": float(np.median(
                       [u / t for u, t in zip(useful[mode], seconds)])),
                   "useful_tokens_per_step": float(np.median(useful[mode])) / args.steps,
                   "padding_share": datasets[mode].padding_share}
            for mode, (seconds, _) in runs.items()}


def same_preparation(a, b):
    """Whether two prepared directories hold the same files and meta.json (timings aside)."""
    metas = [prepare.load_meta(d) for d in (a, b)]
    for meta in metas:
        meta["report"].pop("seconds")
    return metas[0] == metas[1] and all(
        filecmp.cmp(Path(a) / name, Path(b) / name, shallow=False)
        for name in ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy"))


def real_text_with_copies(path, n_copies=500, seed=0):
    """Python's own documentation (the built-in corpus) as .jsonl, followed by copies of
    n_copies of its documents with 3% of their letters edited; returns the copies."""
    texts = [t for t in builtin_corpus() if len(t) >= 200]
    rng = random.Random(seed)
    copies = [letters_edited(texts[i], 0.03, rng)
              for i in rng.sample(range(len(texts)), n_copies)]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts + copies)
    return copies


def planted_recall(prepared, tok_path, copies):
    """The share of the planted copies that the prepared directory does not hold."""
    tok = load_tokenizer(tok_path)
    kept = set()
    for split in ("train", "val"):
        tokens, starts = dataset.open_split(prepared, split)
        kept.update(tok.decode_batch([tokens[a + 1:b - 1].tolist() for a, b in
                                      zip(starts[:-1], starts[1:])], skip_special_tokens=False))
    cleaned = [clean_text(c, markers=SPECIAL_TOKENS[1:])[0] for c in copies]
    return sum(c not in kept for c in cleaned) / len(copies)


def measure_cluster(args, work):
    """dataset.py and scripts/prepare_cluster.py (datatrove's local executor) on the same
    files: generated ones of --train_mb and --big_gb, and Python's documentation with
    planted copies. Time, peak memory, equal output, and the planted copies removed."""
    small = work / "cluster_small.jsonl"
    write_corpus(small, int(args.train_mb * 1e6), seed=1)
    tok_path = work / "tok_cluster" / "tokenizer.json"
    if not tok_path.exists():
        save_tokenizer(train_tokenizer(list(islice(iter_texts(small), 20000)), 6400), tok_path)
    real, real_tok = work / "cluster_python_docs.jsonl", work / "tok_docs" / "tokenizer.json"
    copies = real_text_with_copies(real)
    save_tokenizer(train_tokenizer(list(builtin_corpus()), 6400), real_tok)
    files = [(real, real_tok), (small, tok_path)]
    if args.big_gb > 0:
        files.append((write_corpus(work / "cluster_big.jsonl", int(args.big_gb * 1e9), seed=2),
                      tok_path))
    script = Path(__file__).resolve().parent / "prepare_cluster.py"
    for corpus, tok_path in files:
        size, runs = corpus.stat().st_size / 1e9, {}
        for name, cmd in (("dataset.py", [str(Path(dataset.__file__))]),
                          ("prepare_cluster.py", [str(script), "--tasks", str(args.cluster_tasks),
                                                  "--workers", str(os.cpu_count())])):
            out = work / f"cluster_out_{len(runs)}"
            shutil.rmtree(out, ignore_errors=True)
            with open(work / "cluster_log.txt", "w+") as log:
                wall, rss, pss = run_with_peak_memory(
                    [sys.executable, *cmd, "--data_path", str(corpus), "--tokenizer",
                     str(tok_path), "--data_dir", str(out), "--quiet"], stdout=log)
                log.seek(0)
                lines = log.read().splitlines()
            runs[name] = next(p for p in out.iterdir() if not p.name.startswith("."))
            docs = prepare.load_meta(runs[name])["report"]["documents_read"]
            print(f"{name:<19} {size:.2f} GB, {docs:,} docs: {wall:.0f} s, "
                  f"{docs / wall:,.0f} docs/s; peak memory {pss / 1e9:.2f} GB PSS, "
                  f"{rss / 1e9:.2f} GB RSS")
            if "stages (this run)" in lines:  # prepare_cluster.py's own figures
                print("\n".join(lines[lines.index("stages (this run)"):]))
        print(f"  same directory name, files and report: {same_preparation(*runs.values())}")
        if corpus == real:
            print("  planted copies (3% of the letters edited) removed: " + ", ".join(
                f"{name} {planted_recall(d, tok_path, copies):.1%}" for name, d in runs.items()))
        if not args.keep:
            corpus.unlink()
            for folder in runs.values():
                shutil.rmtree(folder.parent, ignore_errors=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["prepare", "padding"],
                        choices=["prepare", "padding", "cluster"])
    parser.add_argument("--work_dir", default="/tmp/myllm_bench")
    parser.add_argument("--train_mb", type=float, default=50)
    parser.add_argument("--big_gb", type=float, default=1.1, help="0 skips the big file")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--cluster_tasks", type=int, default=8,
                        help="cluster: --tasks of scripts/prepare_cluster.py")
    padding = parser.add_argument_group("padding")
    add_source_flags(padding)
    add_prepare_flags(padding)
    padding.add_argument("--data_dir", default=None, help="where prepared data is kept and "
                         "reused (training's: OUT_DIR/data); default: inside --work_dir")
    padding.add_argument("--padding_mb", type=float, default=2, help="generated data's size")
    padding.add_argument("--max_seq_len", type=int, default=512)
    padding.add_argument("--batch_size", type=int, default=4)
    padding.add_argument("--steps", type=int, default=2, help="steps per timed window")
    padding.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with open("/proc/loadavg") as f:
        print(f"machine: {os.cpu_count()} cores, load average {f.read().split()[0]} at the start")
    if "prepare" in args.tasks:
        tok_path = measure_prepare(args, work)
        if args.big_gb > 0:
            measure_big_file(args, work, tok_path)
    if "cluster" in args.tasks:
        measure_cluster(args, work)
    if "padding" in args.tasks:
        datasets = dict(zip(("packed", "padded"), padding_datasets(args, work)))
        figures = measure_padding(args, datasets, pick_device())
        print(format_rows([
            ("useful tokens/s (carrying loss)",
             [figures[m]["useful_tokens_per_sec"] for m in datasets], True, "{:,.0f}"),
            ("padding share", [100 * figures[m]["padding_share"] for m in datasets], None,
             "{:.1f}%")], list(datasets)))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
