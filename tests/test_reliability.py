"""The faults a real run meets, tried one by one (docs/reliability.md): non-finite steps,
precision changes, crashes mid-write, a full disk, a second run in the same directory,
corrupt files, ranks that die. Each test says the fault and checks that nothing is lost."""

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dcp_to_pth
import files
import train_pretrain
from checkpoint import lock_out_dir
from eval_model import main as eval_main
from model import LMConfig, Transformer
from test_train import (ROOT, TINY_FLAGS, argv_of, corpus,  # noqa: F401 (corpus: a fixture)
                        losses, read_log, run_args)
from tokenizer import load_tokenizer
from train_pretrain import main, masked_lm_loss, parse_args, pretrain


def strict_json_lines(path):
    """The log's records, refusing NaN and Infinity as a strict JSON reader does."""
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in open(path, encoding="utf-8")]


def nan_on_calls(calls):
    """A loss function that returns NaN on the given (1-based) micro-step calls."""
    seen = {"n": 0}

    def loss_fn(*a):
        seen["n"] += 1
        loss = masked_lm_loss(*a)
        return loss * float("nan") if seen["n"] in calls else loss
    return loss_fn


def test_an_interval_of_skipped_steps_logs_null_and_stays_strict_json(corpus, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(train_pretrain, "masked_lm_loss", nan_on_calls({2, 3}))
    result = pretrain(run_args(corpus, tmp_path, "--max_steps", "4", "--accumulation_steps",
                               "1", "--log_interval", "1"))
    train = [r for r in strict_json_lines(result["log_path"]) if r["kind"] == "train"]
    assert [r["loss"] is None for r in train] == [False, True, True, False]
    assert [r["grad_norm"] is None for r in train] == [False, True, True, False]
    assert all(math.isfinite(r["loss"]) for r in train if r["loss"] is not None)
    assert [r["bad_steps"] for r in train] == [0, 1, 2, 2]


def test_nan_in_one_micro_step_skips_the_whole_step_and_only_it(corpus, tmp_path, monkeypatch):
    # 2 micro-steps per step; the NaN comes in micro-step 4, the second half of step 2. With
    # no warmup, step 1's learning rate is the peak whether the run has 1 step or 2, so a run
    # that skips step 2 must end with the weights of a run that stops after step 1.
    one = pretrain(run_args(corpus, tmp_path / "one", "--max_steps", "1",
                            "--accumulation_steps", "2"))
    monkeypatch.setattr(train_pretrain, "masked_lm_loss", nan_on_calls({4}))
    two = pretrain(run_args(corpus, tmp_path / "two", "--max_steps", "2",
                            "--accumulation_steps", "2"))
    assert two["bad_steps"] == 1
    for name, p in one["model"].state_dict().items():
        assert torch.equal(two["model"].state_dict()[name], p), name
    # the step after a bad one starts from clean gradients
    monkeypatch.setattr(train_pretrain, "masked_lm_loss", nan_on_calls({4}))
    three = pretrain(run_args(corpus, tmp_path / "three", "--max_steps", "3",
                              "--accumulation_steps", "2"))
    logged = losses(read_log(three["log_path"]))
    assert three["bad_steps"] == 1 and logged[2] is None and math.isfinite(logged[3])
    assert all(torch.isfinite(p).all() for p in three["model"].parameters())


def test_a_run_of_bad_steps_that_ended_before_a_log_step_still_stops_the_run(corpus, tmp_path,
                                                                            monkeypatch):
    # The host reads the bad-step counts only when it logs (every 4 steps here): steps 2
    # and 3 are bad, step 4 is good again, and the check at step 4 still sees 2 in a row.
    monkeypatch.setattr(train_pretrain, "masked_lm_loss", nan_on_calls({2, 3}))
    with pytest.raises(FloatingPointError, match=r"2 optimizer steps in a row .*\(step 4\)"):
        pretrain(run_args(corpus, tmp_path, "--max_steps", "8", "--accumulation_steps", "1",
                          "--log_interval", "4", "--max_bad_steps", "2"))


@pytest.mark.parametrize("first, second", [("bfloat16", "float16"), ("float16", "float32")])
def test_resume_under_another_precision_continues_with_a_note(corpus, tmp_path, capsys,
                                                              first, second):
    # a bf16 file holds no loss-scaler state, which float16 needs: it starts fresh; the
    # other way round the scaler's state is not needed
    pretrain(run_args(corpus, tmp_path, "--max_steps", "2", "--dtype", first))
    resumed = pretrain(run_args(corpus, tmp_path, "--max_steps", "4", "--dtype", second))
    assert resumed["step"] == 4
    assert f"written by a {first} run and this one trains in {second}" in capsys.readouterr().out
    saved = torch.load(tmp_path / "pretrain_32_resume.pth", weights_only=True)
    assert saved["dtype"] == second and bool(saved["scaler"]) == (second == "float16")
    assert all(torch.isfinite(p).all() for p in resumed["model"].parameters())


class WindowsOs:
    """The os module as Windows shows it to write_atomic: os.name 'nt', and a directory
    cannot be opened (so it cannot be fsynced)."""
    name = "nt"

    def __getattr__(self, attr):
        return getattr(os, attr)

    def open(self, path, flags, mode=0o777):
        if Path(path).is_dir():
            raise PermissionError(13, "Permission denied", str(path))
        return os.open(path, flags, mode)


def test_a_run_writes_its_files_atomically_also_where_directories_cannot_be_fsynced(
        corpus, tmp_path, monkeypatch):
    # Windows: a run that trains its tokenizer, prepares its data and saves checkpoints
    # (the files files.write_atomic writes; the log and the lock file are appended to)
    monkeypatch.setattr(files, "os", WindowsOs())
    data, _ = corpus
    args = parse_args(TINY_FLAGS + ["--data_path", str(data), "--out_dir", str(tmp_path),
                                    "--device", "cpu", "--vocab_size", "300", "--max_steps", "2"])
    result = pretrain(args)
    assert result["step"] == 2
    assert load_tokenizer(tmp_path / "tokenizer.json").get_vocab_size() == 300
    assert torch.load(result["weights_path"], weights_only=True)
    assert torch.load(tmp_path / "pretrain_32_resume.pth", weights_only=True)["step"] == 2


def test_a_second_run_in_the_same_out_dir_is_refused_at_start(corpus, tmp_path):
    # a run that is training there now: another process holding the lock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import checkpoint; "
        "held = checkpoint.lock_out_dir(sys.argv[2]); print('locked', flush=True); "
        "time.sleep(60)"),
        str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SystemExit, match=f"another run .pid {holder.pid} on .*since "
                                             ".*is training in --out_dir .*another --out_dir"):
            main(argv_of(corpus, tmp_path, "--max_steps", "1"))
        assert not (tmp_path / "data").exists()  # refused before preparing anything
    finally:
        holder.kill()
        holder.wait()
    assert pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))["step"] == 1


def test_the_lock_belongs_to_the_run_not_to_the_workers_it_forks(tmp_path):
    # a child forked while the lock is held (a DataLoader worker, a preparation process)
    # outlives its parent's SIGKILL: the directory must be free as soon as the run is gone
    crash = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys, time; sys.path.insert(0, sys.argv[1]); import checkpoint; "
        "held = checkpoint.lock_out_dir(sys.argv[2])\n"
        "if os.fork() == 0: time.sleep(30); os._exit(0)\n"
        "os.kill(os.getpid(), signal.SIGKILL)"), str(ROOT), str(tmp_path)])
    assert crash.returncode == -signal.SIGKILL
    lock_out_dir(tmp_path).close()  # free, though the child still runs


def test_a_crashed_run_does_not_leave_its_out_dir_locked(corpus, tmp_path):
    crash = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); import checkpoint; "
        "held = checkpoint.lock_out_dir(sys.argv[2]); os.kill(os.getpid(), signal.SIGKILL)"),
        str(ROOT), str(tmp_path)])
    assert crash.returncode == -signal.SIGKILL and (tmp_path / ".lock").exists()
    assert pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))["step"] == 1


def test_an_out_dir_that_cannot_be_written_is_refused_before_the_data_is_read(corpus,
                                                                               tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit, match="--out_dir .*a_file/out cannot be written"):
        main(argv_of(corpus, tmp_path / "a_file" / "out", "--max_steps", "1"))


def test_a_full_disk_during_a_save_stops_the_run_and_the_rerun_continues_exactly(
        corpus, tmp_path, monkeypatch):
    flags = ("--max_steps", "6", "--save_interval", "2", "--accumulation_steps", "1")
    straight = pretrain(run_args(corpus, tmp_path / "straight", *flags))
    real_save, calls = torch.save, {"n": 0}

    def disk_fills_at_the_second_save(obj, f):  # saves 1-2: step 2; save 3: step 4's weights
        calls["n"] += 1
        if calls["n"] == 3:
            f.write(b"the first bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    out = tmp_path / "full"
    monkeypatch.setattr(torch, "save", disk_fills_at_the_second_save)
    with pytest.raises(SystemExit, match=f"{out}/pretrain_32.pth: no space left on its disk "
                                         r"\(about [\d,.]+ MB needed, [\d,.]+ MB free\)"):
        main(argv_of(corpus, out, *flags))
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(out / "pretrain_32_resume.pth", weights_only=True)["step"] == 2
    resumed = pretrain(run_args(corpus, out, *flags))  # space freed: the same command
    assert resumed["step"] == 6
    for name, p in straight["model"].state_dict().items():
        torch.testing.assert_close(resumed["model"].state_dict()[name], p, atol=1e-6, rtol=0)


def cut_in_half(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:len(data) // 2])


def overwrite_start(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(b"\x00garbage" + data[8:])


@pytest.mark.parametrize("damage, file, names", [
    (cut_in_half, "pretrain_32_resume.pth", "--resume none"),
    (overwrite_start, "pretrain_32_resume.pth", "--resume none"),
    (cut_in_half, "data/*/meta.json", "prepare it again"),
    (cut_in_half, "data/*/train.bin", "prepare it again"),
    (cut_in_half, "data/*/train.idx.npy", "prepare it again"),
    (overwrite_start, "data/*/val.idx.npy", "prepare it again"),
    (cut_in_half, "tokenizer.json", "pass one written by tokenizer.py"),
])
def test_a_damaged_file_is_one_line_naming_it_and_the_fix(corpus, tmp_path, damage, file,
                                                           names):
    data, tok = corpus
    own_tok = tmp_path / "tokenizer.json"
    own_tok.write_bytes(Path(tok).read_bytes())
    argv = argv_of(corpus, tmp_path, "--max_steps", "1", "--tokenizer", str(own_tok))
    main(argv)
    path = next(tmp_path.glob(file))
    damage(path)
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--max_steps", "2"])
    message = str(stop.value.code)
    assert "\n" not in message and str(path) in message and names in message, message


@pytest.mark.parametrize("damage", [cut_in_half, overwrite_start])
def test_a_damaged_weights_file_is_one_line_in_evaluation(corpus, tmp_path, damage, capsys):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))
    damage(tmp_path / "pretrain_32.pth")
    code = eval_main(["--out_dir", str(tmp_path), "--dim", "32", "--n_layers", "2",
                      "--tokenizer", str(corpus[1]), "--device", "cpu", "--prompt", "a"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and f"{tmp_path}/pretrain_32.pth" in err, err


def faulty(fault, out_dir, corpus, *extra, nproc=0, restarts=0):
    """tests/faulty_run.py under `fault` (in torchrun with nproc processes, or alone);
    returns the finished process (stdout and stderr as text)."""
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                "--max-restarts", str(restarts)] if nproc else []
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), FAULT=fault)
    return subprocess.run([sys.executable, *torchrun, str(ROOT / "tests" / "faulty_run.py"),
                           *argv_of(corpus, out_dir, *extra)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # a hang fails here


def same_weights(a, b, atol=0.0):
    a, b = (torch.load(p, weights_only=True) if not isinstance(p, dict) else p for p in (a, b))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=atol, rtol=0)


def test_preparation_that_outlasts_the_process_group_timeout_does_not_fail(corpus, tmp_path):
    # the first process prepares for 10 s more, under a 5 s collective timeout
    done = faulty("slow_prepare:10", tmp_path, corpus, "--max_steps", "2", nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    same_weights(tmp_path / "rank0.pt", tmp_path / "rank1.pt")


def test_no_host_read_per_step_under_ddp_but_the_stop_flag(corpus, tmp_path):
    """Between logs, a 2-process run reads no tensor on the host but the stop signal's flag,
    which its own gloo group keeps in host memory, also when training on GPUs (the read
    waits for nothing). Steps 1 and 20 log, and step 20 evaluates: those read."""
    done = faulty("count_reads", tmp_path, corpus, "--max_steps", "20", "--log_interval",
                  "100", "--accumulation_steps", "1", "--optimizer", "muon", nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        reads = json.loads((tmp_path / f"reads_rank{rank}.json").read_text())
        for step in range(2, 20):
            assert reads.get(str(step)) == [["cpu", "item"]], (rank, step, reads.get(str(step)))


RESTART_FLAGS = ("--max_steps", "6", "--save_interval", "2", "--accumulation_steps", "1")


@pytest.fixture(scope="module")
def two_process_run(corpus, tmp_path_factory):
    """The weights of an uninterrupted 2-process run of RESTART_FLAGS."""
    out = tmp_path_factory.mktemp("straight")
    done = faulty("none", out, corpus, *RESTART_FLAGS, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "rank0.pt"


@pytest.mark.parametrize("fault, seen", [("crash", "injected failure on rank 1"),
                                         ("kill", "failed (exitcode: -9) local_rank: 1")])
def test_a_rank_that_dies_stops_the_others_and_a_restart_ends_with_the_same_weights(
        corpus, tmp_path, two_process_run, fault, seen):
    # rank 1 raises (or is killed) in step 5, after the save at step 4; rank 0 must not
    # wait for it forever, and torchrun's restart continues from the resume file of step 4
    done = faulty(f"{fault}:1:5", tmp_path, corpus, *RESTART_FLAGS, nproc=2, restarts=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert seen in done.stderr
    same_weights(two_process_run, tmp_path / "rank0.pt")
    log = read_log(next((tmp_path / "logs").iterdir()))
    assert [r["step"] for r in log if r["kind"] == "resume"] == [4]


SHARDED_FLAGS = (*RESTART_FLAGS, "--fsdp")  # Muon: the default at this width


@pytest.fixture(scope="module")
def sharded_run(corpus, tmp_path_factory):
    """OUT_DIR of an uninterrupted 2-process --fsdp run of SHARDED_FLAGS."""
    out = tmp_path_factory.mktemp("sharded")
    done = faulty("none", out, corpus, *SHARDED_FLAGS, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_a_sharded_run_that_crashes_continues_from_its_shards_to_the_same_weights(
        corpus, tmp_path, sharded_run):
    """--fsdp: every rank writes its shards into OUT_DIR/pretrain_32_resume/; rank 1 dies in
    step 5, and torchrun's restart continues from the shards of step 4. Those shards also
    continue on 4 ranks of 2 sequences (the reader reshards) and in one process that
    accumulates what the two ranks read: every way ends with the same weights."""
    flags = SHARDED_FLAGS
    done = faulty("crash:1:5", tmp_path / "restarted", corpus, *flags, nproc=2, restarts=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "injected failure on rank 1" in done.stderr
    same_weights(sharded_run / "pretrain_32.pth", tmp_path / "restarted" / "pretrain_32.pth")
    log = read_log(next((tmp_path / "restarted" / "logs").iterdir()))
    assert [r["step"] for r in log if r["kind"] == "resume"] == [4]
    assert (tmp_path / "restarted" / "pretrain_32_resume" / ".metadata").is_file()
    assert not (tmp_path / "restarted" / "pretrain_32_resume.pth").exists()
    # the offline converter gives the weights file the run wrote
    dcp_to_pth.main([str(tmp_path / "restarted" / "pretrain_32_resume"),
                     str(tmp_path / "converted.pth")])
    same_weights(tmp_path / "restarted" / "pretrain_32.pth", tmp_path / "converted.pth")
    state = torch.load(tmp_path / "converted.pth", weights_only=True)
    vocab = state["tok_embeddings.weight"].shape[0]
    Transformer(LMConfig(dim=32, n_layers=2, vocab_size=vocab)).load_state_dict(state)

    died = faulty("crash:1:5", tmp_path / "plain", corpus, *flags, nproc=2)
    assert died.returncode != 0
    shutil.copytree(tmp_path / "plain", tmp_path / "four")
    four = faulty("none", tmp_path / "four", corpus, *flags, "--batch_size", "2", nproc=4)
    assert four.returncode == 0, four.stderr[-3000:]
    same_weights(sharded_run / "pretrain_32.pth", tmp_path / "four" / "pretrain_32.pth",
                 atol=1e-5)
    result = pretrain(run_args(corpus, tmp_path / "plain", *RESTART_FLAGS,
                               "--accumulation_steps", "2"))
    assert result["step"] == 6
    same_weights(sharded_run / "pretrain_32.pth", tmp_path / "plain" / "pretrain_32.pth",
                 atol=1e-5)


def test_bf16_sharded_steps_are_finite_and_track_float32(corpus, tmp_path, sharded_run):
    """The sharding's precision policy: weights gathered in bf16, gradients reduced in
    float32; the losses stay near the float32 run's."""
    done = faulty("none", tmp_path, corpus, *SHARDED_FLAGS, "--dtype", "bfloat16", nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [[r["loss"] for r in read_log(next((out / "logs").iterdir())) if r["kind"] == "train"]
            for out in (sharded_run, tmp_path)]
    assert len(runs[1]) == 6 and all(math.isfinite(x) for x in runs[1])
    assert runs[1] == pytest.approx(runs[0], abs=0.05)


def test_a_ddp_resume_file_continues_under_fsdp(corpus, tmp_path, two_process_run):
    died = faulty("crash:1:5", tmp_path, corpus, *RESTART_FLAGS, nproc=2)
    assert died.returncode != 0 and (tmp_path / "pretrain_32_resume.pth").is_file()
    done = faulty("none", tmp_path, corpus, *RESTART_FLAGS, "--fsdp", nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    log = read_log(next((tmp_path / "logs").iterdir()))
    assert [r["step"] for r in log if r["kind"] == "resume"] == [4]
    same_weights(two_process_run, tmp_path / "pretrain_32.pth", atol=1e-5)


def test_nan_on_one_rank_only_makes_every_rank_skip_that_step(corpus, tmp_path):
    done = faulty("nan:1:3", tmp_path, corpus, "--max_steps", "4", "--accumulation_steps", "1",
                  nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    same_weights(tmp_path / "rank0.pt", tmp_path / "rank1.pt")  # the ranks did not diverge
    train = [r for r in read_log(next((tmp_path / "logs").iterdir())) if r["kind"] == "train"]
    assert [r["loss"] is None for r in train] == [False, False, True, False]
    assert train[-1]["bad_steps"] == 1


def test_sigkill_in_the_middle_of_a_checkpoint_write_loses_only_the_steps_since_the_last_save(
        corpus, tmp_path):
    straight = pretrain(run_args(corpus, tmp_path / "straight", *RESTART_FLAGS))
    out = tmp_path / "killed"
    # saves 1 and 2 are step 2's weights and resume files; save 3, step 4's weights, is cut
    done = faulty("kill_in_save:3", out, corpus, *RESTART_FLAGS)
    assert done.returncode == -signal.SIGKILL
    assert (out / ".pretrain_32.pth.tmp").exists()  # the half-written file, never renamed
    assert torch.load(out / "pretrain_32_resume.pth", weights_only=True)["step"] == 2
    torch.load(out / "pretrain_32.pth", weights_only=True)  # step 2's, whole
    resumed = pretrain(run_args(corpus, out, *RESTART_FLAGS))
    assert resumed["step"] == 6
    same_weights(straight["model"].state_dict(), resumed["model"].state_dict(), atol=1e-6)
    assert not list(out.glob(".*.tmp"))


def test_sigkill_in_the_middle_of_a_sharded_save_keeps_the_previous_shards(corpus, tmp_path,
                                                                           sharded_run):
    """--fsdp: rank 0 is killed once step 4's shards are written, before their directory is
    renamed into place: the directory of step 2 is whole, and the run continues from it."""
    flags = SHARDED_FLAGS
    out = tmp_path / "killed"
    done = faulty("kill_after_shards:2", out, corpus, *flags, nproc=2)  # saves: steps 2, 4
    assert done.returncode != 0
    assert (out / ".pretrain_32_resume.tmp" / ".metadata").is_file()
    assert not (out / ".pretrain_32_resume.tmp" / "run.pt").exists()
    assert torch.load(out / "pretrain_32_resume" / "run.pt", weights_only=True)["step"] == 2
    resumed = faulty("none", out, corpus, *flags, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    same_weights(sharded_run / "pretrain_32.pth", out / "pretrain_32.pth")
    assert not (out / ".pretrain_32_resume.tmp").exists()


def test_sigkill_during_data_preparation_leaves_nothing_that_a_rerun_uses(corpus, tmp_path):
    clean = pretrain(run_args(corpus, tmp_path / "clean", "--max_steps", "1"))
    out = tmp_path / "killed"
    done = faulty("kill_in_prepare", out, corpus, "--max_steps", "1")
    assert done.returncode == -signal.SIGKILL
    # left: the private directory and the marker of the killed process; the rerun takes
    # the marker over (its process is dead) and leaves only the finished directory
    assert sorted(p.name.split("-")[0] for p in (out / "data").iterdir()) == [".building",
                                                                             ".tmp"]
    rerun = pretrain(run_args(corpus, out, "--max_steps", "1"))
    prepared = [p for p in (out / "data").iterdir()]
    assert [p.name for p in prepared] == [p.name for p in (tmp_path / "clean" / "data").iterdir()]
    for file in ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy"):
        assert (prepared[0] / file).read_bytes() == (
            tmp_path / "clean" / "data" / prepared[0].name / file).read_bytes(), file
    same_weights(clean["model"].state_dict(), rerun["model"].state_dict())


def test_sigterm_in_the_last_step_of_an_epoch_resumes_into_the_next(corpus, tmp_path,
                                                                     monkeypatch):
    flags = ("--epochs", "2", "--accumulation_steps", "1", "--save_interval", "1000")
    straight = pretrain(run_args(corpus, tmp_path / "straight", *flags))
    steps_per_epoch = straight["step"] // 2
    calls = {"n": 0}

    def sigterm_in_the_epochs_last_step(*a):
        calls["n"] += 1
        if calls["n"] == steps_per_epoch:
            os.kill(os.getpid(), signal.SIGTERM)
        return masked_lm_loss(*a)

    monkeypatch.setattr(train_pretrain, "masked_lm_loss", sigterm_in_the_epochs_last_step)
    stopped = pretrain(run_args(corpus, tmp_path / "b", *flags))
    assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == steps_per_epoch
    monkeypatch.setattr(train_pretrain, "masked_lm_loss", masked_lm_loss)
    resumed = pretrain(run_args(corpus, tmp_path / "b", *flags))
    assert resumed["step"] == straight["step"]
    same_weights(straight["model"].state_dict(), resumed["model"].state_dict(), atol=1e-6)


def prepare_in_a_process(corpus, cache_dir, host, results):
    """One "node's" first process: prepare the corpus into the shared cache_dir, as machine
    `host`; results[host] = what it printed."""
    import contextlib
    import io
    import socket

    from prepare import prepare

    socket.gethostname = lambda: host  # another machine, sharing the folder
    data, tok = corpus
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        prepare([str(data)], tok, cache_dir, num_workers=1)
    results[host] = printed.getvalue()


def test_nodes_sharing_the_folder_prepare_the_data_once(corpus, tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Manager().dict()
    nodes = [context.Process(target=prepare_in_a_process, args=(corpus, tmp_path, host, results))
             for host in ("node0", "node1", "node2")]
    for node in nodes:
        node.start()
    for node in nodes:
        node.join(timeout=300)
    assert [node.exitcode for node in nodes] == [0, 0, 0]
    built = [host for host, out in results.items() if "prepared " in out]
    assert len(built) == 1, dict(results)  # the others waited for it, or found it done
    assert all("reusing" in out for host, out in results.items() if host not in built)
    assert not list(tmp_path.glob(".building-*"))  # the marker went with the building


def test_a_marker_whose_holder_is_gone_is_taken_over(tmp_path, monkeypatch):
    marker = tmp_path / ".building-x"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    marker.write_text(json.dumps({"host": files.socket.gethostname(), "pid": dead.pid}))
    assert files.claim(marker) == (True, None)  # a dead process of this machine
    marker.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert files.claim(marker) == (False, {"host": "elsewhere", "pid": 1})  # touched lately
    old = marker.stat().st_mtime - files.STALE_SECONDS - 1
    os.utime(marker, (old, old))
    assert files.claim(marker) == (True, None)  # untouched for too long: its holder is gone
    with files.holding(marker, every=0.05):  # while held, it is touched
        os.utime(marker, (old, old))
        time.sleep(0.3)
        assert marker.stat().st_mtime > old + 1
    assert not marker.exists()
