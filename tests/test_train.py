"""train_pretrain.py: schedule, accumulation, DDP equivalence, exact resume, signals, NaN guard,
precision, compile, validation loss, flags and the errors a user can meet."""

import contextlib
import copy
import itertools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data_quality
import evaluator
import train_pretrain
from dataset import PretrainDataset, ShardedSampler
from prepare import prepare
from model import LMConfig, Transformer
from tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from checkpoint import save_torch
from device import allow_tf32, mixed_precision
from tokenizer import token_bytes
from train_pretrain import (get_lr, main, make_optimizer, masked_lm_loss, parse_args,
                            pretrain)
from evaluator import val_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--dim", "32", "--n_layers", "2", "--max_seq_len", "32", "--batch_size", "4",
              "--num_workers", "0", "--warmup_iters", "0", "--log_interval", "1",
              "--eval_interval", "1000", "--eval_iters", "2", "--quiet",
              "--dtype", "float32"]  # exact comparisons, also where a CPU defaults to bf16


def write_corpus(path: Path, n_docs: int = 60, seed: int = 0):
    """Documents of random words: distinct enough that no dedup rule removes any."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8)))
             for _ in range(400)]
    lines = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(30, 60)))
                                 + "."}) for _ in range(n_docs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small jsonl corpus and a tokenizer trained on it, shared by the tests here."""
    root = tmp_path_factory.mktemp("corpus")
    data = write_corpus(root / "docs.jsonl")
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    save_tokenizer(train_tokenizer(texts, vocab_size=320), root / "tokenizer.json")
    return data, root / "tokenizer.json"


def argv_of(corpus, out_dir, *extra):
    """The command line of a tiny CPU run on the shared corpus."""
    data, tok = corpus
    return TINY_FLAGS + ["--data_path", str(data), "--tokenizer", str(tok), "--out_dir",
                         str(out_dir), "--device", "cpu", *extra]


def run_args(corpus, out_dir, *extra):
    return parse_args(argv_of(corpus, out_dir, *extra))


def read_log(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def losses(log):
    return {r["step"]: r["loss"] for r in log if r["kind"] == "train"}


def test_lr_schedule_warms_up_linearly_then_follows_a_cosine_to_min_lr():
    lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 111  # cosine over steps 10..110
    def cosine(step):
        return get_lr(step, total, lr, min_lr, warmup, "cosine")
    assert cosine(0) == pytest.approx(1e-4)  # 1/10 of the way
    assert cosine(9) == pytest.approx(lr)  # warmup ends at lr
    assert cosine(10) == pytest.approx(lr)  # cosine starts at lr
    assert cosine(60) == pytest.approx((lr + min_lr) / 2)
    assert cosine(110) == pytest.approx(min_lr)  # the last step


def test_default_learning_rate_is_minimind_s_at_512_and_wider_and_rises_as_1_over_width():
    expected = {512: 5e-4, 768: 5e-4, 256: 1e-3, 192: 5e-4 * 8 / 3, 128: 2e-3, 32: 2e-3}
    for dim, lr in expected.items():  # 5e-4 * 512 / dim, clamped to [5e-4, 2e-3] by hand
        args = parse_args(["--dim", str(dim)])
        assert args.learning_rate == pytest.approx(lr) and args.min_lr == pytest.approx(lr / 10)
    assert parse_args(["--dim", "64", "--learning_rate", "3e-4"]).learning_rate == 3e-4


def test_default_optimizer_is_muon_below_dim_512_and_adamw_from_it():
    for dim, name in ((32, "muon"), (256, "muon"), (496, "muon"), (512, "adamw"), (768, "adamw")):
        assert parse_args(["--dim", str(dim)]).optimizer == name
    assert parse_args(["--dim", "64", "--optimizer", "adamw"]).optimizer == "adamw"


def test_wsd_schedule_warms_up_holds_then_decays_linearly_over_the_last_fifth():
    lr, min_lr, warmup, total = 1e-3, 1e-4, 10, 100  # decay over steps 80..99 (20% of 100)
    def wsd(step):
        return get_lr(step, total, lr, min_lr, warmup, "wsd", decay_frac=0.2)
    assert wsd(0) == pytest.approx(1e-4)  # 1/10 of the way up
    assert wsd(9) == pytest.approx(lr)  # warmup ends at lr
    assert wsd(10) == pytest.approx(lr) and wsd(79) == pytest.approx(lr)  # the stable part
    assert wsd(80) == pytest.approx(lr)  # the decay starts at lr...
    assert wsd(81) == pytest.approx(lr - (lr - min_lr) / 19)  # ...falls 1/19 of the gap a step
    assert wsd(99) == pytest.approx(min_lr)  # the last step


def test_masked_loss_ignores_padding_positions():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 10.0
    targets = torch.tensor([[1, 2, 3]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = (math.log(3 + math.e ** 10) - 10 + math.log(4)) / 2  # positions 0 and 1
    assert masked_lm_loss(logits, targets, mask).item() == pytest.approx(expected)


def test_tiny_model_overfits_a_small_dataset(corpus, tmp_path):
    data, tok = corpus
    small = write_corpus(tmp_path / "small.jsonl", n_docs=6, seed=3)
    args = parse_args(TINY_FLAGS + ["--data_path", str(small), "--tokenizer", str(tok),
                                    "--out_dir", str(tmp_path / "out"), "--device", "cpu",
                                    "--epochs", "60", "--accumulation_steps", "1",
                                    "--learning_rate", "3e-3", "--dim", "64"])
    result = pretrain(args)
    curve = losses(read_log(result["log_path"]))
    assert curve[1] > 5.0  # about ln(320) = 5.77 at the start
    assert min(curve[s] for s in list(curve)[-5:]) < 1.5


def test_partial_last_accumulation_is_divided_by_its_own_length(corpus, tmp_path):
    # A train split of 3 micro-batches with accumulation 2: step 1 takes two micro-batches,
    # step 2 the one left, which must count fully (divided by 1, not by 2).
    constant_lr = ("--accumulation_steps", "2", "--learning_rate", "5e-4", "--min_lr", "5e-4")
    # (the same LR for any run length)
    args = run_args(corpus, tmp_path / "full", *constant_lr)
    full = pretrain(args)
    ds = PretrainDataset(next((tmp_path / "full" / "data").iterdir()), "train", 32)
    n_micro = math.ceil(len(ds) / 4)
    steps = math.ceil(n_micro / 2)
    assert full["step"] == steps
    log = {r["step"]: r for r in read_log(full["log_path"]) if r["kind"] == "train"}

    # the weights before the last step, from a run that stops there
    before_last = pretrain(run_args(corpus, tmp_path / "cut", *constant_lr,
                                    "--max_steps", str(steps - 1)))["model"]
    order = list(ShardedSampler(len(ds), 0, 1, seed=args.seed, epoch=0))
    last_batches = [order[i:i + 4] for i in range(0, len(order), 4)][2 * (steps - 1):]
    before_last.zero_grad()
    batch_losses = []
    for idx in last_batches:
        X, Y, mask = (torch.stack(t) for t in zip(*(ds[i] for i in idx)))
        loss = masked_lm_loss(before_last(X).logits, Y, mask)
        (loss / len(last_batches)).backward()
        batch_losses.append(loss.item())
    norm = torch.cat([p.grad.flatten() for p in before_last.parameters()]).norm().item()
    assert log[steps]["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert log[steps]["loss"] == pytest.approx(sum(batch_losses) / len(batch_losses), rel=1e-5)


def test_logged_loss_is_the_mean_over_micro_steps(corpus, tmp_path):
    args = run_args(corpus, tmp_path, "--accumulation_steps", "3", "--max_steps", "1")
    torch.manual_seed(args.seed)
    initial = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320, max_seq_len=8192))
    result = pretrain(args)
    ds = PretrainDataset(next((tmp_path / "data").iterdir()), "train", 32)
    order = list(ShardedSampler(len(ds), 0, 1, seed=args.seed, epoch=0))
    expected = []
    with torch.no_grad():
        for b in range(3):
            X, Y, mask = (torch.stack(t) for t in zip(*(ds[i] for i in order[4 * b:4 * b + 4])))
            expected.append(masked_lm_loss(initial(X).logits, Y, mask).item())
    assert losses(read_log(result["log_path"]))[1] == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_injected_nan_skips_the_update_and_leaves_weights_unchanged(corpus, tmp_path,
                                                                     monkeypatch):
    args = run_args(corpus, tmp_path, "--max_steps", "2", "--accumulation_steps", "1")
    torch.manual_seed(args.seed)
    initial = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320, max_seq_len=8192))
    monkeypatch.setattr(train_pretrain, "masked_lm_loss",
                        lambda *a: masked_lm_loss(*a) * float("nan"))
    result = pretrain(args)
    assert result["bad_steps"] == 2
    for name, p in initial.state_dict().items():
        assert torch.equal(p, result["model"].state_dict()[name]), name


def test_repeated_nan_stops_with_a_message_and_keeps_the_last_checkpoint(corpus, tmp_path,
                                                                        monkeypatch):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "2", "--accumulation_steps", "1"))
    weights = tmp_path / "pretrain_32.pth"
    saved = torch.load(weights, weights_only=True)
    monkeypatch.setattr(train_pretrain, "masked_lm_loss",
                        lambda *a: masked_lm_loss(*a) * float("nan"))
    with pytest.raises(FloatingPointError, match="learning rate too high"):
        pretrain(run_args(corpus, tmp_path, "--max_steps", "9", "--accumulation_steps", "1",
                          "--max_bad_steps", "3"))
    after = torch.load(weights, weights_only=True)
    assert all(torch.equal(saved[k], after[k]) for k in saved)
    # the run that failed still wrote its report, which says it did not end
    (report,) = (tmp_path / "reports").glob("*/report.md")
    assert "| no end record: still running, or crashed |" in report.read_text()


def test_a_bad_streak_just_before_a_signal_still_stops_the_run(corpus, tmp_path, monkeypatch):
    """Steps 2 and 3 are NaN and a SIGTERM comes in step 3: with --max_bad_steps 3 the
    streak (steps 1 to 3, all NaN) is an error, not a clean stop that saves."""
    calls = {"n": 0}

    def nan_then_sigterm(*a):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return masked_lm_loss(*a) * float("nan")

    monkeypatch.setattr(train_pretrain, "masked_lm_loss", nan_then_sigterm)
    with pytest.raises(FloatingPointError, match="3 optimizer steps in a row"):
        pretrain(run_args(corpus, tmp_path, "--max_steps", "9", "--accumulation_steps", "1",
                          "--log_interval", "100", "--max_bad_steps", "3"))


def refuse_host_sync(monkeypatch):
    """Make every way of reading a tensor's value on the host raise: code that still runs
    never waits for the device (on a GPU, each of these is a sync)."""
    def sync(*args):
        raise AssertionError("a host sync")
    for name in ("item", "tolist", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, sync)


def tiny_step_setup(use_moe=False, seed=0, device=torch.device("cpu")):
    """A tiny model, its optimizer (make_optimizer) and one random batch (X, Y, loss_mask)."""
    torch.manual_seed(seed)
    model = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320, use_moe=use_moe))
    ids = torch.randint(0, 320, (4, 17))
    mask = torch.ones(4, 16)
    mask[0, :5] = 0
    batch = tuple(t.to(device) for t in (ids[:, :-1], ids[:, 1:], mask))
    model = model.to(device).train()
    return model, make_optimizer(model, 1e-2, 0.1, device), batch


def adamw_by_hand(model, batch, steps, lr, weight_decay, grad_clip, betas=(0.9, 0.95),
                  eps=1e-8):
    """`steps` AdamW steps (Loshchilov and Hutter 2019) on the same batch, written out:
    gradients clipped to a total norm of grad_clip, weight decay on matrices only."""
    params = dict(model.named_parameters())
    m = {name: torch.zeros_like(p) for name, p in params.items()}
    v = {name: torch.zeros_like(p) for name, p in params.items()}
    for t in range(1, steps + 1):
        model.zero_grad()
        out = model(batch[0])
        (masked_lm_loss(out.logits, batch[1], batch[2]) + out.aux_loss).backward()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params.values()]))
        clip = min(1.0, grad_clip / (norm.item() + 1e-6))
        with torch.no_grad():
            for name, p in params.items():
                g = p.grad * clip
                m[name] = betas[0] * m[name] + (1 - betas[0]) * g
                v[name] = betas[1] * v[name] + (1 - betas[1]) * g * g
                m_hat, v_hat = m[name] / (1 - betas[0] ** t), v[name] / (1 - betas[1] ** t)
                decay = weight_decay if p.dim() >= 2 else 0.0
                p.mul_(1 - lr * decay).sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return {name: p.detach() for name, p in params.items()}


def one_step(model, optimizer, batch, dtype_name="float32", loss_fn=masked_lm_loss,
             scaler=None):
    """train_step on one micro-batch, with a fresh loss scaler for float16 unless given one;
    returns (loss, grad_norm, samples, good)."""
    device = batch[0].device
    _, autocast, fresh_scaler = mixed_precision(device, dtype_name)
    return train_pretrain.train_step(model, optimizer, scaler if scaler else fresh_scaler,
                                     itertools.repeat(batch), 1, loss_fn, autocast, device, 1.0)


def test_train_step_waits_for_no_host_sync_and_equals_adamw_by_hand(monkeypatch):
    model, optimizer, batch = tiny_step_setup()
    expected = adamw_by_hand(copy.deepcopy(model), batch, 2, 1e-2, 0.1, 1.0)
    goods = []
    with monkeypatch.context() as m:
        refuse_host_sync(m)
        for _ in range(2):
            goods.append(one_step(model, optimizer, batch)[3])
    assert [bool(good) for good in goods] == [True, True]
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6,
                                   msg=name)


@pytest.mark.parametrize("use_moe, dtype_name", [(False, "float32"), (True, "float32"),
                                                 (False, "float16")],
                         ids=["dense", "moe", "dense_float16"])
def test_a_skipped_step_leaves_weights_and_adamw_state_bit_identical(monkeypatch, use_moe,
                                                                     dtype_name):
    model, optimizer, batch = tiny_step_setup(use_moe)
    one_step(model, optimizer, batch, dtype_name)  # moments and step count exist
    before = copy.deepcopy((model.state_dict(), optimizer.state_dict()["state"]))
    with monkeypatch.context() as m:
        refuse_host_sync(m)
        for _ in range(2):  # the step count too: not moved by either
            _, grad_norm, _, good = one_step(model, optimizer, batch, dtype_name,
                                             lambda *a: masked_lm_loss(*a) * float("nan"))
    assert not bool(good) and not math.isfinite(grad_norm)
    weights, state = model.state_dict(), optimizer.state_dict()["state"]
    for name, p in before[0].items():
        assert torch.equal(weights[name], p), name
    for i, saved in before[1].items():
        assert saved.keys() == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(state[i][key], saved[key]) for key in saved), i
    assert optimizer.state_dict()["state"][0]["step"] == 1


def test_tiny_run_with_muon_lowers_the_loss(corpus, tmp_path):
    result = pretrain(run_args(corpus, tmp_path, "--optimizer", "muon", "--max_steps", "30",
                               "--accumulation_steps", "1"))
    curve = losses(read_log(result["log_path"]))
    assert curve[1] > 5.0  # about ln(320) = 5.77 at the start
    assert sum(curve[s] for s in range(26, 31)) / 5 < curve[1] - 0.2


def test_resume_with_another_optimizer_is_a_clear_error(corpus, tmp_path):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))  # Muon: the default at dim 32
    with pytest.raises(SystemExit, match="pass --optimizer muon --learning_rate 0.002 to "):
        main(argv_of(corpus, tmp_path, "--max_steps", "2", "--optimizer", "adamw"))


def test_resume_under_another_schedule_is_a_clear_error_also_for_files_from_before_it(
        corpus, tmp_path):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "1", "--lr_schedule", "cosine"))
    with pytest.raises(SystemExit, match="pass --lr_schedule cosine to continue it"):
        main(argv_of(corpus, tmp_path, "--max_steps", "2", "--lr_schedule", "wsd"))
    # a resume file written before --lr_schedule existed was trained on the cosine
    path = tmp_path / "pretrain_32_resume.pth"
    state = torch.load(path, weights_only=True)
    del state["args"]["lr_schedule"]
    torch.save(state, path)
    with pytest.raises(SystemExit, match="trained with --lr_schedule cosine"):
        main(argv_of(corpus, tmp_path, "--max_steps", "2"))  # the default is wsd


# the last: MLA with DeepSeek's MoE, whose balancing bias must resume exactly too
@pytest.fixture(scope="module")
def scorer(corpus, tmp_path_factory):
    """A quality scorer (data_quality.py) of the shared corpus's tokenizer: any will do."""
    data, tok_path = corpus
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines()]
    tok = load_tokenizer(tok_path)
    model = data_quality.train_scorer("ngrams", tok, texts[:30], texts[30:], steps=5)
    return data_quality.save_scorer(model, "ngrams", tok,
                                    tmp_path_factory.mktemp("q") / "quality.pt")


@pytest.mark.parametrize("optimizer, arch", [
    ("adamw", ()), ("muon", ()),
    ("muon", ("--attention", "mla", "--moe", "deepseek", "--n_routed_experts", "4",
              "--num_experts_per_tok", "2", "--bias_update_speed", "0.01")),
    ("adamw", ("--order", "similar")),
    ("adamw", ("--order", "curriculum", "--quality_model", "SCORER"))],
    ids=["adamw", "muon", "mla_dsmoe", "similar", "curriculum"])
def test_resumed_run_matches_an_uninterrupted_one(corpus, tmp_path, monkeypatch, optimizer,
                                                  arch, scorer):
    arch = tuple(str(scorer) if a == "SCORER" else a for a in arch)
    flags = ("--max_steps", "8", "--accumulation_steps", "2", "--save_interval", "100",
             "--optimizer", optimizer, *arch)
    straight = pretrain(run_args(corpus, tmp_path / "a", *flags))

    calls = {"n": 0}

    def loss_then_sigterm(*a):  # a SIGTERM arrives during step 3 (its 6th micro-step)
        calls["n"] += 1
        if calls["n"] == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return masked_lm_loss(*a)

    monkeypatch.setattr(train_pretrain, "masked_lm_loss", loss_then_sigterm)
    stopped = pretrain(run_args(corpus, tmp_path / "b", *flags))
    assert stopped["stopped_by"] == "SIGTERM" and stopped["step"] == 3
    monkeypatch.setattr(train_pretrain, "masked_lm_loss", masked_lm_loss)
    resumed = pretrain(run_args(corpus, tmp_path / "b", *flags))
    assert resumed["step"] == 8

    a, b = losses(read_log(straight["log_path"])), losses(read_log(resumed["log_path"]))
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    for name, p in straight["model"].state_dict().items():
        torch.testing.assert_close(resumed["model"].state_dict()[name], p, atol=1e-6, rtol=0)
    if "--moe" in arch:  # the balancing bias was among them; the log shows how experts share
        assert "layers.1.feed_forward.gate.expert_bias" in straight["model"].state_dict()
        record = [r for r in read_log(resumed["log_path"]) if r.get("expert_share")][-1]
        assert len(record["expert_share"][0]) == 4
        assert sum(record["expert_share"][0]) == pytest.approx(1, abs=1e-3)


@pytest.mark.parametrize("order", ["shuffle", "similar", "curriculum"])
def test_a_curriculum_run_reads_its_windows_in_the_prepared_order(corpus, tmp_path, monkeypatch,
                                                                  order, scorer):
    read, original = [], PretrainDataset.__getitem__

    def recording(self, i):
        if self.split == "train":
            read.append(i)
        return original(self, i)

    monkeypatch.setattr(PretrainDataset, "__getitem__", recording)
    levers = ("--quality_model", str(scorer)) if order == "curriculum" else ()
    pretrain(run_args(corpus, tmp_path, "--order", order, *levers, "--max_steps", "4",
                      "--accumulation_steps", "2"))
    assert len(read) == 4 * 2 * 4  # steps x micro-steps x batch
    # in-context order puts related documents in one window; the windows are shuffled
    assert (read == list(range(len(read)))) == (order == "curriculum")


def test_resume_with_another_model_shape_is_a_clear_error(corpus, tmp_path):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))
    with pytest.raises(ValueError, match="n_layers 2.*this run asks n_layers 3"):
        pretrain(run_args(corpus, tmp_path, "--max_steps", "2", "--n_layers", "3"))


def test_failed_checkpoint_write_leaves_the_previous_file_loadable(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_torch({"w": torch.ones(3)}, path)

    def full_disk(obj, f):
        f.write(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_torch({"w": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(*argv, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300, **kwargs)


# Muon too: DDP averages the gradients before step(), so each rank's own Muon update is the
# one-process update, with no communication of its own; under --fsdp each rank holds half
# of each matrix, and Muon orthogonalises the whole matrix (muon.py)
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_process_ddp_equals_one_process_with_twice_the_accumulation(corpus, tmp_path,
                                                                        optimizer, sharding):
    data, tok = corpus
    common = TINY_FLAGS + ["--data_path", str(data), "--tokenizer", str(tok),
                           "--max_steps", "3", "--device", "cpu", "--optimizer", optimizer]
    # Each micro-batch's loss is a mean over its tokens, so the two groupings of the same
    # samples agree only when every micro-batch has as many targets: pick a seed whose first
    # 3 steps (48 samples) do not draw the one packed window with padding, the last.
    ds = PretrainDataset(prepare([str(data)], tok, tmp_path / "one" / "data", verbose=False),
                         "train", 32)
    seed = next(s for s in range(100)
                if len(ds) - 1 not in list(ShardedSampler(len(ds), seed=s))[:48])
    common += ["--seed", str(seed)]
    pretrain(parse_args(common + ["--accumulation_steps", "4", "--out_dir", str(tmp_path / "one")]))
    done = run_script("-m", "torch.distributed.run", "--nproc_per_node", "2",
                      "--master_port", str(free_port()), str(ROOT / "train_pretrain.py"),
                      *common, "--accumulation_steps", "2", "--out_dir", str(tmp_path / "two"),
                      *["--fsdp"] * (sharding == "fsdp"))
    assert done.returncode == 0, done.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "pretrain_32.pth", weights_only=True)
    two = torch.load(tmp_path / "two" / "pretrain_32.pth", weights_only=True)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0)


def run_two_nodes(*node_flags):
    """Two torchrun nodes on localhost, one process each, node r given node_flags[r];
    returns [(returncode, stderr)] per node."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                               "--node_rank", str(r), "--nproc_per_node", "1",
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                               "--rdzv_id", "t", str(ROOT / "train_pretrain.py"), *flags],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r, flags in enumerate(node_flags)]
    errors = [n.communicate(timeout=300)[1] for n in nodes]
    return [(n.returncode, err) for n, err in zip(nodes, errors)]


def test_two_nodes_on_localhost_train_together(corpus, tmp_path):
    data, tok = corpus
    flags = [*TINY_FLAGS, "--data_path", str(data), "--tokenizer", str(tok), "--max_steps", "2",
             "--device", "cpu", "--out_dir", str(tmp_path)]
    (rc0, err0), (rc1, err1) = run_two_nodes(flags, flags)
    assert rc0 == rc1 == 0, err0[-2000:] + err1[-2000:]
    run = read_log(next((tmp_path / "logs").iterdir()))[0]
    assert run["world_size"] == 2
    assert torch.load(tmp_path / "pretrain_32.pth", weights_only=True)


def test_sigterm_mid_run_leaves_a_resume_file_that_continues(corpus, tmp_path):
    data, tok = corpus
    argv = [str(ROOT / "train_pretrain.py"), *TINY_FLAGS, "--data_path", str(data),
            "--tokenizer", str(tok), "--out_dir", str(tmp_path), "--device", "cpu",
            "--epochs", "1000", "--max_steps", "100000", "--accumulation_steps", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = tmp_path / "logs"
    deadline = time.time() + 120
    while not (logs.exists() and any(len(p.read_text().splitlines()) > 3
                                     for p in logs.iterdir())):  # the run line and 3 steps
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no 3 logged steps within 120 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    state = torch.load(tmp_path / "pretrain_32_resume.pth", weights_only=True)
    assert state["step"] >= 3
    # a stopped run writes its report too, and says it was stopped
    (report,) = (tmp_path / "reports").glob("*/report.md")
    assert f"| {report.parent.name} | {state['step']:,} |" in report.read_text()
    assert "| stopped by SIGTERM |" in report.read_text()
    resumed = pretrain(parse_args(argv[1:-4] + ["--max_steps", str(state["step"] + 2),
                                                "--accumulation_steps", "1"]))
    assert resumed["step"] == state["step"] + 2


def test_quick_start_on_the_builtin_corpus_writes_weights_and_log(tmp_path):
    done = run_script(str(ROOT / "train_pretrain.py"), "--out_dir", str(tmp_path),
                      *train_pretrain.QUICK_FLAGS.split(), "--max_steps", "2",
                      "--vocab_size", "512")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "built-in corpus" in done.stdout + done.stderr
    weights = torch.load(tmp_path / "pretrain_192.pth", weights_only=True)
    assert weights["tok_embeddings.weight"].shape == (512, 192)
    log = read_log(next((tmp_path / "logs").iterdir()))
    assert [r["step"] for r in log if r["kind"] == "train"][-1] == 2


def test_resume_with_another_world_size_continues_at_the_same_sample(corpus, tmp_path):
    data, tok = corpus
    common = TINY_FLAGS + ["--data_path", str(data), "--tokenizer", str(tok), "--device", "cpu",
                           "--accumulation_steps", "1", "--out_dir", str(tmp_path)]
    pretrain(parse_args(common + ["--max_steps", "2"]))  # 2 steps x 4 samples, one process
    done = run_script("-m", "torch.distributed.run", "--nproc_per_node", "2",
                      "--master_port", str(free_port()), str(ROOT / "train_pretrain.py"),
                      *common, "--max_steps", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming a run of world size 1 with 2" in done.stdout + done.stderr
    state = torch.load(tmp_path / "pretrain_32_resume.pth", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2
    assert state["samples_in_epoch"] == 2 * 4 + 2 * 4 * 2  # then 2 steps x 4 samples x 2 ranks


def test_nodes_that_disagree_about_the_resume_file_stop_with_a_clear_error(corpus, tmp_path):
    # Each node has its own --out_dir, as on nodes without a shared filesystem: only one of
    # them holds the resume file. Continuing would train half the ranks from a checkpoint.
    data, tok = corpus
    flags = [*TINY_FLAGS, "--data_path", str(data), "--tokenizer", str(tok), "--device", "cpu"]
    pretrain(parse_args(flags + ["--max_steps", "1", "--out_dir", str(tmp_path / "a")]))
    results = run_two_nodes(*(flags + ["--max_steps", "2", "--out_dir", str(tmp_path / node)]
                              for node in "ab"))
    for returncode, err in results:
        assert returncode != 0
        assert "visible to 1 of 2 ranks" in err and "filesystem all nodes share" in err, err[-2000:]


def test_two_process_moe_equals_one_process_though_experts_go_without_tokens(corpus, tmp_path):
    # One sequence of 2 tokens per micro-step has 4 routed slots for 4 experts per layer, so
    # most micro-steps leave some expert without a token; DDP must still get its gradient.
    data, tok = corpus
    common = TINY_FLAGS + ["--data_path", str(data), "--tokenizer", str(tok), "--device", "cpu",
                           "--max_steps", "3", "--use_moe", "1", "--batch_size", "1",
                           "--max_seq_len", "2"]
    # as in the dense test: the 12 samples of 3 steps avoid the one window with padding
    ds = PretrainDataset(prepare([str(data)], tok, tmp_path / "one" / "data", verbose=False),
                         "train", 2)
    seed = next(s for s in range(100)
                if len(ds) - 1 not in list(ShardedSampler(len(ds), seed=s))[:12])
    common += ["--seed", str(seed)]
    # 8 validation sequences either way: 8 batches of one here, 4 per rank there
    one = pretrain(parse_args(common + ["--accumulation_steps", "4", "--eval_iters", "8",
                                        "--out_dir", str(tmp_path / "one")]))
    done = run_script("-m", "torch.distributed.run", "--nproc_per_node", "2",
                      "--master_port", str(free_port()), str(ROOT / "train_pretrain.py"),
                      *common, "--accumulation_steps", "2", "--eval_iters", "4",
                      "--out_dir", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    log_one = read_log(one["log_path"])
    log_two = read_log(next((tmp_path / "two" / "logs").iterdir()))
    assert sorted(losses(log_two)) == [1, 2, 3]
    for step, loss in losses(log_one).items():
        assert math.isfinite(loss) and losses(log_two)[step] == pytest.approx(loss, abs=1e-5)
    val = [[r["val_loss"] for r in log if r["kind"] == "val"] for log in (log_one, log_two)]
    assert val[1] == pytest.approx(val[0], abs=1e-5)
    weights_one = torch.load(tmp_path / "one" / "pretrain_32_moe.pth", weights_only=True)
    weights_two = torch.load(tmp_path / "two" / "pretrain_32_moe.pth", weights_only=True)
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-5, rtol=0)


def test_use_moe_takes_minimind_style_values():
    assert parse_args([]).use_moe is False
    assert parse_args(["--use_moe"]).use_moe is True
    for value, expected in [("1", True), ("true", True), ("0", False), ("False", False)]:
        assert parse_args(["--use_moe", value]).use_moe is expected, value
    with pytest.raises(SystemExit):
        parse_args(["--use_moe", "maybe"])


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda:99"], "--device cuda:99"),  # no such GPU, with or without CUDA
    (["--device", "gpu0"], "not a device name"),
    (["--dim", "100"], "divisible by n_heads"),  # 100 / 8 heads
    (["--dim", "24"], "RoPE head dim 3 must be even"),  # 3 channels per head
    (["--eval_iters", "0"], "--eval_iters must be at least 1"),
    (["--decay_frac", "1.5"], "--decay_frac must be between 0 and 1"),
    (["--data_path", "a.jsonl", "b.jsonl", "--weights", "1"], "1 weights for 2"),
])
def test_flags_that_cannot_work_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    assert stop.value.code == 2  # argparse's usage error, before any data is prepared
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in last_line and message in last_line


def test_optimizer_decays_matrices_only_with_llama_betas():
    model = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320))
    optimizer = make_optimizer(model, 1e-3, 0.1, torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    norms = {id(p) for name, p in model.named_parameters() if "norm" in name}
    assert {id(p) for p in no_decay["params"]} == norms  # every RMSNorm gain, nothing else
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters()} - norms
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert optimizer.defaults["betas"] == (0.9, 0.95) and optimizer.defaults["lr"] == 1e-3
    assert optimizer.defaults["fused"]  # the fused CPU kernel: torch >= 2.4 (requirements.txt)


def test_first_lines_say_the_precision_and_why(corpus, tmp_path, capsys):
    def shown(out_dir, *extra):  # the default precision, and the report lines
        argv = argv_of(corpus, out_dir, "--max_steps", "1", *extra)
        at = argv.index("--dtype")
        return [a for a in argv[:at] + argv[at + 2:] if a != "--quiet"]
    pretrain(parse_args(shown(tmp_path / "a")))
    flags = Path("/proc/cpuinfo").read_text().split()  # Linux: the kernel's flags
    units = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    assert (f"cpu bfloat16 (autocast: {units} bf16 units)" if units
            else "cpu float32 (no AMX or AVX512-BF16 units)") in capsys.readouterr().out
    pretrain(parse_args(shown(tmp_path / "b", "--dtype", "bfloat16")))
    assert "cpu bfloat16 (--dtype)" in capsys.readouterr().out


def test_allow_tf32_lets_float32_matmuls_use_tensor_cores():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        allow_tf32()
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_compiled_run_matches_eager(corpus, tmp_path):
    flags = ("--max_steps", "2", "--accumulation_steps", "2")
    eager = pretrain(run_args(corpus, tmp_path / "eager", *flags))
    compiled = pretrain(run_args(corpus, tmp_path / "compiled", *flags, "--compile"))
    a, b = losses(read_log(eager["log_path"])), losses(read_log(compiled["log_path"]))
    assert sorted(b) == [1, 2]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    for name, p in eager["model"].state_dict().items():  # same keys: compiled in place
        torch.testing.assert_close(compiled["model"].state_dict()[name], p, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_on_cpu_tracks_float32(corpus, tmp_path, dtype):
    flags = ("--max_steps", "2", "--accumulation_steps", "1")
    full = pretrain(run_args(corpus, tmp_path / "fp32", *flags))
    low = pretrain(run_args(corpus, tmp_path / dtype, *flags, "--dtype", dtype))
    assert low["bad_steps"] == 0
    a, b = losses(read_log(full["log_path"])), losses(read_log(low["log_path"]))
    for step in a:  # bf16 keeps 8 mantissa bits, fp16 11: either is within 2 %
        assert b[step] == pytest.approx(a[step], rel=2e-2), step
    # only float16 needs loss scaling: a disabled GradScaler saves an empty state
    scaler = torch.load(tmp_path / dtype / "pretrain_32_resume.pth", weights_only=True)["scaler"]
    assert bool(scaler) == (dtype == "float16")


def test_float16_overflow_skipped_by_the_scaler_is_not_a_bad_step(corpus, tmp_path,
                                                                  monkeypatch):
    # A loss scale of 2**100 overflows every float16 gradient: the scaler skips each step and
    # halves the scale, its normal recovery. Counted as bad steps, 3 would stop the run at 2.
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda *a, **kw: real_scaler(*a, init_scale=2.0 ** 100, **kw))
    args = run_args(corpus, tmp_path, "--max_steps", "3", "--accumulation_steps", "1",
                    "--dtype", "float16", "--max_bad_steps", "2")
    torch.manual_seed(args.seed)
    initial = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320, max_seq_len=8192))
    result = pretrain(args)
    assert result["step"] == 3 and result["bad_steps"] == 0
    for name, p in initial.state_dict().items():  # no update was applied
        assert torch.equal(p, result["model"].state_dict()[name]), name
    state = torch.load(tmp_path / "pretrain_32_resume.pth", weights_only=True)
    assert state["scaler"]["scale"] == 2.0 ** 97
    assert all(math.isfinite(loss) for loss in losses(read_log(result["log_path"])).values())


def test_resume_with_another_max_seq_len_is_a_clear_error(corpus, tmp_path):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))
    with pytest.raises(ValueError, match="--max_seq_len 32 to continue it, or --resume none"):
        pretrain(run_args(corpus, tmp_path, "--max_steps", "2", "--max_seq_len", "16"))


def test_resume_on_other_prepared_data_is_a_clear_error(corpus, tmp_path):
    """The data position counts sequences of one prepared split; an edited source (or a new
    data format) is prepared into another directory, where it would point elsewhere."""
    data, tok = corpus
    source = tmp_path / "docs.jsonl"
    source.write_text(data.read_text())
    flags = TINY_FLAGS + ["--data_path", str(source), "--tokenizer", str(tok), "--device",
                          "cpu", "--out_dir", str(tmp_path / "out")]
    pretrain(parse_args(flags + ["--max_steps", "1"]))
    (old,) = (tmp_path / "out" / "data").iterdir()
    source.write_text(data.read_text() + json.dumps({"text": "one more document here."}) + "\n")
    with pytest.raises(ValueError, match=f"trained on prepared data {old.name.split('-')[-1]}"):
        pretrain(parse_args(flags + ["--max_steps", "2"]))
    resumed = pretrain(parse_args(flags + ["--max_steps", "2", "--data_path", str(old)]))
    assert resumed["step"] == 2  # on the data it was trained on, it continues


def test_resume_with_another_batch_size_warns_and_continues(corpus, tmp_path, capsys):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "1"))
    capsys.readouterr()
    resumed = pretrain(run_args(corpus, tmp_path, "--max_steps", "2", "--batch_size", "2"))
    assert resumed["step"] == 2
    assert "tokens per optimizer step change" in capsys.readouterr().out


def test_corrupt_resume_file_is_a_one_line_error_naming_it(corpus, tmp_path):
    data, tok = corpus
    resume = tmp_path / "pretrain_32_resume.pth"
    resume.write_bytes(b"PK\x03\x04 cut short")  # what a copy that died half-way leaves
    argv = TINY_FLAGS + ["--data_path", str(data), "--tokenizer", str(tok), "--device", "cpu",
                         "--out_dir", str(tmp_path), "--max_steps", "1"]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    message = str(stop.value.code)
    assert "\n" not in message and str(resume) in message and "--resume none" in message
    # the weights file beside it loads, but holds no optimizer: not a resume file either
    resume.unlink()
    pretrain(parse_args(argv))
    with pytest.raises(ValueError, match="pretrain_32.pth is not a resume file"):
        pretrain(parse_args(argv + ["--resume", str(tmp_path / "pretrain_32.pth")]))


def test_val_loss_weights_every_target_token_equally(corpus, tmp_path):
    data, tok = corpus
    val_ds = PretrainDataset(prepare([str(data)], tok, tmp_path, verbose=False), "val", 32)
    # batches of 4 of the 6 windows, the last partly padding: a mean of the batch means
    # would give its tokens more weight than the others'
    assert len(val_ds) == 6 and 0 < val_ds[5][2].sum() < 32
    torch.manual_seed(0)
    model = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320))
    with torch.no_grad():  # sharp logits: at initialisation every token's loss is near ln 320,
        model.norm.weight.mul_(30)  # and any way of averaging them agrees
    # bytes per target: the UTF-8 of its text, special tokens none (an ASCII corpus: every
    # token decodes to whole characters)
    text = load_tokenizer(tok).decode
    nll, targets, n_bytes = 0.0, 0.0, 0
    with torch.no_grad():
        for X, Y, mask in (val_ds[i] for i in range(len(val_ds))):
            per_token = F.cross_entropy(model(X[None]).logits[0], Y, reduction="none")
            nll += (per_token * mask).sum().item()
            targets += mask.sum().item()
            n_bytes += sum(len(text([y]).encode()) for y, m in zip(Y.tolist(), mask) if m)
    args = parse_args(TINY_FLAGS + ["--eval_iters", "2"])  # 2 batches: every window
    got = val_metrics(model, val_ds, [len(b) for b in token_bytes(load_tokenizer(tok))], args, 0, 1,
                   torch.device("cpu"), contextlib.nullcontext())
    assert got["loss"] == pytest.approx(nll / targets, rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)


def test_prepared_directory_without_a_val_split_trains_and_logs_no_val_loss(corpus, tmp_path):
    data, tok = corpus
    prepared = prepare([str(data)], tok, tmp_path / "data", val_fraction=0, verbose=False)
    val_ds = PretrainDataset(prepared, "val", 32)
    assert len(val_ds) == 0
    # the prepared directory as --data_path; the tokenizer is the one that prepared it
    args = parse_args(TINY_FLAGS + ["--data_path", str(prepared), "--device", "cpu",
                                    "--out_dir", str(tmp_path / "out"), "--max_steps", "2",
                                    "--eval_interval", "1"])
    result = pretrain(args)
    log = read_log(result["log_path"])
    assert sorted(losses(log)) == [1, 2]
    assert [r for r in log if r["kind"] == "val"] == []  # not a val loss of 0
    assert not (tmp_path / "out" / "data").exists()  # nothing prepared again
    byte_counts = [len(b) for b in token_bytes(load_tokenizer(tok))]
    assert val_metrics(result["model"], val_ds, byte_counts, args, 0, 1, torch.device("cpu"),
                    contextlib.nullcontext()) is None


def test_data_flags_reach_the_tokenizer_and_dataset_preparation(tmp_path):
    # two sources whose text sits under "content", one with a broken line
    rng = random.Random(1)
    words = ["".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(300)]
    for name, n_docs in (("a", 30), ("b", 20)):
        lines = [json.dumps({"content": " ".join(rng.choices(words, k=40)) + "."})
                 for _ in range(n_docs)]
        if name == "a":
            lines.insert(3, '{"content": "a line cut sh')
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    flags = TINY_FLAGS + ["--data_path", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                          "--text_field", "content", "--skip_bad_lines", "--weights", "2", "0.5",
                          "--vocab_size", "300", "--device", "cpu", "--max_steps", "1",
                          "--out_dir", str(tmp_path / "out")]
    pretrain(parse_args(flags))  # the tokenizer is trained on "content" too: no --tokenizer
    (prepared,) = (tmp_path / "out" / "data").iterdir()
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["options"]["text_field"] == "content"
    assert meta["report"]["bad_lines"] == 1
    assert [source["weight"] for source in meta["sources"]] == [2.0, 0.5]


def test_tokens_per_second_leaves_out_evaluation_and_saving(corpus, tmp_path, monkeypatch):
    # a clock on which each evaluation takes 1000 s; training takes its real (tiny) time
    real_clock, paused = time.perf_counter, [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + paused[0])

    def slow_evaluate(*args):
        paused[0] += 1000.0
        return {"loss": 1.0, "perplexity": math.e, "bits_per_byte": 0.5}

    monkeypatch.setattr(evaluator, "val_metrics", slow_evaluate)
    result = pretrain(run_args(corpus, tmp_path, "--max_steps", "2", "--accumulation_steps", "1",
                               "--log_interval", "2", "--eval_interval", "1",
                               "--save_interval", "1"))
    train = [r for r in read_log(result["log_path"]) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]  # the first step is always logged
    seconds = 4 * 32 / train[1]["tokens_per_sec"]  # step 2: 4 sequences of 32 tokens
    assert seconds < 500  # not the 1000 s evaluation (nor the save) after step 1


def test_dropout_and_the_attention_kernel_may_change_when_a_run_resumes(corpus, tmp_path):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "2"))
    resumed = pretrain(run_args(corpus, tmp_path, "--max_steps", "3", "--flash_attn", "0",
                                "--dropout", "0.1"))
    config = resumed["model"].config
    assert resumed["step"] == 3 and (config.flash_attn, config.dropout) == (False, 0.1)
    with pytest.raises(ValueError, match="n_layers 2"):  # the model's shape may not
        pretrain(run_args(corpus, tmp_path, "--max_steps", "4", "--n_layers", "3"))


def test_a_resume_file_older_than_a_config_field_continues_with_its_default(corpus, tmp_path):
    pretrain(run_args(corpus, tmp_path, "--max_steps", "2"))
    resume = tmp_path / "pretrain_32_resume.pth"
    saved = torch.load(resume, weights_only=True)
    for field in ("norm_eps", "seq_aux", "qk_norm", "head_dim", "attention", "moe_inter_dim",
                  "score_func", "first_k_dense"):
        del saved["config"][field]  # as if they came later
    torch.save(saved, resume)
    assert pretrain(run_args(corpus, tmp_path, "--max_steps", "3"))["step"] == 3
