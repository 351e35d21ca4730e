"""scripts/speedrun.py: time to a target bpb, the training clock, the Chinese corpus and a
tiny comparison end to end."""

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import speedrun  # noqa: E402


def test_time_to_target_interpolates_between_the_two_evaluations_around_it():
    curve = [(10, 5.0, 3.0), (20, 10.0, 2.0), (30, 15.0, 1.5)]  # (step, seconds, bpb)
    assert speedrun.time_to_target(curve, 2.5) == pytest.approx((15, 7.5))  # half-way
    assert speedrun.time_to_target(curve, 1.75) == pytest.approx((25, 12.5))
    assert speedrun.time_to_target(curve, 3.5) == (10, 5.0)  # at the first evaluation
    assert speedrun.time_to_target(curve, 1.0) is None


def test_training_clock_adds_each_interval_tokens_over_its_rate():
    records = [{"kind": "run"},
               {"kind": "train", "step": 1, "tokens": 100, "tokens_per_sec": 50.0},
               {"kind": "val", "step": 1},
               {"kind": "train", "step": 5, "tokens": 500, "tokens_per_sec": 200.0}]
    assert speedrun.train_seconds(records) == {1: 2.0, 5: 4.0}  # 100/50, then + 400/200


def fake_poetry(root: Path, n_poems=60):
    """A dist folder laid out as chinese-poetry's, of random characters."""
    rng = random.Random(0)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 300)]
    def line():
        return "".join(rng.choice(chars) for _ in range(7)) + "。"
    (root / "quantangshi").mkdir(parents=True)
    (root / "songci").mkdir()
    tang = [{"title": line(), "author": "甲", "paragraphs": [line() for _ in range(4)]}
            for _ in range(n_poems // 2)]
    song = [{"rhythmic": line(), "author": "乙", "paragraphs": [line() for _ in range(6)]}
            for _ in range(n_poems // 2)]
    (root / "quantangshi" / "poet.tang.0.json").write_text(json.dumps(tang), encoding="utf-8")
    (root / "songci" / "ci.song.0.json").write_text(json.dumps(song), encoding="utf-8")
    return root, tang, song


def test_poems_become_one_jsonl_document_each(tmp_path):
    dist, tang, song = fake_poetry(tmp_path / "dist")
    path = speedrun.write_poetry_jsonl(dist, tmp_path / "poems.jsonl", max_docs=1000)
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(texts) == len(tang) + len(song)
    first = tang[0]
    assert texts[0] == "\n".join([first["title"], first["author"], *first["paragraphs"]])
    assert texts[-1].startswith(song[-1]["rhythmic"] + "\n乙\n")


def test_tiny_comparison_prints_a_row_per_variant(tmp_path, capsys):
    dist, _, _ = fake_poetry(tmp_path / "dist")
    argv = ["--corpus", "zh", "--zh_poetry", str(dist), "--shape", "--dim 32 --n_layers 2",
            "--max_seq_len", "32", "--batch_size", "4", "--max_steps", "4", "--eval_interval",
            "2", "--vocab_size", "300", "--val_fraction", "0.1", "--seeds", "0",
            "--work_dir", str(tmp_path / "work")]
    results = speedrun.main(argv + ["--variant", "base=", "cosine=--lr_schedule cosine"])
    assert [step for step, _, _ in results["cosine"][0]["curve"]] == [2, 4]
    out = capsys.readouterr().out
    assert "| base | `(defaults)` |" in out and "| cosine | `--lr_schedule cosine` |" in out
    log_files = sorted((tmp_path / "work" / "zh" / "base-seed0" / "logs").iterdir())
    again = speedrun.main(argv + ["--variant", "base="])  # the same run: reused, not rerun
    assert again["base"] == results["base"]
    assert sorted((tmp_path / "work" / "zh" / "base-seed0" / "logs").iterdir()) == log_files


def test_a_run_stopped_by_a_signal_is_not_kept_as_a_result(tmp_path, monkeypatch):
    monkeypatch.setattr(speedrun, "PretrainDataset", lambda *args: [])
    monkeypatch.setattr(speedrun.train_pretrain, "main",
                        lambda argv: {"stopped_by": "SIGTERM", "log_path": None})
    args = speedrun.parse_args(["--work_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="stopped by SIGTERM"):
        speedrun.run_one(args, "base", "", 0, tmp_path / "tok.json", tmp_path / "data")
    assert not (tmp_path / "en" / "base-seed0" / "speedrun.json").exists()
