"""memory.py: the memory plan against hand counts and against autograd's own record of a
whole model, and activation checkpointing against the plain backward pass."""

import json

import pytest
import torch

import train_pretrain
from memory import activation_bytes, checkpoint_blocks, memory_plan, saved_bytes
from model import LMConfig, Transformer
from train_pretrain import masked_lm_loss

from test_train import TINY_FLAGS, corpus  # noqa: F401 (a fixture)

SHAPE = dict(dim=64, n_layers=2, vocab_size=300)


def hand_counts(dim=64, layers=2, vocab=300, n_heads=8, n_kv_heads=2, hidden=192):
    """(all parameters, Muon's): attention wq, wo (dim x dim), wk, wv (dim x kv) and the
    SwiGLU's three matrices per block for Muon; the tied embedding and the norm gains
    (two per block and the last) for AdamW."""
    kv = dim // n_heads * n_kv_heads
    muon = layers * (2 * dim * dim + 2 * dim * kv + 3 * dim * hidden)
    return muon + vocab * dim + (2 * layers + 1) * dim, muon


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_plan_of_weights_gradients_and_optimizer_state_is_counted_by_hand(optimizer):
    n, muon = hand_counts()
    # 2 x (2*4096 + 2*1024 + 3*12288) for Muon, + 300*64 + 5*64 (as tests/test_bench.py counts)
    assert (n, muon) == (113_728, 94_208)
    model = Transformer(LMConfig(**SHAPE))
    plan = memory_plan(model, 4, 32, 2, optimizer, torch.float32)
    optimizer_bytes = 8 * n if optimizer == "adamw" else 4 * muon + 8 * (n - muon)
    assert plan["parameters"] == plan["gradients"] == plan["DDP buckets"] == 4 * n
    assert plan["optimizer state"] == optimizer_bytes
    assert "DDP buckets" not in memory_plan(model, 4, 32, 1, optimizer, torch.float32)


def test_a_sharded_plan_splits_the_model_states_over_the_ranks():
    n, _ = hand_counts()
    model = Transformer(LMConfig(**SHAPE))
    plan = memory_plan(model, 4, 32, 4, "adamw", torch.bfloat16, sharded=True)
    assert plan["parameters"] == plan["gradients"] == 4 * n // 4
    assert plan["optimizer state"] == 8 * n // 4 and "DDP buckets" not in plan
    # two blocks gathered whole in bf16: 47,104 matrix weights and two norm gains of 64
    assert plan["gathered blocks"] == 2 * (47_104 + 2 * 64) * 2


def test_saved_bytes_are_what_autograd_keeps_for_a_hand_example():
    x = torch.randn(10, 8, requires_grad=True)
    w = torch.randn(8, 8, requires_grad=True)
    # x @ w keeps x (and w, a parameter: left out); sin keeps its input y; y * 2 keeps nothing
    kept = saved_bytes(lambda: ((x @ w).sin() * 2).sum(), exclude=[w])
    assert kept == 10 * 8 * 4 + 10 * 8 * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_planned_activations_add_up_to_what_a_whole_model_keeps(use_moe, dtype):
    """The plan measures one block and the head, at 1 and 2 sequences, and multiplies by the
    layers and the sequences; autograd's record of a whole model's forward pass of 3
    sequences must agree. Under bf16 autocast each weight's bf16 copy is kept once a
    micro-batch, not once a sequence."""
    torch.manual_seed(0)
    config = LMConfig(**SHAPE, use_moe=use_moe)
    model = Transformer(config)
    ids = torch.randint(0, 300, (3, 48))
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        whole = saved_bytes(lambda: masked_lm_loss(model(ids).logits, ids, torch.ones(3, 48)),
                               list(model.parameters()))
    (block_once, block_each), (head_once, head_each) = activation_bytes(config, 48, dtype)
    planned = memory_plan(model, 3, 48, 1, "adamw", dtype)
    assert planned["activations"] == (2 * (block_once + 3 * block_each) + head_once
                                      + 3 * head_each)
    assert abs(whole - planned["activations"]) <= 0.02 * whole


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(use_moe):
    torch.manual_seed(0)
    plain = Transformer(LMConfig(**SHAPE, use_moe=use_moe))
    checkpointed = Transformer(LMConfig(**SHAPE, use_moe=use_moe))
    checkpointed.load_state_dict(plain.state_dict())
    checkpoint_blocks(checkpointed)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # names unchanged
    ids = torch.randint(0, 300, (2, 40))
    for model in (plain, checkpointed):
        out = model(ids)
        (masked_lm_loss(out.logits, ids, torch.ones(2, 40)) + out.aux_loss).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
    # a checkpointed block keeps its input alone
    kept = saved_bytes(lambda: checkpointed(ids).logits.sum(),
                          list(checkpointed.parameters()))
    whole = saved_bytes(lambda: plain(ids).logits.sum(), list(plain.parameters()))
    assert kept < whole / 2


def test_grad_checkpoint_run_logs_the_losses_of_a_plain_run(corpus, tmp_path, capsys):  # noqa: F811
    data, tok = corpus
    logs = []
    for extra in ([], ["--grad_checkpoint"]):
        out_dir = tmp_path / ("ckpt" if extra else "plain")
        train_pretrain.main(TINY_FLAGS + ["--data_path", str(data), "--tokenizer", str(tok),
                                          "--out_dir", str(out_dir), "--device", "cpu",
                                          "--max_steps", "3", *extra])
        (log,) = (out_dir / "logs").glob("*.jsonl")
        logs.append([json.loads(line)["loss"] for line in log.read_text().splitlines()
                     if '"kind": "train"' in line])
    assert logs[0] == pytest.approx(logs[1], rel=1e-6) and len(logs[0]) == 3


def test_dry_run_prints_the_plan_and_reads_no_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_pretrain.main(["--dim", "64", "--n_layers", "2", "--dry_run", "--nproc", "8",
                         "--data_path", "no_such_file.jsonl"])
    out = capsys.readouterr().out
    assert out.startswith("memory plan per GPU (8 ranks, muon, bfloat16")
    assert "activations" in out and "total" in out
    assert not any(tmp_path.iterdir())  # nothing prepared, nothing written
