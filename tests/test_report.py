"""The run report (report.py) and what training logs for it: probes, samples, times.

The report's numbers are checked against the log's records, its pictures against the PNG
format itself (signature, chunk lengths, CRCs), the logged probes against eval_model.py
--probe run separately on the saved weights.
"""

import io
import json
import re
import struct
import sys
import zlib
from contextlib import redirect_stdout
from pathlib import Path

import pytest

import eval_model
import evaluator
from test_train import ROOT, corpus, read_log, run_args  # noqa: F401 (corpus: a fixture)
import train_pretrain
from train_pretrain import parse_args, pretrain

sys.path.insert(0, str(ROOT / "scripts"))
import report  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes):
    """The chunk types of a PNG file, each chunk's CRC checked (the PNG specification)."""
    assert data[:8] == PNG_SIGNATURE
    types, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in chunk {kind}"
        types.append(kind)
        at += 12 + length
    return types


@pytest.fixture(scope="module")
def tiny_run(corpus, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """A 12-step run evaluated every 4 steps, with the shipped English probes."""
    out = tmp_path_factory.mktemp("run")
    result = pretrain(run_args(corpus, out, "--max_steps", "12", "--eval_interval", "4",
                               "--log_interval", "2", "--accumulation_steps", "1",
                               "--probe", "probes/builtin_en.jsonl"))
    return result, out, read_log(result["log_path"])


def test_a_run_writes_its_report_with_valid_pictures_and_the_logs_numbers(tiny_run):
    result, out, log = tiny_run
    path = out / "reports" / result["log_path"].stem / "report.md"
    text = path.read_text(encoding="utf-8")
    assert "bits per byte" in text
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert {"loss.png", "bpb.png", "grad_norm.png", "probes.png", "throughput.png"} <= \
        set(pictures)
    for name in pictures:  # relative links to PNG files beside report.md
        chunks = png_chunks((path.parent / name).read_bytes())
        assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    vals = [r for r in log if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [4, 8, 12]
    for r in vals:  # the validation table: one row per evaluation, the log's figures
        assert (f"| {r['step']:,} | {r['tokens']:,} | {r['val_loss']:.4f} | "
                f"{r['val_ppl']:.2f} | {r['val_bpb']:.4f} |") in text
    summary_row = next(line for line in text.splitlines()
                       if line.startswith(f"| {path.parent.name} | 12 |"))
    last_train = [r for r in log if r["kind"] == "train"][-1]
    for figure in (f"{vals[-1]['val_loss']:.4f}", f"{vals[-1]['val_bpb']:.4f}",
                   f"{last_train['loss']:.4f}", f"{last_train['tokens']:,}"):
        assert figure in summary_row


def test_the_report_shows_the_data_report_and_every_health_check(tiny_run):
    result, out, _ = tiny_run
    text = (out / "reports" / result["log_path"].stem / "report.md").read_text()
    meta = json.loads(next((out / "data").glob("*/meta.json")).read_text())
    read = meta["report"]["documents_read"]
    assert re.search(rf"documents read\s+{read:,}", text)
    for split in ("train", "val"):
        assert f"{meta['splits'][split]['tokens']:,} tokens" in text
    from health import CHECKS
    # the checks tests/test_health.py makes fire, each with a verdict in the report
    assert set(CHECKS) == {"first_loss", "plateau", "loss_spike", "grad_spike", "overfitting",
                           "slow"}
    for what in CHECKS.values():
        verdicts = r"(: warning\*\*|: ok \(|: not checked \()"
        assert re.search(rf"- (\*\*)?{re.escape(what)}{verdicts}", text)
    # train records at steps 1, 2, 4, ..., 12 (warmup 0): too few for the plateau check (2 x 10)
    assert "loss falling after warmup: not checked (7 train records after warmup" in text


def test_probes_logged_in_training_equal_eval_model_probe_on_the_saved_weights(tiny_run,
                                                                               corpus):  # noqa: F811
    result, _, log = tiny_run
    probes = [r for r in log if r["kind"] == "probe"]
    assert [r["step"] for r in probes] == [4, 8, 12]
    out = io.StringIO()
    with redirect_stdout(out):
        assert eval_model.main(["--ckpt", str(result["weights_path"]), "--tokenizer",
                                str(corpus[1]), "--device", "cpu", "--probe",
                                "probes/builtin_en.jsonl"]) == 0
    # "   * log p   -12.345 ..." is the answer's line in eval_model's report
    answers = [float(m) for m in re.findall(r"^   \* log p\s+(-?[\d.]+)", out.getvalue(), re.M)]
    assert len(answers) == len(probes[-1]["answer_logprob"]) == 12
    assert probes[-1]["answer_logprob"] == pytest.approx(answers, abs=6e-4)  # printed %.3f
    accuracy = re.search(r"accuracy: (\d+)/12", out.getvalue()).group(1)
    assert probes[-1]["accuracy"] == int(accuracy) / 12


def test_samples_are_logged_at_every_evaluation_and_shown_in_the_report(tiny_run):
    result, out, log = tiny_run
    samples = [r for r in log if r["kind"] == "sample"]
    assert [r["step"] for r in samples] == [4, 8, 12]
    prompts = [s["prompt"] for s in samples[-1]["samples"]]
    assert prompts == evaluator.SAMPLE_PROMPTS_EN[:3]
    text = (out / "reports" / result["log_path"].stem / "report.md").read_text()
    for record in samples:
        for s in record["samples"]:  # English continuations: newlines are the only escapes
            assert f"step {record['step']:>7,} | {s['text']}" in text.replace("\\n", "\n")


def test_without_matplotlib_the_report_has_its_tables_and_says_how_to_get_pictures(
        tiny_run, tmp_path, monkeypatch):
    result, _, log = tiny_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    path = report.write_report([result["log_path"]], tmp_path)
    text = path.read_text()
    assert "pip install matplotlib" in text and "![" not in text
    assert not list(tmp_path.glob("*.png"))
    last_val = [r for r in log if r["kind"] == "val"][-1]
    assert f"{last_val['val_bpb']:.4f}" in text


def constructed_log(path, starts, vocab=6400, shape=None):
    """A log of len(starts) segments (each a start time), 3 train records 10 s apart and a
    val record each; shape: the run record's settings (dim etc.)."""
    shape = shape or {}
    records, step = [], 0
    for n, t0 in enumerate(starts):
        records.append({"kind": "resume" if n else "run", "step": step, "time": t0,
                        "config": {"dim": shape.get("dim", 32), "n_layers": 2,
                                   "vocab_size": vocab},
                        "args": {"max_seq_len": 32, "batch_size": 4, "accumulation_steps": 1},
                        "world_size": 1, "device": "cpu"})
        for i in range(1, 4):
            step += 1
            records.append({"kind": "train", "step": step, "tokens": 128 * step,
                            "loss": 8.0 - step / 10, "lr": 1e-3, "grad_norm": 1.0,
                            "tokens_per_sec": 100.0, "time": t0 + 10 * i})
        records.append({"kind": "val", "step": step, "tokens": 128 * step,
                        "val_loss": 8.0 - step / 10, "val_ppl": 1.0, "val_bpb": 3.0,
                        "time": t0 + 30})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_wall_time_adds_the_segments_of_a_resumed_run_not_the_gap(tmp_path):
    log = report.read_log(constructed_log(tmp_path / "r.jsonl", [1000.0, 5000.0]))
    assert log["wall_s"] == 60.0  # 30 s per segment; the 3,970 s between them are not counted
    path = report.write_report([tmp_path / "r.jsonl"], tmp_path / "out")
    assert "| 1 min 00 s |" in path.read_text()


def test_several_logs_make_one_report_that_lists_each_run(tmp_path):
    a = constructed_log(tmp_path / "a.jsonl", [0.0])
    b = constructed_log(tmp_path / "b.jsonl", [0.0])
    report.main([str(a), str(b), "--out", str(tmp_path / "both")])
    text = (tmp_path / "both" / "report.md").read_text()
    assert "## a" in text and "## b" in text
    for run in ("a", "b"):  # a summary row each: 3 steps, 384 tokens, 30 s
        assert text.count(f"| {run} | 3 | 384 | 0 min 30 s |") == 1
    loss = report.loss_figure([("a", report.read_log(a)), ("b", report.read_log(b))])
    labels = {line.get_label() for ax in loss.axes for line in ax.get_lines()}
    assert {"a train", "a val", "b train", "b val"} <= labels


def test_sample_text_stays_on_its_line_with_control_characters_escaped(tmp_path):
    path = constructed_log(tmp_path / "s.jsonl", [0.0])
    with open(path, "a") as f:
        f.write(json.dumps({"kind": "sample", "step": 3, "tokens": 384, "samples": [
            {"prompt": "p", "text": "a\nb\rc\x0cd 中文 ```e"}]}) + "\n")
    text = report.write_report([path], tmp_path / "out").read_text()
    assert "step       3 | a\\nb\\rc\\x0cd 中文 `\\``e\n" in text


def test_a_torn_line_is_skipped_and_noted_and_the_end_record_gives_the_last_step(tmp_path):
    path = constructed_log(tmp_path / "t.jsonl", [0.0, 100.0])
    lines = path.read_text().splitlines()
    lines.insert(4, lines[4][:25])  # a crash in the middle of a write, then the resume
    lines.append(json.dumps({"kind": "end", "step": 7, "tokens": 896, "stopped_by": None}))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"t.jsonl:5: not valid JSON"):
        report.read_log(path)  # strict, as plot_loss.py reads
    text = report.write_report([path], tmp_path / "out").read_text()
    assert "Skipped, not whole records: " in text and "t.jsonl:5: not valid JSON" in text
    # the last train record is step 6; the run ended at step 7
    assert "| t | 7 | 896 | 1 min 00 s |" in text and "| finished |" in text


def test_the_report_puts_the_run_beside_its_reference(tmp_path, monkeypatch):
    path = constructed_log(tmp_path / "r.jsonl", [0.0])
    log = report.read_log(path)
    reference = {"command": "python train_pretrain.py --seed S", "match": report.run_shape(log),
                 "runs": [{"seed": seed, "val": [
                     {"step": 3, "tokens": 384, "val_loss": loss, "val_bpb": 3.0}]}
                     for seed, loss in ((1, 7.5), (2, 7.9))]}
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "x.json").write_text(json.dumps(reference))
    monkeypatch.setattr(report, "REFERENCES", tmp_path / "ref")
    text = report.write_report([path], tmp_path / "out").read_text()
    # the run's last validation loss is 8.0 - 3/10; the reference's mean of 7.5 and 7.9
    assert ("validation loss 7.7000 at 384 tokens; the reference at 384 tokens: 7.7000 "
            "(seeds 7.5000 to 7.9000)") in text
    labels = [line.get_label() for ax in report.loss_figure([("r", log)], reference=reference)
              .axes for line in ax.get_lines()]
    assert "reference val (2 seeds)" in labels
    monkeypatch.setattr(report, "REFERENCES", tmp_path / "none")
    assert report.find_reference(log) is None


def test_a_run_without_matplotlib_trains_and_reports_in_tables(corpus, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = pretrain(run_args(corpus, tmp_path, "--max_steps", "2", "--accumulation_steps", "1"))
    text = (tmp_path / "reports" / result["log_path"].stem / "report.md").read_text()
    assert "pip install matplotlib" in text and "bits per byte" in text
    assert not list((tmp_path / "reports").glob("*/*.png"))
def test_the_shipped_reference_is_found_for_the_quick_start_only():
    reference = json.loads((ROOT / "reference" / "quickstart_builtin.json").read_text())
    # the quick start's run record, as train_pretrain.py writes it: the README's first command
    args = vars(parse_args(train_pretrain.QUICK_FLAGS.split()))
    start = {"kind": "run", "step": 0, "world_size": 1, "args": args,
             "config": {"dim": 192, "n_layers": 4, "vocab_size": 6400},
             "plan": {"tokens_per_step": 32 * 128}, "data": {"sources": [{"path": "builtin"}]}}
    log = {"starts": [start]}
    assert report.find_reference(log) == reference
    for key, other in (("learning_rate", 1e-3), ("epochs", 1), ("dim", 256)):
        changed = {**start, "args": {**args, key: other},
                   "config": {**start["config"], key: other} if key == "dim" else start["config"]}
        assert report.find_reference({"starts": [changed]}) is None, key
    tokens, mean, low, high = report.reference_band(reference, "val_loss")
    assert all(lo <= m <= hi for m, lo, hi in zip(mean, low, high))
    assert tokens == sorted(tokens) and len(reference["runs"]) >= 2
