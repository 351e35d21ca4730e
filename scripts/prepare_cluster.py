"""Preparing a corpus on many machines: the directory dataset.py prepares, built as four
pipelines of datatrove, the engine FineWeb was deduplicated with, which runs them on this
machine, on Slurm or on Ray (pip install -r requirements-scale.txt).

    python scripts/prepare_cluster.py --data_path 'corpus/*.jsonl' \\
        --tokenizer out/tokenizer.json --data_dir out/data --tasks 8 --workers 2
    python scripts/prepare_cluster.py ... --executor slurm --tasks 512 --partition cpu
    python scripts/prepare_cluster.py ... --executor ray --tasks 512

The stages, each a datatrove executor that starts when the one before it has finished:
    clean     --tasks tasks. The sources are cut into units: each CHUNK_BYTES of a plain
              .jsonl file (the lines that start in it), and each gzipped or .txt file, or
              the built-in corpus, whole; they are dealt to the tasks in turn (shards), so
              that a task reads its units alone. It cleans their documents with corpus.py's
              rules, hashes and signs them as prepare.py does (prepare._clean_and_sign),
              and writes the texts, hashes and signatures to WORK/clean.
    dedup     one task: every document's hashes and signatures in reading order, and
              prepare.py's dedup on them (exact copies, then LSH candidates, the signature
              check, exact Jaccard and the parts check), then the train/val split. It reads
              the texts it checks from WORK/clean.
    tokenize  --tasks tasks: task t tokenizes the kept documents it cleaned.
    merge     one task: the token files in reading order, --weights, meta.json; the
              directory is renamed into place under --data_dir.

The result is what `python dataset.py` writes from the same sources and flags: the same
documents, tokens, split and fingerprint (meta.json's timings aside), so that
train_pretrain.py --data_path DIR uses it and dataset.py finds it made. The work folder
WORK is DATA_DIR/.cluster-NAME: on a cluster, --data_dir must be a folder every machine
sees. A stage's finished tasks leave datatrove's completion files in
WORK/logs/STAGE/completions, and every output is written atomically (files.write_atomic),
so the same command run again after a crash reruns only the unfinished tasks.
"""

import importlib
import json
import os
import resource
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prepare  # noqa: E402
from corpus import builtin_corpus, jsonl_texts, read_file  # noqa: E402
from dataset import build_parser  # noqa: E402
from dedup import lsh_bands  # noqa: E402
from files import write_atomic, write_text_atomic  # noqa: E402
from tokenizer import frame_document, load_tokenizer, token_byte_counts  # noqa: E402

try:
    from datatrove.executor import (LocalPipelineExecutor, RayPipelineExecutor,
                                    SlurmPipelineExecutor)
    from datatrove.pipeline.base import PipelineStep
    from datatrove.utils.logging import logger
except ImportError:  # the flags, and the error that says what to install, work without it
    PipelineStep = object

CHUNK_BYTES = 32 << 20  # of a .jsonl file: one unit of the clean stage's work
BATCH = 1000  # documents cleaned and signed at a time
POSITION_BITS = 44  # files of up to 16 TB, and up to 2**19 files
COLUMNS = ("key", "source", "exact", "split", "weight", "hashes", "sketches", "has_shingles",
           "text_bytes")  # what the clean stage keeps of each document
STAGES = ("clean", "dedup", "tokenize", "merge")
# dataset.py's flags that this script does not take, and why
UNSUPPORTED = {"prep_workers": "the processes here are --tasks and --workers",
               **{flag: "the data levers (data_order.py) run in dataset.py only" for flag in
                  ("quality_model", "quality_keep", "quality_threshold", "order")}}


class Job:
    """What every stage needs to know; picklable, so that Slurm and Ray can ship it."""

    def __init__(self, entries, weights, tokenizer, options, tasks, out_dir, fingerprint,
                 source_fps):
        self.entries, self.weights, self.tokenizer = entries, weights, str(tokenizer)
        self.options, self.tasks, self.out_dir = options, tasks, Path(out_dir)
        self.fingerprint, self.source_fps = fingerprint, source_fps
        self.work = self.out_dir.parent / f".cluster-{self.out_dir.name}"

    def files(self):
        """(file index, source index, path) of every file, in reading order."""
        return [(f, s, path) for f, (s, path) in enumerate(
            (s, path) for s, paths in enumerate(self.entries) for path in paths)]


def _reset_peak_memory():
    """Start this process's peak memory afresh for the task (Linux; elsewhere the peak
    stays that of the whole process, which a process that ran several tasks, or the
    program that started it, can raise)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory():
    """This process's peak resident memory in bytes since _reset_peak_memory."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) * 1024
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _short_errors():
    """A task that stops on bad input (a malformed line, say) logs its one-line message,
    without the traceback."""
    def patch(record):
        if record["exception"] and isinstance(record["exception"].value,
                                              (ValueError, FileNotFoundError)):
            record["exception"] = None
    logger.configure(patcher=patch)


def shards(job):
    """The clean stage's units of work, in reading order: (file index, source index, path,
    first byte, end byte) for each CHUNK_BYTES of a plain .jsonl file, and (file index,
    source index, path, None, None) for a whole gzipped or .txt file or the built-in
    corpus. Unit u goes to task u % tasks."""
    units = []
    for f, source, path in job.files():
        if path != "builtin" and str(path).endswith(".jsonl"):
            size = max(Path(path).stat().st_size, 1)
            units += [(f, source, path, lo, min(lo + CHUNK_BYTES, size))
                      for lo in range(0, size, CHUNK_BYTES)]
        else:
            units.append((f, source, path, None, None))
    return units


def _lines_from(file, lo, hi):
    """(byte offset + 1, line) of the lines of a binary file that start in [lo, hi): the
    line under way at lo belongs to the range before. The offset + 1 makes a file's first
    line 1, where corpus.jsonl_texts expects it (a byte-order mark is removed there)."""
    file.seek(max(lo - 1, 0))
    if lo > 0:
        file.readline()  # the rest of the line under way, or the newline just before lo
    while (position := file.tell()) < hi:
        line = file.readline()
        if not line:
            return
        yield position + 1, line


def _line_number(path, offset):
    """The line number of the line at a byte offset: the newlines before it, plus 1."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0 and (block := f.read(min(offset, 1 << 24))):
            count += block.count(b"\n")
            offset -= len(block)
    return count + 1


def task_documents(job, rank, counts):
    """(key, source index, text) of the documents that clean task `rank` takes, in reading
    order. The key, file index << POSITION_BITS | the document's place in its file, sorts
    every task's documents into dataset.py's reading order."""
    o = job.options
    for f, source, path, lo, hi in shards(job)[rank::job.tasks]:
        if path == "builtin":
            numbered = enumerate(builtin_corpus())
        elif lo is None:
            numbered = enumerate(read_file(path, o["text_field"], o["skip_bad_lines"], counts))
        else:
            numbered = _chunk_texts(path, lo, hi, o, counts)
        for place, text in numbered:
            yield (f << POSITION_BITS) | place, source, text


def _chunk_texts(path, lo, hi, options, counts):
    """(byte offset + 1, text) of the JSON lines that start in [lo, hi) of a file; a bad
    line's error names its line number, as dataset.py's does."""
    with open(path, "rb") as file:
        try:
            yield from jsonl_texts(_lines_from(file, lo, hi), path, options["text_field"],
                                   options["skip_bad_lines"], counts)
        except ValueError as e:
            where, _, rest = str(e).partition(": ")
            if not where.startswith(f"{path}:"):
                raise
            offset = int(where.rsplit(":", 1)[1]) - 1
            raise ValueError(f"{path}:{_line_number(path, offset)}: {rest}") from None


def clean_and_sign(job, documents, counts, out):
    """prepare._clean_and_sign on batches of (key, source, text): the texts kept are
    written to the binary file `out`, one after another, and their COLUMNS returned."""
    o = job.options
    bands, rows = lsh_bands(o["num_perm"], o["dedup_threshold"])
    columns = {name: [] for name in COLUMNS}

    def add(batch):
        keys, sources, raw = zip(*batch) if batch else ((), (), ())
        _, cleaned, fired, *arrays = prepare._clean_and_sign(
            (0, list(raw)), o["min_chars"], o["seed"], o["num_perm"], bands, rows,
            o["near_dedup"])
        kept = np.array([not {"too_short", "mostly_symbols"} & set(r) for r in fired], bool)
        counts["documents_read"] += len(fired)
        counts.update(rule for rules in fired for rule in rules)
        data = [t.encode("utf-8") for t in cleaned]
        out.writelines(data)
        lengths = np.array([len(d) for d in data], np.int64)
        values = [np.array(keys, np.int64)[kept], np.array(sources, np.int64)[kept], *arrays,
                  lengths]
        for name, value in zip(COLUMNS, values):
            columns[name].append(value)

    add([])  # the columns' shapes, for a task with no documents
    batch = []
    for document in documents:
        batch.append(document)
        if len(batch) == BATCH:
            add(batch)
            batch = []
    add(batch)
    return {name: np.concatenate(parts) for name, parts in columns.items()}


class Step(PipelineStep):
    """One stage's work for one task, as a datatrove pipeline step that yields no
    documents: the stages pass files, not document streams."""
    type = "MyLLM"

    def __init__(self, job):
        super().__init__()
        self.job = job

    def run(self, data=None, rank=0, world_size=1):
        _short_errors()
        _reset_peak_memory()
        self.start = time.time()
        self.work(rank)
        timing = {"start": self.start, "end": time.time(), "peak_bytes": _peak_memory()}
        write_text_atomic(self.job.work / "times" / f"{self.name}-{rank:05d}.json",
                          json.dumps(timing))
        return iter(())


class Clean(Step):
    """Read, clean, hash and sign this task's share of the documents."""
    name = "clean"

    def work(self, rank):
        counts, columns = Counter(), {}
        folder = self.job.work / "clean"
        # the texts stream into their file; the columns, a few hundred bytes a document,
        # are written beside it when all are read
        write_atomic(folder / f"{rank:05d}.txt", lambda f: columns.update(clean_and_sign(
            self.job, task_documents(self.job, rank, counts), counts, f)))
        write_atomic(folder / f"{rank:05d}.npz",
                     lambda f: np.savez(f, counts=json.dumps(counts), **columns))
        self.stat_update("documents_read", value=counts["documents_read"])


class CleanTexts:
    """The clean stage's texts, read by document number in reading order (what
    prepare._deduplicate reads through)."""

    def __init__(self, folder, tasks, lengths, task_of, local_of):
        self.files = [open(Path(folder) / f"{t:05d}.txt", "rb") for t in range(tasks)]
        self.offsets = [np.concatenate([[0], np.cumsum(n)]) for n in lengths]
        self.task_of, self.local_of = task_of, local_of

    def read(self, start, stop):
        texts = []
        for i in range(start, stop):
            task, local = int(self.task_of[i]), int(self.local_of[i])
            lo, hi = self.offsets[task][local], self.offsets[task][local + 1]
            self.files[task].seek(lo)
            texts.append(self.files[task].read(hi - lo).decode("utf-8"))
        return texts

    def close(self):
        for f in self.files:
            f.close()


def load_clean(job):
    """Every clean task's columns, concatenated task after task, and the summed counts."""
    parts = [np.load(job.work / "clean" / f"{t:05d}.npz") for t in range(job.tasks)]
    counts = Counter()
    for part in parts:
        counts.update(json.loads(str(part["counts"])))
    columns = {name: np.concatenate([part[name] for part in parts]) for name in COLUMNS}
    sizes = [len(part["key"]) for part in parts]
    return columns, counts, sizes


class Dedup(Step):
    """prepare.py's exact and near dedup and its split, over all the documents at once."""
    name = "dedup"

    def work(self, rank):
        job = self.job
        columns, counts, sizes = load_clean(job)
        if not sizes or sum(sizes) == 0:
            raise ValueError(f"no documents left after cleaning ({counts['documents_read']} "
                             f"read, {prepare._dropped_summary(counts)}); check the files and "
                             "--text_field")
        order = np.argsort(columns["key"], kind="stable")  # reading order: row of each
        task_of = np.repeat(np.arange(job.tasks), sizes)
        local_of = np.concatenate([np.arange(n) for n in sizes])
        lengths = np.split(columns["text_bytes"], np.cumsum(sizes)[:-1])
        read = {name: columns.pop(name)[order] for name in COLUMNS if name != "text_bytes"}
        store = CleanTexts(job.work / "clean", job.tasks, lengths, task_of[order],
                           local_of[order])
        try:
            keep, cut = prepare._deduplicate(
                prepare._dedup_order(read["source"], job.weights), read["exact"],
                read["hashes"], read["sketches"], read["has_shingles"], store, job.options,
                counts, verbose=False)
        finally:
            store.close()
        val = prepare._split_docs(keep, read["split"], job.options["val_fraction"])
        copies = prepare._copies(keep & ~val, read["source"], job.weights, read["weight"])
        kept_of_task = np.zeros(len(order), bool)
        kept_of_task[order] = keep  # by row: task after task, each in its own order
        write_atomic(job.work / "dedup" / "result.npz", lambda f: np.savez(
            f, task=task_of[order], keep=keep, val=val, copies=copies, kept_rows=kept_of_task,
            counts=json.dumps(counts), cut=json.dumps(cut), sizes=np.array(sizes)))


class Tokenize(Step):
    """Tokenize the kept documents that this task cleaned, each framed <s> ... </s>."""
    name = "tokenize"

    def work(self, rank, batch_size=2000):
        job = self.job
        tok = load_tokenizer(job.tokenizer)
        dtype = prepare.token_dtype(tok)
        byte_counts = np.array(token_byte_counts(tok), np.int64)
        result = np.load(job.work / "dedup" / "result.npz")
        sizes = result["sizes"]
        lo = int(sizes[:rank].sum())
        kept = result["kept_rows"][lo:lo + sizes[rank]]
        lengths_of_texts = np.load(job.work / "clean" / f"{rank:05d}.npz")["text_bytes"]
        offsets = np.concatenate([[0], np.cumsum(lengths_of_texts)])
        lengths, text_bytes = [], 0

        def write(out):
            nonlocal text_bytes
            with open(job.work / "clean" / f"{rank:05d}.txt", "rb") as texts:
                for first in range(0, len(kept), batch_size):
                    last = min(first + batch_size, len(kept))
                    texts.seek(offsets[first])
                    data = texts.read(offsets[last] - offsets[first])
                    batch = [data[offsets[i] - offsets[first]:offsets[i + 1] - offsets[first]]
                             .decode("utf-8") for i in range(first, last) if kept[i]]
                    framed = [frame_document(e.ids) for e in
                              tok.encode_batch_fast(batch, add_special_tokens=False)]
                    flat = np.fromiter((t for ids in framed for t in ids), dtype,
                                       sum(map(len, framed)))
                    flat.tofile(out)
                    lengths.extend(map(len, framed))
                    text_bytes += int(byte_counts[flat].sum())

        write_atomic(job.work / "tokens" / f"{rank:05d}.bin", write)
        write_atomic(job.work / "tokens" / f"{rank:05d}.npz", lambda f: np.savez(
            f, lengths=np.array(lengths, np.int64), text_bytes=text_bytes))


class Merge(Step):
    """The token files in reading order, --weights, and meta.json, into place."""
    name = "merge"

    def work(self, rank):
        job = self.job
        if prepare.is_prepared_dir(job.out_dir):
            return  # a rerun after the merge finished
        tok = load_tokenizer(job.tokenizer)
        dtype = prepare.token_dtype(tok)
        result = np.load(job.work / "dedup" / "result.npz")
        keep, val, task = result["keep"], result["val"], result["task"]
        parts = [np.load(job.work / "tokens" / f"{t:05d}.npz") for t in range(job.tasks)]
        starts_in_task = [np.concatenate([[0], np.cumsum(p["lengths"])]) for p in parts]
        # a kept document's number among its task's kept documents, which the task wrote in
        # reading order
        number = np.zeros(len(keep), np.int64)
        for t in range(job.tasks):
            mine = keep & (task == t)
            number[mine] = np.arange(mine.sum())
        tmp = job.out_dir.parent / f".tmp-{job.out_dir.name}-cluster"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        starts = {}
        for split, in_split in (("train", keep & ~val), ("val", keep & val)):
            docs = np.flatnonzero(in_split)
            tasks, numbers = task[docs], number[docs]
            with open(tmp / f"{split}.bin", "wb") as out:
                _copy_runs(out, tasks, numbers, starts_in_task, job.work, dtype)
            lengths = np.zeros(len(docs), np.int64)
            for t, part in enumerate(parts):
                mine = tasks == t
                lengths[mine] = part["lengths"][numbers[mine]]
            starts[split] = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
        starts["train"] = prepare._apply_weights(tmp / "train.bin", starts["train"],
                                                 result["copies"], dtype)
        for split, offsets in starts.items():
            np.save(tmp / f"{split}.idx.npy", offsets)
        self.finish(tok, tmp, starts, result, parts)

    def finish(self, tok, tmp, starts, result, parts):
        """meta.json, written last, and the directory renamed into place."""
        job = self.job
        n_tokens = sum(int(p["lengths"].sum()) for p in parts)
        text_bytes = sum(int(p["text_bytes"]) for p in parts)
        meta = prepare.build_meta(tok, job.options, Counter(json.loads(str(result["counts"]))),
                                  json.loads(str(result["cut"])), int(result["keep"].sum()),
                                  starts, text_bytes / max(n_tokens, 1),
                                  stage_seconds(job, self.start))
        meta.update(fingerprint=job.fingerprint, sources=job.source_fps,
                    tokenizer_path=str(Path(job.tokenizer).resolve()))
        write_text_atomic(tmp / "meta.json",
                                  json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        os.rename(tmp, job.out_dir)
        for folder in ("clean", "tokens"):  # the bulk of the work folder
            shutil.rmtree(job.work / folder, ignore_errors=True)


def _copy_runs(out, tasks, numbers, starts_in_task, work, dtype):
    """Write the documents (task, number in its token file) in the order given, one slice per
    run of consecutive documents of one task."""
    if len(tasks) == 0:
        return
    breaks = np.flatnonzero((tasks[1:] != tasks[:-1]) | (numbers[1:] != numbers[:-1] + 1)) + 1
    maps = {}
    for lo, hi in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(tasks)].tolist()):
        t = int(tasks[lo])
        if t not in maps:
            maps[t] = np.memmap(work / "tokens" / f"{t:05d}.bin", dtype, mode="r")
        first, last = starts_in_task[t][numbers[lo]], starts_in_task[t][numbers[hi - 1] + 1]
        maps[t][first:last].tofile(out)


def stage_times(job):
    """{stage: its tasks' timing records (start, end, peak_bytes)} of this run so far."""
    times = {}
    for path in sorted((job.work / "times").glob("*.json")):
        times.setdefault(path.name.split("-")[0], []).append(json.loads(path.read_text()))
    return times


def _wall(records):
    """A stage's wall time: its first task's start to its last task's end."""
    return max(t["end"] for t in records) - min(t["start"] for t in records)


def stage_seconds(job, merge_start):
    """meta.json's timings: each stage's wall time (the merge's up to now)."""
    seconds = {("read_clean" if k == "clean" else k): _wall(v)
               for k, v in stage_times(job).items()}
    seconds["merge"] = time.time() - merge_start
    return seconds


def stage_summary(job):
    """One line per stage: its tasks, wall time and the largest peak memory of a task."""
    times = stage_times(job)
    lines = [f"  {stage:<9} {len(times[stage]):>5} tasks {_wall(times[stage]):>9.1f} s   peak "
             f"memory of a task {max(t['peak_bytes'] for t in times[stage]) / 1e9:.2f} GB"
             for stage in STAGES if stage in times]
    return "\n".join(["stages (this run)", *lines]) if lines else ""


def executors(job, args):
    """The four stages' executors, each depending on the one before; the last is returned
    (running it runs them all)."""
    stages = ((Clean, job.tasks), (Dedup, 1), (Tokenize, job.tasks), (Merge, 1))
    previous = None
    for step, tasks in stages:
        common = dict(pipeline=[step(job)], tasks=tasks, depends=previous,
                      logging_dir=str(job.work / "logs" / step.name))
        if args.executor == "local":
            previous = LocalPipelineExecutor(**common, workers=min(args.workers, tasks))
        elif args.executor == "slurm":
            single = tasks == 1  # dedup and merge: one task that holds every document's keys
            env = f"export PYTHONPATH={ROOT}:$PYTHONPATH" + (
                f"; {args.env_command}" if args.env_command else "")
            previous = SlurmPipelineExecutor(
                **common, workers=args.workers, time=args.time, partition=args.partition,
                job_name=f"myllm-{step.name}", cpus_per_task=args.cpus_per_task,
                mem_per_cpu_gb=args.single_mem_gb if single else args.mem_per_cpu_gb,
                env_command=env, slurm_logs_folder=str(job.work / "logs" / "slurm" / step.name))
        else:
            previous = RayPipelineExecutor(
                **common, workers=args.workers, cpus_per_task=args.cpus_per_task,
                mem_per_cpu_gb=args.single_mem_gb if tasks == 1 else args.mem_per_cpu_gb)
    return previous


def parse_args(argv=None):
    parser = build_parser("Prepare pretraining text as dataset.py does, with datatrove's "
                          "executors: on this machine, on Slurm or on Ray.")
    parser.add_argument("--executor", choices=("local", "slurm", "ray"), default="local")
    parser.add_argument("--tasks", type=int, default=os.cpu_count() or 1,
                        help="tasks of the clean and tokenize stages (their shards)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="tasks run at once (local: processes on this machine)")
    cluster = parser.add_argument_group("slurm and ray")
    cluster.add_argument("--partition", default=None, help="Slurm partition")
    cluster.add_argument("--time", default="24:00:00", help="Slurm time limit of a task")
    cluster.add_argument("--cpus_per_task", type=int, default=1)
    cluster.add_argument("--mem_per_cpu_gb", type=float, default=2)
    cluster.add_argument("--single_mem_gb", type=float, default=64,
                         help="memory of the one-task dedup and merge stages (see the docs)")
    cluster.add_argument("--env_command", default=None,
                         help="Slurm: a command that activates the Python environment")
    args = parser.parse_args(argv)
    prepare.check_source_flags(parser, args)
    for flag, why in UNSUPPORTED.items():
        if getattr(args, flag) != parser.get_default(flag):
            parser.error(f"--{flag} is not taken here: {why}")
    if args.tasks < 1 or args.workers < 1:
        parser.error("--tasks and --workers: give at least 1")
    if args.executor == "slurm" and not args.partition:
        parser.error("--executor slurm: give the --partition to run on")
    return args


def plan(args):
    """The Job of the flags: sources, weights and tokenizer checked, the directory named."""
    entries, weights = prepare._source_entries(args.data_path, args.weights)
    tokenizer = Path(args.tokenizer or "out/tokenizer.json")
    tok = load_tokenizer(tokenizer)
    options = prepare.result_options(
        text_field=args.text_field, val_fraction=args.val_fraction,
        near_dedup=not args.no_near_dedup, dedup_threshold=args.dedup_threshold,
        num_perm=args.num_perm, min_chars=args.min_chars, seed=args.split_seed,
        skip_bad_lines=args.skip_bad_lines)
    out_dir, fingerprint, source_fps = prepare.target_dir(entries, weights, tok, options,
                                                          args.data_dir)
    return Job(entries, weights, tokenizer, options, args.tasks, out_dir, fingerprint,
               source_fps)


def main(argv=None):
    args = parse_args(argv)
    if PipelineStep is object:
        sys.exit("error: datatrove is not installed; pip install -r requirements-scale.txt")
    # the tasks' processes import this module by name, not as __main__, from ROOT
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                             os.environ.get("PYTHONPATH")]))
    steps = (importlib.import_module("scripts.prepare_cluster") if __name__ == "__main__"
             else sys.modules[__name__])
    try:
        job = steps.plan(args)
        if not prepare.is_prepared_dir(job.out_dir):
            steps.executors(job, args).run()
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if args.executor != "local" and not prepare.is_prepared_dir(job.out_dir):
        print(f"launched; the logs are in {job.work / 'logs'}, and the data will be in "
              f"{job.out_dir}")
        return
    summary = stage_summary(job)
    shutil.rmtree(job.work, ignore_errors=True)
    print(prepare.format_report(prepare.load_meta(job.out_dir)))
    if summary:
        print(summary)
    print(f"prepared data: {job.out_dir}")


if __name__ == "__main__":
    main()
