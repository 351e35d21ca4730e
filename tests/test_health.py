"""health.py: each check fires on a log that shows its symptom, and stays silent on a
healthy one; a real run writes what fires into its log."""

import math
import random

import pytest

import train_pretrain
from health import Health
from test_train import corpus, read_log, run_args  # noqa: F401 (corpus: a fixture)
from train_pretrain import masked_lm_loss, pretrain

VOCAB, WARMUP = 6400, 10


def healthy(n=60, seed=0):
    """Train and val records of a run that learns: the loss falls from ln(vocab) like a
    power law, with a little noise; steady gradient norms and throughput."""
    rng = random.Random(seed)
    records = []
    for step in range(1, n + 1):
        loss = 2.5 + (math.log(VOCAB) - 2.5) / math.sqrt(step) + rng.gauss(0, 0.01)
        records.append({"kind": "train", "step": step, "loss": loss,
                        "grad_norm": 1 + rng.random() * 0.2,
                        "tokens_per_sec": 10000 * (1 + rng.gauss(0, 0.03))})
        if step % 10 == 0:
            records.append({"kind": "val", "step": step, "val_loss": loss + 0.05})
    return records


def warnings_of(records, **kwargs):
    health = Health(VOCAB, WARMUP, **kwargs)
    return [(w["check"], w["step"]) for r in records for w in health.feed(r)]


def test_a_healthy_run_raises_no_warning():
    for seed in range(5):
        assert warnings_of(healthy(seed=seed)) == []


def test_a_first_loss_far_from_ln_vocab_warns_but_not_on_resume():
    records = healthy()
    records[0]["loss"] = math.log(VOCAB) + 3
    assert ("first_loss", 1) in warnings_of(records)
    assert "first_loss" not in [c for c, _ in warnings_of(records, resumed=True)]
    # a first record that averages many steps says nothing about the initialisation
    assert "first_loss" not in [c for c, _ in warnings_of(records[1:])]


def test_a_loss_and_a_gradient_spike_warn_at_their_step():
    records = healthy()
    spike = next(r for r in records if r.get("step") == 30 and r["kind"] == "train")
    spike["loss"] += 1.0
    spike["grad_norm"] *= 50
    found = warnings_of(records)
    assert ("loss_spike", 30) in found and ("grad_spike", 30) in found


def test_a_loss_that_stops_falling_after_warmup_warns_once():
    records = [dict(r, loss=4.0) if r["kind"] == "train" and r["step"] > 15 else r
               for r in healthy(80)]
    found = [c for c, _ in warnings_of(records)]
    assert found.count("plateau") == 1


def test_validation_rising_while_training_falls_is_overfitting():
    records = healthy(60)
    for r in records:
        if r["kind"] == "val" and r["step"] >= 30:
            r["val_loss"] = 3.0 + r["step"] / 100  # rises at 30, 40, 50, 60
    assert "overfitting" in [c for c, _ in warnings_of(records)]


def test_throughput_falling_by_half_warns():
    records = healthy()
    next(r for r in records if r.get("step") == 40)["tokens_per_sec"] = 3000
    assert ("slow", 40) in warnings_of(records)


def test_a_run_logs_the_warnings_it_prints(corpus, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}

    def spike_at_step_12(*a):
        calls["n"] += 1
        loss = masked_lm_loss(*a)
        return loss + 5.0 if calls["n"] == 12 else loss

    monkeypatch.setattr(train_pretrain, "masked_lm_loss", spike_at_step_12)
    result = pretrain(run_args(corpus, tmp_path, "--max_steps", "14",
                               "--accumulation_steps", "1"))
    logged = [r for r in read_log(result["log_path"]) if r["kind"] == "warning"]
    assert [(r["check"], r["step"]) for r in logged] == [("loss_spike", 12)]
