"""bench.py and the scripts beside it measure what they say: structural facts of their
figures, never wall-clock speed."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench
import train_pretrain
from bench import format_rows
from runlog import flops_per_token

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench_data  # noqa: E402
import bench_hf  # noqa: E402

TINY_FLAGS = ["--dim", "64", "--n_layers", "2", "--vocab_size", "300", "--batch_size", "2",
              "--max_seq_len", "32", "--steps", "1", "--warmup", "0", "--repeats", "1",
              "--new_tokens", "2", "--prompt_len", "4", "--ttft_prompt_len", "8",
              "--device", "cpu"]


def hand_counted_params(use_moe):
    """(all, active per token) parameters of bench's model for TINY_FLAGS, from the shapes:
    dim 64, 2 layers, vocabulary 300, LMConfig's 8 heads of 8 with 2 key/value heads
    (kv_dim 16), SwiGLU width 192 (8/3 * 64 = 170.7, rounded up to a multiple of 64), and
    for MoE 4 routed experts (2 per token), 1 shared expert and the gate."""
    dim, layers, vocab, kv_dim, hidden = 64, 2, 300, 16, 192
    attention = dim * dim + dim * kv_dim + dim * kv_dim + dim * dim  # wq, wk, wv, wo
    swiglu = 3 * dim * hidden  # w1, w2, w3
    norms = 2 * dim  # attention_norm, ffn_norm
    if use_moe:
        ffn_all = 4 * swiglu + swiglu + 4 * dim  # routed experts, shared expert, gate
        ffn_active = 2 * swiglu + swiglu + 4 * dim
    else:
        ffn_all = ffn_active = swiglu
    # the embedding is also the output layer (tied), counted once; then the final norm
    total = vocab * dim + layers * (attention + ffn_all + norms) + dim
    active = vocab * dim + layers * (attention + ffn_active + norms) + dim
    return total, active


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_flops_per_token_is_6n_plus_attention_counted_by_hand(use_moe):
    total, active = hand_counted_params(use_moe)
    assert (total, active) == ((409_152, 261_696) if use_moe else (113_728, 113_728))
    args = bench.parse_args(TINY_FLAGS + ["--use_moe"] * use_moe)
    model = bench.build_model(args, torch.device("cpu"))
    assert model.num_params() == total and model.num_params(active=True) == active
    # 6 N (forward 2 N, backward 4 N) + 12 * layers * dim * T for attention scores and values
    assert flops_per_token(model, 32) == 6 * active + 12 * 2 * 64 * 32


def test_training_gflops_are_the_hand_counted_flops_times_tokens_per_second():
    args = bench.parse_args(TINY_FLAGS)
    model = bench.build_model(args, torch.device("cpu"))
    figures = bench.measure_training({"MyLLM": model}, args, torch.device("cpu"),
                                     "float32")["MyLLM"]
    assert figures["tokens_per_sec"] == pytest.approx(2 * 32 / (figures["ms_per_step"] / 1e3))
    flops_per_token = 6 * 113_728 + 12 * 2 * 64 * 32  # = 731,520, as counted above
    assert figures["gflops_per_sec"] == pytest.approx(
        flops_per_token * figures["tokens_per_sec"] / 1e9)
    assert figures["mfu"] is None  # a CPU has no entry in the table of GPU peaks


def test_decode_reports_every_case_for_every_model():
    args = bench.parse_args(TINY_FLAGS)
    model = bench.build_model(args, torch.device("cpu"))
    figures = bench.measure_decode({"MyLLM": model},
                                   {"MyLLM": bench.myllm_generate(model, False)},
                                   args, torch.device("cpu"))
    assert set(figures["MyLLM"]) == {"decode_b1", "decode_b8", "decode_b1_kv",
                                     "decode_b1_no_cache", "ttft"}
    assert all(v > 0 for v in figures["MyLLM"].values())
    assert model.training  # handed back in training mode


def test_static_decode_check_finds_rounding_level_differences_only():
    """bench's check compares the static-cache decoder with a full forward pass; on a CPU
    both are float32 with the same kernels, so only rounding separates them."""
    args = bench.parse_args(TINY_FLAGS)
    model = bench.build_model(args, torch.device("cpu")).eval()
    assert bench.static_decode_error(model, args, torch.device("cpu"), steps=8) < 1e-4


def test_padded_samples_carry_fewer_useful_tokens_than_packed(tmp_path):
    args = bench_data.parse_args(["--max_seq_len", "128", "--steps", "2", "--repeats", "1",
                                  "--batch_size", "2", "--padding_mb", "0.1"])
    packed, padded = bench_data.padding_datasets(args, tmp_path)
    figures = bench_data.measure_padding(args, {"packed": packed, "padded": padded},
                                         torch.device("cpu"))
    useful = {mode: figures[mode]["useful_tokens_per_step"] for mode in figures}
    assert useful["padded"] < useful["packed"] <= 2 * 128
    assert figures["padded"]["padding_share"] > figures["packed"]["padding_share"]


def test_the_documented_padding_command_reuses_the_data_training_prepared(tmp_path):
    """bench_data.py's docstring says how to measure on the data training prepared; followed,
    it finds that directory (same sources, tokenizer, options and split seed) instead of
    preparing the corpus again under another fingerprint."""
    lines = [json.dumps({"text": f"<s>document {i}: " + " ".join(
        f"word{(i * 7 + k) % 97}" for k in range(40)) + ".</s>"}) for i in range(60)]
    data = tmp_path / "pretrain_hq.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    train_pretrain.pretrain(train_pretrain.parse_args([
        "--data_path", str(data), "--out_dir", str(out), "--dim", "32", "--n_layers", "1",
        "--max_seq_len", "32", "--batch_size", "2", "--vocab_size", "300", "--max_steps", "1",
        "--device", "cpu", "--quiet"]))
    (trained_on,) = (out / "data").iterdir()
    doc = bench_data.__doc__.replace("\\\n", " ")
    documented = next(line.split("bench_data.py", 1)[1].split("#")[0].split()
                      for line in doc.splitlines() if "--data_dir" in line)
    argv = [str(data) if a == "dataset/pretrain_hq.jsonl" else str(out / a[4:])
            if a.startswith("out/") else a for a in documented]
    packed, _ = bench_data.padding_datasets(bench_data.parse_args(argv), tmp_path / "work")
    assert packed.prepared_dir == trained_on
    assert list((out / "data").iterdir()) == [trained_on]  # nothing prepared again


def test_ratio_is_above_one_when_the_first_is_better_for_rates_and_times():
    table = format_rows([("tokens/s", [200.0, 100.0], True, "{:.0f}"),
                               ("ms/step", [50.0, 100.0], False, "{:.0f}"),
                               ("share", [1.0, 2.0], None, "{:.0f}")], ["a", "b"])
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == ["a", "b", "ratio"]
    assert rows[1][-1] == rows[2][-1] == "2.00x"
    assert rows[3] == ["share", "1", "2"]


def test_side_by_side_with_transformers_prints_both_models_and_their_ratio(capsys):
    bench_hf.main(TINY_FLAGS + ["--tasks", "train", "decode"])
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "transformers" in line)
    assert header.split() == ["MyLLM", "transformers", "ratio"]
    for label in ("train tokens/s", "train GFLOP/s", "decode tokens/s, batch 8",
                  "first token ms, 8-token prompt"):
        row = next(line for line in out.splitlines() if line.startswith(label))
        assert row.rstrip().endswith("x")


def test_gpu_check_script_parses_and_says_in_one_line_when_there_is_no_gpu(tmp_path,
                                                                           monkeypatch):
    """scripts/gpu_check.sh runs only where there is a GPU: here its shell must parse, its
    commands' flags must be flags of bench.py and train_pretrain.py, and without a GPU it
    must stop with one line."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = re.sub(r"\\\n\s*", " ", script.read_text())
    bench.parse_args(shlex.split(re.search(r"scripts/bench\.py (.*?) 2>&1", text).group(1)))
    flags = re.search(r"FLAGS=\((.*?)\)", text, flags=re.S).group(1).replace("\n", " ")
    flags = flags.replace('"$WORK/$MODE"', str(tmp_path))
    monkeypatch.setenv("RANK", "0")  # the script runs train_pretrain.py under torchrun
    train_pretrain.parse_args(shlex.split(flags) + ["--fsdp"])
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", str(script), str(tmp_path / "out.txt")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 1
        assert done.stderr.strip() == "error: no CUDA GPU here; run this on a machine with one"
