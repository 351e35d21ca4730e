"""The faults a real run meets, tried one by one (README, Reliability): non-finite steps,
precision changes, crashes mid-write, a full disk, a second run in the same directory,
corrupt files, ranks that die. Each test says the fault and checks that nothing is lost."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import common
import train_pretrain
from checkpoint import lock_out_dir
from eval_model import main as eval_main
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


def test_every_file_is_written_by_one_atomic_writer_that_works_on_windows(corpus, tmp_path,
                                                                          monkeypatch):
    # a run that trains its tokenizer, prepares its data and saves checkpoints: each file
    # goes through common.write_atomic, which must not fsync a directory there
    monkeypatch.setattr(common, "os", WindowsOs())
    data, _ = corpus
    args = parse_args(TINY_FLAGS + ["--data_path", str(data), "--out_dir", str(tmp_path),
                                    "--device", "cpu", "--vocab_size", "300", "--max_steps", "2"])
    result = pretrain(args)
    assert result["step"] == 2
    assert load_tokenizer(tmp_path / "tokenizer.json").get_vocab_size() == 300
    assert torch.load(result["weights_path"], weights_only=True)
    assert torch.load(tmp_path / "pretrain_32_resume.pth", weights_only=True)["step"] == 2


def test_a_second_run_in_the_same_out_dir_is_refused_at_start(corpus, tmp_path, capsys):
    held = lock_out_dir(tmp_path)  # a run that is training there now
    try:
        with pytest.raises(SystemExit, match="another run .pid \\d+ on .*is training in "
                                             "--out_dir .*pass another --out_dir"):
            main(argv_of(corpus, tmp_path, "--max_steps", "1"))
        assert not (tmp_path / "data").exists()  # refused before preparing anything
    finally:
        held.close()
    assert pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))["step"] == 1


def test_a_crashed_run_does_not_leave_its_out_dir_locked(corpus, tmp_path):
    crash = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); import checkpoint; "
        "checkpoint.lock_out_dir(sys.argv[2]); os.kill(os.getpid(), signal.SIGKILL)"),
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
