"""Is the run healthy? Checks on the records a run logs, as it logs them (runlog.RunLog
feeds them here; what fires is printed above the progress bar and logged as
{"kind": "warning", "step", "check", "message"}). A warning never stops the run; each says
what usually causes the symptom and what to try. The thresholds are all here, explained.
"""

import math
from collections import deque
from statistics import median

# The first step's loss (train_pretrain.py logs it) should be near ln(vocab): the
# cross-entropy of a uniform guess, which is what a freshly initialised model makes. More
# than this many nats away, the init is off.
FIRST_LOSS_NATS = 1.0
# After warmup the loss should fall: compare the mean of the last RECENT train records with
# the mean of the RECENT records before them; less than PLATEAU_FALL lower is a plateau.
RECENT = 10
PLATEAU_FALL = 0.002  # a share of the loss: 0.2% over RECENT records
# A spike: a loss this many nats above the mean of the RECENT records before it, or a
# gradient norm this many times their median.
LOSS_SPIKE_NATS = 0.5
GRAD_SPIKE_TIMES = 10
# Overfitting: the validation loss rose this many evaluations in a row while the training
# loss fell over the same steps.
VAL_RISES = 2
# Throughput: tokens/s below this share of the median of the RECENT records before it.
SLOW_SHARE = 0.5

# every check, as the report names it (report.py gives each a verdict)
CHECKS = {"first_loss": "first loss near ln(vocab)", "plateau": "loss falling after warmup",
          "loss_spike": "no loss spike", "grad_spike": "no gradient-norm spike",
          "overfitting": "validation loss not rising while training loss falls",
          "slow": "steady throughput"}


class Health:
    """feed(record) -> the warnings (records) it raises; one Health per run."""

    def __init__(self, vocab_size, warmup_steps, resumed=False):
        self.ln_vocab, self.warmup = math.log(vocab_size), warmup_steps
        self.train = deque(maxlen=2 * RECENT)  # recent train records with a loss
        self.val = deque(maxlen=VAL_RISES + 1)  # (step, val_loss, train loss then)
        self.first_seen = resumed  # a resumed run's first loss is not a fresh model's
        self.plateau_said = False

    def feed(self, record):
        kind = record.get("kind")
        if kind == "train":
            fired = self.train_checks(record)
        elif kind == "val" and record.get("val_loss") is not None:
            fired = self.val_checks(record)
        else:
            return []
        return [{"kind": "warning", "step": record["step"], "check": check, "message": message}
                for check, message in fired]

    def train_checks(self, r):
        loss, before = r.get("loss"), list(self.train)[-RECENT:]
        if loss is None:  # every step of the interval was skipped: the NaN guard says so
            return
        if not self.first_seen:
            self.first_seen = True
            if r["step"] == 1 and abs(loss - self.ln_vocab) > FIRST_LOSS_NATS:
                yield "first_loss", (
                    f"the first loss {loss:.2f} is far from ln(vocab) = {self.ln_vocab:.2f}, "
                    "the loss of a uniform guess: the initialisation is off (logits too "
                    "large), or the tokenizer and the model disagree on the vocabulary")
        if before:
            mean = sum(b["loss"] for b in before) / len(before)
            if loss > mean + LOSS_SPIKE_NATS:
                yield "loss_spike", (
                    f"loss spike: {loss:.3f} against {mean:.3f} over the last {len(before)} "
                    "logs; usually a learning rate too high for this batch (lower "
                    "--learning_rate or lengthen --warmup_iters) or a bad stretch of data")
            norms = [b["grad_norm"] for b in before if b.get("grad_norm") is not None]
            if r.get("grad_norm") is not None and norms and \
                    r["grad_norm"] > GRAD_SPIKE_TIMES * median(norms):
                yield "grad_spike", (
                    f"gradient norm {r['grad_norm']:.2f}, {GRAD_SPIKE_TIMES}x or more its "
                    f"recent median {median(norms):.2f}; clipping (--grad_clip) caps the "
                    "step, but repeated spikes mean the learning rate is too high")
            speeds = [b["tokens_per_sec"] for b in before if b.get("tokens_per_sec")]
            if speeds and r.get("tokens_per_sec") and \
                    r["tokens_per_sec"] < SLOW_SHARE * median(speeds):
                yield "slow", (
                    f"{r['tokens_per_sec']:,.0f} tokens/s, under half the recent "
                    f"{median(speeds):,.0f}: data loading (raise --num_workers), a "
                    "throttled device, or another job on the same machine")
        self.train.append(r)
        if (not self.plateau_said and r["step"] > self.warmup
                and len(self.train) == 2 * RECENT and self.train[0]["step"] >= self.warmup):
            older = [b["loss"] for b in self.train][:RECENT]
            newer = [b["loss"] for b in self.train][RECENT:]
            old_mean, new_mean = sum(older) / RECENT, sum(newer) / RECENT
            if new_mean > old_mean * (1 - PLATEAU_FALL):
                self.plateau_said = True
                yield "plateau", (
                    f"the loss is not falling after warmup ({old_mean:.3f} then "
                    f"{new_mean:.3f} over the last {2 * RECENT} logs): a learning rate too "
                    "low or too high, too little data (repeated epochs), or a model that "
                    "has learned what this data holds")

    def val_checks(self, r):
        train_loss = self.train[-1]["loss"] if self.train else None
        self.val.append((r["step"], r["val_loss"], train_loss))
        if len(self.val) == VAL_RISES + 1 and None not in (self.val[0][2], train_loss):
            vals = [v for _, v, _ in self.val]
            if all(b > a for a, b in zip(vals, vals[1:])) and train_loss < self.val[0][2]:
                yield "overfitting", (
                    f"validation loss rose {VAL_RISES} evaluations in a row ({vals[0]:.3f} "
                    f"to {vals[-1]:.3f}) while the training loss fell: the model is "
                    "memorising the training split (repeated epochs); stop here, or add "
                    "data, or raise --weight_decay")
