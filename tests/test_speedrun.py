"""scripts/speedrun.py: time to a target bpb, the training clock, the Chinese corpus and a
tiny comparison end to end."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import speedrun  # noqa: E402
from prepare import load_meta  # noqa: E402


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
    logs = tmp_path / "work" / "zh-60000-0" / "base-seed0" / "logs"
    log_files = sorted(logs.iterdir())
    again = speedrun.main(argv + ["--variant", "base="])  # the same run: reused, not rerun
    assert again["base"] == results["base"]
    assert sorted(logs.iterdir()) == log_files


def test_a_run_stopped_by_a_signal_is_not_kept_as_a_result(tmp_path, monkeypatch):
    monkeypatch.setattr(speedrun, "PretrainDataset", lambda *args: [0])  # one validation sequence
    monkeypatch.setattr(speedrun.train_pretrain, "main",
                        lambda argv: {"stopped_by": "SIGTERM", "log_path": None})
    args = speedrun.parse_args(["--work_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="stopped by SIGTERM"):
        speedrun.run_one(args, "base", "", 0, tmp_path / "tok.json", tmp_path / "data")
    assert not (tmp_path / "en" / "base-seed0" / "speedrun.json").exists()


def test_pages_hold_one_poets_poems_in_order_and_close_at_page_chars(tmp_path):
    dist, tang, song = fake_poetry(tmp_path / "dist")
    one = [json.loads(line)["text"] for line in speedrun.write_poetry_jsonl(
        dist, tmp_path / "one.jsonl", max_docs=1000).read_text(encoding="utf-8").splitlines()]
    pages = [json.loads(line)["text"] for line in speedrun.write_poetry_jsonl(
        dist, tmp_path / "pages.jsonl", 1000, page_chars=100).read_text(
        encoding="utf-8").splitlines()]
    poems = [page.split("\n\n") for page in pages]
    assert [poem for page in poems for poem in page] == one  # every poem, in file order
    for page, next_page in zip(poems, poems[1:] + [None]):
        authors = {poem.split("\n")[1] for poem in page}
        assert len(authors) == 1  # one poet a page
        lengths = [len(poem) for poem in page]
        assert sum(lengths[:-1]) < 100  # closed at the first poem that reaches 100
        if sum(lengths) < 100:  # short only where the poet's poems run out
            assert next_page is None or next_page[0].split("\n")[1] not in authors
    assert len(pages) < len(one)


def fake_minimind(root: Path, weights):
    """A folder laid out as a MiniMind checkout whose trainer only reads its data through
    the datasets package, takes 0.05 s a step, logs steps as MiniMind does and saves the
    given weights in transformers' layout, as MiniMind 2025 does."""
    for sub in ("model", "dataset", "trainer"):
        (root / sub).mkdir(parents=True)
    torch.save(weights, root / "model" / "weights.pth")
    (root / "trainer" / "train_pretrain.py").write_text("""
import argparse, math, os, shutil, time
from datasets import load_dataset
p = argparse.ArgumentParser()
for flag in ("--hidden_size", "--batch_size", "--log_interval", "--save_interval"):
    p.add_argument(flag, type=int)
p.add_argument("--data_path")
p.add_argument("--save_dir")
args, _ = p.parse_known_args()
samples = load_dataset("json", data_files=args.data_path, split="train")
assert all(s["text"].startswith("<s>") and s["text"].endswith("</s>") for s in samples)
iters = math.ceil(len(samples) / args.batch_size)
for step in range(1, iters + 1):
    time.sleep(0.05)  # a step; printed without flush, as MiniMind prints
    if step % args.log_interval == 0 or step == iters - 1:
        print(f"Epoch:[1/1]({step}/{iters}) loss:1.0 lr:0.0005 epoch_Time:0min:")
assert args.save_interval == iters
os.makedirs(args.save_dir, exist_ok=True)
shutil.copy("../model/weights.pth", f"{args.save_dir}/pretrain_{args.hidden_size}.pth")
""")
    return root


def test_minimind_row_trains_on_the_training_split_and_is_scored_as_eval_model_scores(
        tmp_path, capsys):
    import eval_model
    from model import LMConfig, Transformer
    from scripts.export_hf import to_hf_state_dict
    dist, _, _ = fake_poetry(tmp_path / "dist", n_poems=120)
    argv = ["--corpus", "zh", "--zh_poetry", str(dist), "--shape", "--dim 32 --n_layers 2",
            "--max_seq_len", "32", "--batch_size", "4", "--eval_interval", "2",
            "--vocab_size", "300", "--val_fraction", "0.1", "--work_dir", str(tmp_path / "w")]
    with pytest.raises(SystemExit):  # a folder without MiniMind's trainer is refused
        speedrun.parse_args(argv + ["--minimind", str(tmp_path)])
    args = speedrun.parse_args(argv)
    tok_path, prepared = speedrun.prepare_corpus(args)
    vocab = speedrun.load_tokenizer(tok_path).get_vocab_size()
    config = LMConfig(dim=32, n_layers=2, vocab_size=vocab)
    torch.manual_seed(0)
    model = Transformer(config)
    # MiniMind saves fp16 weights: ours, rounded the same way, are what eval_model sees
    model.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    torch.save(model.state_dict(), tmp_path / "ours.pth")
    hf = {k: v.half() for k, v in to_hf_state_dict(model.state_dict(), config).items()}
    hf["lm_head.weight"] = hf["model.embed_tokens.weight"]  # MiniMind saves the tied head
    args.minimind = str(fake_minimind(tmp_path / "minimind", hf))
    result = speedrun.run_minimind(args, 0, tok_path, prepared)

    train_docs = json.loads((prepared / "meta.json").read_text())["splits"]["train"]["documents"]
    lines = (speedrun.corpus_dir(args) / "minimind-seed0" / "train.jsonl").read_text(
        encoding="utf-8").splitlines()
    assert len(lines) == train_docs
    steps = -(-train_docs // 4)
    assert result["curve"][0][0] == steps
    assert result["curve"][0][1] >= 0.04 * steps  # 0.05 s a step: each line timed on arrival
    eval_model.main(["--ckpt", str(tmp_path / "ours.pth"), "--tokenizer", str(tok_path),
                     "--eval_data", str(prepared), "--eval_seq_len", "32", "--device", "cpu"])
    printed = capsys.readouterr().out.split("bits per byte ")[1].split()[0]
    assert f"{result['final_bpb']:.4f}" == printed  # converted back, scored the same


def test_variants_with_data_levers_train_on_their_own_data_with_the_same_validation(tmp_path):
    """--zh_junk mixes labelled junk into the poems; a variant's levers prepare its own
    directory (a scorer trained on the poems beyond the corpus's), whose validation split
    holds the same documents as the base's."""
    dist, _, _ = fake_poetry(tmp_path / "dist", n_poems=120)
    argv = ["--corpus", "zh", "--zh_poetry", str(dist), "--zh_max_docs", "80", "--zh_junk",
            "0.2", "--shape", "--dim 32 --n_layers 2", "--max_seq_len", "32", "--batch_size",
            "4", "--max_steps", "2", "--eval_interval", "2", "--vocab_size", "300",
            "--val_fraction", "0.1", "--seeds", "0", "--work_dir", str(tmp_path / "work"),
            "--quality_steps", "5",
            "--variant", "base=", "keep=--quality_model auto --quality_keep 0.5",
            "similar=--order similar"]
    results = speedrun.main(argv)
    root = tmp_path / "work" / "zh-80-0-junk0.2"
    lines = [json.loads(x) for x in (root / "poems.jsonl").read_text(encoding="utf-8")
             .split("\n") if x]
    assert sum("junk" in x for x in lines) == 20 and len(lines) == 100
    data = {name: Path(runs[0]["argv"][runs[0]["argv"].index("--data_path") + 1])
            for name, runs in results.items()}
    assert len(set(data.values())) == 3  # each its own prepared directory
    metas = {name: load_meta(d) for name, d in data.items()}
    assert metas["keep"]["options"]["quality"]["keep"] == 0.5
    assert metas["similar"]["options"]["order"] == "similar"
    val = {name: (d / "val.bin").read_bytes() for name, d in data.items()}
    assert val["keep"] == val["base"] == val["similar"]
    assert "--quality_keep" not in results["keep"][0]["argv"]  # not a training flag
