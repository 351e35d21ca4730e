"""eval_model.py against independent truths: memorised text, hand-computed bits per byte."""

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prepare import prepare
import dataset
from checkpoint import load_model
from decode import TextStream, complete
from eval_model import main, parse_args
from evaluator import (batches_of, evaluate, load_probes, print_probe_report, run_probes,
                       text_windows)
from model import LMConfig, Transformer
from tokenizer import BOS_ID, EOS_ID, PAD_ID, save_tokenizer, token_bytes, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EN = "The quick brown fox jumps over the lazy dog."
ZH = "天地玄黄，宇宙洪荒。日月盈昃，辰宿列张。"
SHAPE = dict(dim=64, n_layers=2)  # n_heads 8 and n_kv_heads 2, as eval_model assumes
SHAPE_FLAGS = ["--dim", "64", "--n_layers", "2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices this small only lose time to thread synchronisation, most of all on a busy
    machine; the thread count is restored for the other test files."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    corpus = [EN, ZH, "Return the absolute value of the argument.", "地球是行星。"]
    return train_tokenizer(corpus * 5, vocab_size=300)  # so small that it splits characters


def tiny_model(tok, seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(LMConfig(vocab_size=tok.get_vocab_size(), **{**SHAPE, **overrides}))


@pytest.fixture(scope="module")
def memorised(tok):
    """A tiny model trained until it knows EN and ZH by heart, each as its own document."""
    model = tiny_model(tok)
    docs = [[BOS_ID] + tok.encode(text).ids + [EOS_ID] for text in (EN, ZH)]
    width = max(map(len, docs))
    ids = torch.tensor([d + [PAD_ID] * (width - len(d)) for d in docs])
    real = torch.tensor([[1.0] * (len(d) - 1) + [0.0] * (width - len(d)) for d in docs])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits = model(ids[:, :-1]).logits
        nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        loss = (nll * real.flatten()).sum() / real.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return model.eval()


@pytest.fixture
def uniform(tok):
    """A model whose logits are all 0: every token has probability 1 / vocab."""
    model = tiny_model(tok)
    with torch.no_grad():
        model.norm.weight.zero_()
    return model.eval()


def write_out_dir(path, model, tok, name="pretrain_64.pth"):
    """What train_pretrain.py leaves behind: the weights and the tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path / name)
    save_tokenizer(tok, path / "tokenizer.json")
    return path


def greedy_by_hand(model, tok, prompt, max_new_tokens):
    """Full forward pass over everything at every step, argmax, stop at </s>."""
    ids = [BOS_ID] + tok.encode(prompt).ids
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == EOS_ID:
                break
            new.append(token)
    return tok.decode(new)


def run_main(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code, err):
    """The error line, after checking that the run failed with it and without a traceback
    (the line before it, if any, is the summary of the loaded model)."""
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    return errors[0]


def usage_error(argv, capsys):
    """The parser's error line, after checking that it stopped the run with a usage error
    (exit status 2) and without a traceback."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    return err.rstrip().splitlines()[-1]


def test_greedy_generation_with_and_without_cache_is_identical(memorised, tok):
    prompt = "The quick"
    cached = complete(memorised, tok, prompt, io.StringIO(), 40, temperature=0, use_cache=True)
    uncached = complete(memorised, tok, prompt, io.StringIO(), 40, temperature=0,
                        use_cache=False)
    assert cached.text == uncached.text == greedy_by_hand(memorised, tok, prompt, 40)
    assert prompt + cached.text == EN  # it stops at </s>, right after the memorised text


def test_streamed_chinese_output_is_byte_exact(memorised, tok):
    # precondition: this tokenizer really cuts Chinese characters across tokens
    assert any("\ufffd" in tok.decode([i]) for i in tok.encode(ZH).ids)

    class Recorder(io.StringIO):
        def __init__(self):
            super().__init__()
            self.pieces = []

        def write(self, text):
            self.pieces.append(text)
            return super().write(text)

    out = Recorder()
    prompt = "天地玄黄，"
    done = complete(memorised, tok, prompt, out, 40, temperature=0)
    assert out.getvalue().encode("utf-8") == ZH[len(prompt):].encode("utf-8")
    assert done.text == out.getvalue()
    assert not any("\ufffd" in piece for piece in out.pieces)
    assert len([p for p in out.pieces if p]) > 1  # it streamed, piece by piece


def test_text_stream_holds_half_characters_and_adds_up_to_the_whole_decode(tok):
    text = "中文 mixed 😀 text，完"
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in tok.encode(text).ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    # bytes that never become a character: flushed at the end exactly as decode() shows them
    broken = tok.encode("中").ids[:-1]
    stream = TextStream(tok)
    pieces = [stream.push(i) for i in broken] + [stream.flush()]
    assert "".join(pieces) == tok.decode(broken) == "\ufffd"


def test_bits_per_byte_of_a_uniform_model_is_log2_vocab_times_tokens_over_bytes(uniform, tok):
    text = EN + " 中文，和 English. " + ZH
    vocab = tok.get_vocab_size()
    n_targets = len(tok.encode(text).ids) + 1  # <s> text </s>: all but <s> are predicted
    n_bytes = len(text.encode("utf-8"))  # <s> and </s> stand for no text
    batches = batches_of(text_windows(tok, [text], max_seq_len=8), batch_size=3)
    result = evaluate(uniform, batches, [len(b) for b in token_bytes(tok)])
    assert result["tokens"] == n_targets and result["bytes"] == n_bytes
    assert result["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert result["perplexity"] == pytest.approx(vocab, rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(math.log2(vocab) * n_targets / n_bytes,
                                                    rel=1e-6)


def test_eval_data_file_from_the_command_line(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    texts = [EN, ZH, "第三篇 document."]
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                    encoding="utf-8")
    code, stdout, _ = run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--eval_data", str(data),
                                "--eval_seq_len", "16"], capsys)
    assert code == 0
    # one stream <s> a </s> <s> b </s> ...: every token but the first is predicted
    n_targets = sum(len(tok.encode(t).ids) + 2 for t in texts) - 1
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    expected = math.log2(tok.get_vocab_size()) * n_targets / n_bytes
    printed = float(re.search(r"bits per byte ([0-9.]+)", stdout).group(1))
    assert printed == pytest.approx(expected, abs=1e-4)
    assert f"{n_targets:,} tokens" in stdout


def test_default_eval_data_is_the_validation_split_prepared_with_the_tokenizer(
        uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    docs = [f"Document number {i} says: {EN} {ZH}" for i in range(12)]
    raw = tmp_path / "corpus.jsonl"
    raw.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                   encoding="utf-8")
    prepared = prepare([raw], out / "tokenizer.json", out / "data", val_fraction=0.5,
                               near_dedup=False, num_workers=1, verbose=False)
    val_tokens = dataset.open_split(prepared, "val")[0].tolist()
    assert len(val_tokens) > 1
    code, stdout, _ = run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--eval"], capsys)
    assert code == 0
    n_bytes = len(tok.decode(val_tokens).encode("utf-8"))  # decode drops <s> and </s>
    expected = math.log2(tok.get_vocab_size()) * (len(val_tokens) - 1) / n_bytes
    printed = float(re.search(r"bits per byte ([0-9.]+)", stdout).group(1))
    assert printed == pytest.approx(expected, abs=1e-4)


def test_probe_ranks_the_memorised_continuation_first(memorised, tok, capsys):
    probes = [
        {"prompt": "The quick brown fox jumps over the", "answer": 1,
         "choices": [" sleepy cat.", " lazy dog.", " red house."]},
        {"prompt": "天地玄黄，", "answer": 2,
         "choices": ["日月盈昃，", "辰宿列张。", "宇宙洪荒。"]},
    ]
    results = run_probes(memorised, tok, probes)
    for probe, scores in zip(probes, results):
        totals, per_byte = zip(*scores)
        assert max(range(3), key=totals.__getitem__) == probe["answer"]
        assert max(range(3), key=per_byte.__getitem__) == probe["answer"]
    assert print_probe_report(probes, results, io.StringIO()) == (1.0, 1.0)


def test_probe_log_probability_of_a_uniform_model_is_minus_tokens_times_log_vocab(uniform, tok):
    choices = [" lazy dog.", "宇宙洪荒。"]
    [scores] = run_probes(uniform, tok, [{"prompt": "The", "choices": choices, "answer": 0}])
    for choice, (total, per_byte) in zip(choices, scores):
        expected = -len(tok.encode(choice).ids) * math.log(tok.get_vocab_size())
        assert total == pytest.approx(expected, rel=1e-6)
        assert per_byte == pytest.approx(expected / len(choice.encode("utf-8")), rel=1e-6)


def test_shipped_probe_files_are_valid():
    files = sorted((ROOT / "probes").glob("*.jsonl"))
    assert len(files) >= 2
    for path in files:
        assert len(load_probes(path)) >= 5


def test_piped_stdin_with_minimind_command(memorised, tok, tmp_path):
    write_out_dir(tmp_path / "out", memorised, tok)
    # MiniMind's command, with this test's tiny shape
    command = [sys.executable, str(ROOT / "eval_model.py"), "--model_mode", "0", *SHAPE_FLAGS,
               "--use_moe", "0", "--out_dir", "out", "--load", "0", "--temperature", "0",
               "--device", "cpu"]
    env = dict(os.environ, PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    result = subprocess.run(command, input="The quick brown\n\n天地玄黄，\n".encode("utf-8"),
                            cwd=tmp_path, capture_output=True, env=env, timeout=120)
    stdout = result.stdout.decode("utf-8")
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    # every prompt is printed with its continuation: here the memorised documents, whole
    assert stdout.split() == (EN + " " + ZH).split()


def test_checkpoint_shape_is_read_from_the_file(tok, tmp_path):
    model = tiny_model(tok, n_kv_heads=4, use_moe=True, n_routed_experts=3).eval()
    torch.save(model.state_dict(), tmp_path / "any_name.pth")
    loaded = load_model(tmp_path / "any_name.pth", tok.get_vocab_size())
    ids = torch.tensor([tok.encode(EN).ids])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_missing_checkpoint_lists_existing_files_and_their_flags(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    line = one_line_error(*run_main(["--out_dir", str(out)], capsys)[::2])
    assert f"{out / 'pretrain_512.pth'} not found" in line
    assert "python train_pretrain.py --dim 512 --n_layers 8" in line
    assert "pretrain_64.pth (--dim 64 --n_layers 2)" in line


def test_checkpoint_of_another_shape_names_the_fields(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    line = one_line_error(*run_main(["--out_dir", str(out), "--dim", "64", "--n_layers", "3"],
                                    capsys)[::2])
    assert "checkpoint: n_layers 2; asked: 3" in line
    line = one_line_error(*run_main(["--out_dir", str(out), "--ckpt", str(out / "pretrain_64.pth"),
                                     "--dim", "128", "--n_layers", "4"], capsys)[::2])
    assert "checkpoint: dim 64, n_layers 2; asked: 128, 4" in line


def test_tokenizer_that_does_not_fit_the_checkpoint(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    other = save_tokenizer(train_tokenizer([EN] * 3, vocab_size=270), tmp_path / "other.json")
    other_size = train_tokenizer([EN] * 3, vocab_size=270).get_vocab_size()
    assert other_size != tok.get_vocab_size()
    line = one_line_error(*run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--tokenizer",
                                     str(other), "--prompt", "x"], capsys)[::2])
    assert f"tokenizer has {other_size} tokens" in line
    assert f"trained with {tok.get_vocab_size()}" in line


def test_prompt_longer_than_the_context(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    prompt = "".join(chr(0x4E00 + i % 5000) for i in range(9000))  # > 8192 tokens
    line = one_line_error(*run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--prompt", prompt],
                                    capsys)[::2])
    assert "model's context is 8192" in line and "shorten the prompt" in line


def test_empty_probe_file(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    line = one_line_error(*run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--probe", str(empty)],
                                    capsys)[::2])
    assert f"{empty} holds no probes" in line


def test_no_prepared_data_for_the_default_evaluation(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    line = one_line_error(*run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--eval"],
                                    capsys)[::2])
    assert "--eval_data" in line


@pytest.mark.parametrize("flags, words", [
    (["--model_mode", "1"], ["--model_mode 1", "full_sft", "--model_mode 0"]),
    (["--load", "1"], ["--load 1", "--load 0", "scripts/import_hf.py"]),
])
def test_minimind_modes_that_myllm_does_not_have(flags, words, capsys):
    line = one_line_error(*run_main(flags, capsys)[::2])
    assert all(word in line for word in words)


BAD_FLAG_VALUES = [
    (["--eval_seq_len", "0"], "--eval_seq_len must be at least 1, not 0"),
    (["--max_seq_len", "0"], "--eval_seq_len must be at least 1, not 0"),  # its old name
    (["--batch_size", "0"], "--batch_size must be at least 1, not 0"),
    (["--max_new_tokens", "-5"], "--max_new_tokens must be at least 0, not -5"),
    (["--n_heads", "0"], "--n_heads must be at least 1, not 0"),
    (["--dim", "-64"], "--dim must be at least 1, not -64"),
    (["--top_p", "0"], "--top_p must be above 0 and at most 1"),
    (["--top_p", "1.2"], "--top_p must be above 0 and at most 1"),
    (["--top_p", "nan"], "--top_p must be above 0 and at most 1"),
    (["--temperature", "-0.5"], "--temperature must be at least 0"),
    (["--repetition_penalty", "0"], "--repetition_penalty must be above 0"),
    (["--device", "gpu"], "--device gpu is not a device"),
    (["--device", "cuda:64"], "--device cuda:64: "),  # no such GPU, with or without CUDA
]


@pytest.mark.parametrize("flags, message", BAD_FLAG_VALUES,
                         ids=[" ".join(flags) for flags, _ in BAD_FLAG_VALUES])
def test_flag_values_that_cannot_work_are_usage_errors(flags, message, capsys):
    line = usage_error(flags, capsys)
    assert f"error: {message}" in line


@pytest.mark.parametrize("flags, use_moe", [
    ([], None),  # not given: read from the checkpoint
    (["--use_moe"], True),
    (["--use_moe", "1"], True),  # MiniMind's spelling
    (["--use_moe", "0"], False),
    (["--use_moe", "true"], True),
    (["--use_moe", "False"], False),
])
def test_use_moe_takes_minimind_1_and_0_as_well_as_a_bare_flag(flags, use_moe):
    args = parse_args(flags + ["--dim", "64", "--device", "cpu"])
    assert args.use_moe is use_moe and args.dim == 64


def test_use_moe_with_a_value_that_is_not_on_or_off(capsys):
    assert "argument --use_moe" in usage_error(["--use_moe", "2"], capsys)


def test_the_edges_of_each_flag_range_are_accepted():
    args = parse_args(["--top_p", "1", "--temperature", "0", "--max_new_tokens", "0",
                       "--top_k", "0", "--eval_iters", "0", "--eval_seq_len", "1",
                       "--batch_size", "1", "--device", "cpu"])
    assert (args.top_p, args.temperature, args.max_new_tokens, args.eval_seq_len) == (1, 0, 0, 1)


@pytest.mark.parametrize("kind, words", [
    ("resume file", ["holds no tok_embeddings.weight", "['model', 'step']"]),
    ("keys with a wrapper's prefix", ["holds no tok_embeddings.weight",
                                      "_orig_mod.tok_embeddings.weight"]),
    ("a layer's weight missing", ["has no layers.0.attention.wk.weight"]),
])
def test_a_file_that_is_not_complete_weights_is_a_one_line_error(uniform, tok, tmp_path, capsys,
                                                                 kind, words):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    weights = uniform.state_dict()
    bad = {"resume file": {"model": weights, "step": 10},
           "keys with a wrapper's prefix": {"_orig_mod." + k: v for k, v in weights.items()},
           "a layer's weight missing": {k: v for k, v in weights.items() if ".wk." not in k},
           }[kind]
    torch.save(bad, tmp_path / "bad.pth")
    line = one_line_error(*run_main(["--out_dir", str(out), "--ckpt", str(tmp_path / "bad.pth"),
                                     "--prompt", "x"], capsys)[::2])
    assert str(tmp_path / "bad.pth") in line and all(word in line for word in words), line


def test_probe_file_that_is_not_utf8_names_the_line(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    probes = tmp_path / "latin1.jsonl"
    good = '{"prompt": "x", "choices": ["a", "b"], "answer": 0}\n'
    probes.write_bytes(good.encode() + good.replace("x", "caf\u00e9").encode("latin-1"))
    line = one_line_error(*run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--probe",
                                     str(probes)], capsys)[::2])
    assert f"{probes}:2 is not UTF-8" in line


def test_empty_evaluation_file(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    line = one_line_error(*run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--eval_data",
                                     str(empty)], capsys)[::2])
    assert "no tokens to predict" in line and "--eval_data" in line


def test_evaluation_window_longer_than_the_model_context(uniform, tok, tmp_path, capsys):
    out = write_out_dir(tmp_path / "out", uniform, tok)
    data = tmp_path / "held_out.jsonl"
    data.write_text(json.dumps({"text": EN}) + "\n", encoding="utf-8")
    context = uniform.config.max_seq_len
    line = one_line_error(*run_main(["--out_dir", str(out), *SHAPE_FLAGS, "--eval_data", str(data),
                                     "--eval_seq_len", str(context + 1)], capsys)[::2])
    assert f"--eval_seq_len {context + 1} is longer than the model's context ({context}" in line
