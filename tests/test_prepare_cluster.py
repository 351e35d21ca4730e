"""scripts/prepare_cluster.py: the same prepared directory as dataset.py, built by datatrove's
executors; resumed after a task dies; Slurm and Ray pipelines built without launching."""

import filecmp
import gzip
import random
import subprocess
import sys
from pathlib import Path

import dill
import pytest

import prepare_cluster
from dataset import PretrainDataset
from prepare import load_meta, prepare
from test_dataset import (HANZI, LICENCE, WORDS, chinese_doc, decoded_documents, english_doc,
                          near_copy, true_jaccard, unframe, write_jsonl)
from tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

SCRIPT = Path(prepare_cluster.__file__)
FILES = ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy")


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    rng = random.Random(0)
    texts = [english_doc(rng) for _ in range(40)] + [chinese_doc(rng) for _ in range(40)]
    return save_tokenizer(train_tokenizer(texts, vocab_size=400),
                          tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three sources and the texts test_dataset.py checks dedup with: documents and their
    planted near and exact copies, spread over the sources (a copy in a source of higher
    weight than its original's), and distinct documents that share a form (poems of one
    form, question-answer lines of one template, pages that share a licence)."""
    folder, rng = tmp_path_factory.mktemp("corpus"), random.Random(1)
    bases = [english_doc(rng) for _ in range(40)] + [chinese_doc(rng) for _ in range(40)]
    pairs = [(doc, copy) for doc in bases for copy in [near_copy(rng, doc, doc[0] in HANZI)]
             if true_jaccard(doc, copy) >= 0.85]
    copies = [copy for _, copy in pairs]
    refrain = "春风又绿江南岸，明月何时照我还。"
    forms = [refrain + "".join("".join(rng.choice(HANZI) for _ in range(5)) + "，。"[k % 2]
                               for k in range(6)) for _ in range(30)]
    forms += [f"Q: what is the {rng.choice(WORDS)} of the {rng.choice(WORDS)}? A: the answer "
              "is " + english_doc(rng, 12) for _ in range(30)]
    forms += [LICENCE + " " + english_doc(rng, rng.choice([20, 60, 180])) for _ in range(30)]
    a = write_jsonl(folder / "a.jsonl", bases[::2] + forms + copies[1::2] + ["short"])
    b = folder / "b.txt.gz"  # a gzipped text file: paragraphs, read by one task whole
    with gzip.open(b, "wt", encoding="utf-8") as f:
        f.write("\n\n".join(bases[1::2] + copies[::4]))
    c = write_jsonl(folder / "c.jsonl", copies[::2] + bases[:5])  # exact copies too
    return {"sources": [str(a), str(b), str(c)], "bases": bases, "forms": forms,
            "pairs": pairs}


def run_cluster(argv, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "")  # main() sets it for the tasks it starts
    prepare_cluster.main(argv)


def cluster_argv(corpus, tok_path, data_dir, *extra):
    return ["--data_path", *corpus["sources"], "--weights", "1", "2", "0.5", "--tokenizer",
            str(tok_path), "--data_dir", str(data_dir), "--val_fraction", "0.1",
            "--workers", "1", *extra]


@pytest.fixture(scope="module")
def reference(corpus, tok_path, tmp_path_factory):
    """What dataset.py prepares from the corpus."""
    return prepare(corpus["sources"], tok_path, tmp_path_factory.mktemp("ref"),
                   weights=[1, 2, 0.5], val_fraction=0.1, num_workers=0, verbose=False)


def assert_same(reference, other):
    assert other.name == reference.name  # the fingerprint: dataset.py would reuse it
    for name in FILES:
        assert filecmp.cmp(reference / name, other / name, shallow=False), name
    metas = [load_meta(reference), load_meta(other)]
    for meta in metas:
        meta["report"].pop("seconds")
        meta.pop("tokenizer_path")
    assert metas[0] == metas[1]


def test_the_same_directory_as_dataset_py_with_planted_copies_and_shared_forms(
        corpus, tok_path, reference, tmp_path, monkeypatch):
    """Chunks of 3,000 bytes over 3 tasks, so that every .jsonl file is read by several
    tasks and their documents interleave in reading order."""
    monkeypatch.setattr(prepare_cluster, "CHUNK_BYTES", 3000)
    run_cluster(cluster_argv(corpus, tok_path, tmp_path, "--tasks", "3"), monkeypatch)
    prepared = tmp_path / reference.name
    assert_same(reference, prepared)
    assert not (tmp_path / f".cluster-{reference.name}").exists()  # the work folder is gone
    # what the rule must do, checked on the kept texts themselves
    tok = load_tokenizer(tok_path)
    kept = {unframe(t) for split in ("train", "val") for t in decoded_documents(tok, prepared,
                                                                                   split)}
    assert set(corpus["forms"]) <= kept
    # of a document and its near copy, one is kept (the one in the source of the highest
    # weight), never neither
    assert all(doc in kept or copy in kept for doc, copy in corpus["pairs"])
    found = sum(not (doc in kept and copy in kept) for doc, copy in corpus["pairs"])
    assert found >= 0.9 * len(corpus["pairs"])
    report = load_meta(prepared)["report"]
    assert report["exact_duplicates"] >= 5 and report["cleaning"]["too_short"] == 1
    x, y, mask = PretrainDataset(prepared, "train", max_seq_len=32)[0]
    assert x.shape == y.shape == mask.shape == (32,)


def test_a_stage_interrupted_midway_resumes_and_ends_with_the_same_files(
        corpus, tok_path, reference, tmp_path, monkeypatch):
    """Tokenize task 1 dies after writing half a file; running the command again reruns it
    alone (datatrove's completion files), and the result is dataset.py's."""
    tokenize = prepare_cluster.Tokenize.work

    def dies(self, rank, **kwargs):
        if rank == 1:
            work = self.job.work / "tokens"
            work.mkdir(parents=True, exist_ok=True)
            (work / ".00001.bin.tmp").write_bytes(b"\0" * 10)  # a write cut short
            raise RuntimeError("killed")
        return tokenize(self, rank, **kwargs)

    monkeypatch.setattr(prepare_cluster.Tokenize, "work", dies)
    argv = cluster_argv(corpus, tok_path, tmp_path, "--tasks", "3")
    with pytest.raises(RuntimeError, match="killed"):
        run_cluster(argv, monkeypatch)
    work = tmp_path / f".cluster-{reference.name}"
    done = {stage: sorted(p.name for p in (work / "logs" / stage / "completions").glob("*"))
            for stage in ("clean", "dedup", "tokenize")}
    assert done == {"clean": ["00000", "00001", "00002"], "dedup": ["00000"],
                    "tokenize": ["00000"]}
    assert not (tmp_path / reference.name).exists()

    ran = []
    for step in (prepare_cluster.Clean, prepare_cluster.Dedup, prepare_cluster.Tokenize,
                 prepare_cluster.Merge):
        def logged(self, rank, work=tokenize if step is prepare_cluster.Tokenize else step.work):
            ran.append((self.name, rank))
            return work(self, rank)
        monkeypatch.setattr(step, "work", logged)
    run_cluster(argv, monkeypatch)
    # the finished tasks are not run again; task 2 had not started when task 1 died
    assert ran == [("tokenize", 1), ("tokenize", 2), ("merge", 0)]
    assert_same(reference, tmp_path / reference.name)


def test_the_command_line_runs_tasks_in_processes_and_errors_are_one_line(
        corpus, tok_path, reference, tmp_path):
    cmd = [sys.executable, str(SCRIPT), *cluster_argv(corpus, tok_path, tmp_path)[:-2],
           "--tasks", "2", "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"prepared data: {tmp_path / reference.name}" in done.stdout
    assert_same(reference, tmp_path / reference.name)

    bad = write_jsonl(tmp_path / "bad.jsonl", ["a good line of text, long enough"] * 3)
    bad.write_text(bad.read_text() + "{not json\n")
    done = subprocess.run([sys.executable, str(SCRIPT), "--data_path", str(bad), "--tokenizer",
                           str(tok_path), "--data_dir", str(tmp_path / "bad"), "--tasks", "2",
                           "--workers", "2"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(f"error: {bad}:4: malformed JSON")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["--prep_workers", "2"], "--prep_workers is not taken here"),
    (["--executor", "slurm"], "--executor slurm: give the --partition"),
    (["--tasks", "0"], "--tasks and --workers"),
])
def test_flags_it_cannot_use_are_refused_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        prepare_cluster.parse_args(["--data_path", "builtin", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("executor", ["slurm", "ray"])
def test_cluster_pipelines_are_built_and_their_job_scripts_rendered_without_launching(
        executor, corpus, tok_path, tmp_path):
    args = prepare_cluster.parse_args(cluster_argv(corpus, tok_path, tmp_path)[:-2] + [
        "--executor", executor, "--tasks", "64", "--workers", "16", "--partition", "cpu",
        "--env_command", "source /opt/venv/bin/activate"])
    job = prepare_cluster.plan(args)
    chain, last = [], prepare_cluster.executors(job, args)
    while last is not None:
        chain.insert(0, last)
        last = last.depends
    assert [(type(e.pipeline[0]).__name__, e.tasks) for e in chain] == [
        ("Clean", 64), ("Dedup", 1), ("Tokenize", 64), ("Merge", 1)]
    assert all(type(e).__name__.lower().startswith(executor) for e in chain)
    # the cluster ships each stage pickled: it must come back whole
    copy = dill.loads(dill.dumps(chain[0]))
    assert copy.pipeline[0].job.out_dir == job.out_dir and copy.tasks == 64
    if executor == "slurm":
        script = chain[0].get_launch_file_contents(chain[0].get_sbatch_args(max_array=64),
                                                   "launch_pickled_pipeline executor.pik")
        for line in ("#SBATCH --partition=cpu", "#SBATCH --array=0-63%16",
                     "#SBATCH --job-name=myllm-clean", "source /opt/venv/bin/activate",
                     f"export PYTHONPATH={prepare_cluster.ROOT}:"):
            assert line in script
        assert chain[1].mem_per_cpu_gb == 64 and chain[0].mem_per_cpu_gb == 2
    assert not (tmp_path / job.out_dir.name).exists()  # nothing ran


def test_the_clean_tasks_share_every_line_of_a_file_once(tmp_path, monkeypatch):
    """Chunks of 50 bytes dealt to 3 tasks: every line is read by exactly one task, the one
    whose chunk it starts in, also a line that crosses a chunk's end or starts just at it;
    the keys sort the documents into the files' order."""
    monkeypatch.setattr(prepare_cluster, "CHUNK_BYTES", 50)
    texts = {name: [f"{name} {i} " + "x" * (i * 7 % 60) for i in range(30)] for name in "ab"}
    files = [write_jsonl(tmp_path / f"{name}.jsonl", texts[name]) for name in "ab"]
    job = prepare_cluster.Job([files], [1.0], "tok", {"text_field": "text",
                                                      "skip_bad_lines": False},
                              3, tmp_path / "x", "fp", [])
    shares = [list(prepare_cluster.task_documents(job, rank, {})) for rank in range(3)]
    assert all(shares)
    ordered = sorted((key, text) for share in shares for key, _, text in share)
    assert [text for _, text in ordered] == texts["a"] + texts["b"]
    units = prepare_cluster.shards(job)  # a file's chunks are consecutive units
    first = [next(u for u, unit in enumerate(units) if unit[0] == f) for f in (0, 1)]
    for rank, share in enumerate(shares):  # each line read in the chunk it starts in
        for key, _, _ in share:
            f, offset = key >> 44, (key & (2**44 - 1)) - 1
            assert (first[f] + offset // 50) % 3 == rank


def test_a_bad_line_in_a_later_chunk_is_named_by_its_line_number(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_cluster, "CHUNK_BYTES", 64)
    path = write_jsonl(tmp_path / "a.jsonl", [f"line {i} of some text" for i in range(20)])
    lines = path.read_text().splitlines(keepends=True)
    lines[13] = "{not json\n"
    path.write_text("".join(lines))
    job = prepare_cluster.Job([[path]], [1.0], "tok", {"text_field": "text",
                                                       "skip_bad_lines": False},
                              2, tmp_path / "x", "fp", [])
    with pytest.raises(ValueError, match=rf"^{path}:14: malformed JSON"):
        for rank in range(2):
            list(prepare_cluster.task_documents(job, rank, {}))
