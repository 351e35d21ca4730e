"""scripts/plot_loss.py: reads train_pretrain.py's JSONL logs and draws them.

matplotlib is needed here (requirements-dev.txt): without it these tests fail, never skip.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import plot_loss  # noqa: E402


def write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run_log(path, scale=1.0):
    """A short run: a header, train records every step, val records every 2 steps."""
    records = [{"kind": "run", "config": {"dim": 64}, "args": {"batch_size": 2}}]
    for step in range(1, 7):
        records.append({"kind": "train", "step": step, "tokens": 1024 * step,
                        "loss": scale * 6 / step, "lr": 1e-3 * min(step, 3) / 3,
                        "grad_norm": 1.0, "tokens_per_sec": 500.0, "mfu": 0.1})
        if step % 2 == 0:
            records.append({"kind": "val", "step": step, "tokens": 1024 * step,
                            "val_loss": scale * 6.5 / step, "val_ppl": 1.0})
    records.append({"kind": "something_new", "step": 6})
    return write_log(path, records)


def test_plot_of_two_runs_is_a_png_with_their_curves(tmp_path):
    a, b = run_log(tmp_path / "a.jsonl"), run_log(tmp_path / "b.jsonl", scale=0.5)
    out = tmp_path / "loss.png"
    plot_loss.main([str(a), str(b), "--out", str(out), "--logx"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = plot_loss.draw([("a.jsonl", plot_loss.read_log(a)), ("b.jsonl", plot_loss.read_log(b))],
                         logx=True)
    loss_ax, lr_ax = fig.axes
    assert loss_ax.get_xscale() == "log"
    lines = {line.get_label(): line for line in loss_ax.get_lines() + lr_ax.get_lines()}
    assert set(lines) == {f"{run} {curve}" for run in ("a.jsonl", "b.jsonl")
                          for curve in ("train", "val", "lr")}
    assert list(lines["b.jsonl train"].get_xdata()) == [1024 * s for s in range(1, 7)]
    assert list(lines["b.jsonl val"].get_ydata()) == [3.25 / s for s in (2, 4, 6)]
    assert max(lines["a.jsonl lr"].get_ydata()) == pytest.approx(1e-3)


def test_a_resumed_run_keeps_the_later_record_of_a_repeated_step(tmp_path):
    log = write_log(tmp_path / "r.jsonl", [
        {"kind": "train", "step": 1, "tokens": 10, "loss": 5.0, "lr": 1.0},
        {"kind": "train", "step": 2, "tokens": 20, "loss": 4.0, "lr": 1.0},
        {"kind": "resume", "step": 1},
        {"kind": "train", "step": 2, "tokens": 20, "loss": 3.9, "lr": 1.0},
    ])
    train = plot_loss.read_log(log)["train"]
    assert [(r["step"], r["loss"]) for r in train] == [(1, 5.0), (2, 3.9)]


def test_malformed_line_is_an_error_naming_file_and_line(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"kind": "run"}\n{"kind": "train", "step": 1, "tokens": 8, "loss": 2.0}\n'
                   '{"kind": "train", "step": 2,\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:3: not valid JSON"):
        plot_loss.main([str(log), "--out", str(tmp_path / "x.png")])


def test_record_without_its_fields_is_an_error_naming_file_and_line(tmp_path):
    log = write_log(tmp_path / "short.jsonl", [{"kind": "val", "step": 1, "tokens": 8}])
    with pytest.raises(ValueError, match=r"short.jsonl:1: a val record without val_loss"):
        plot_loss.read_log(log)


def test_empty_log_and_missing_log_are_errors(tmp_path):
    empty = write_log(tmp_path / "empty.jsonl", [{"kind": "run", "config": {}, "args": {}}])
    with pytest.raises(SystemExit, match="empty.jsonl has no train or val records"):
        plot_loss.main([str(empty)])
    with pytest.raises(SystemExit, match="nope.jsonl not found"):
        plot_loss.main([str(tmp_path / "nope.jsonl")])


def test_missing_matplotlib_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    log = run_log(tmp_path / "a.jsonl")
    with pytest.raises(SystemExit, match="pip install matplotlib"):
        plot_loss.main([str(log), "--out", str(tmp_path / "x.png")])
