"""What a training run reports while it runs: one JSON record per line in
OUT_DIR/logs/<run>.jsonl (read by scripts/plot_loss.py), the same records to wandb when
asked, a progress bar with the latest figures, and messages printed above it.

Records: {"kind": "run" | "resume", ...flags, config, data report} when a run starts or
continues, {"kind": "train", "step", "tokens", "loss", "lr", "grad_norm", "tokens_per_sec",
...} every --log_interval steps; every --eval_interval steps {"kind": "val", "step",
"tokens", "val_loss", "val_ppl", "val_bpb"}, {"kind": "probe", ..., "accuracy",
"answer_logprob"}, {"kind": "bench", ..., "task", "accuracy", "low", "high", "chance",
"items", ...} per task of --bench (benchmarks.py) and {"kind": "sample", ..., "samples":
[{"prompt", "text"}]}; {"kind":
"warning", "step", "check", "message"} when a check of health.py fires; {"kind": "end",
"step", "tokens", "stopped_by"} when the run ends, finished or stopped by a signal (a run
that crashed has none). Each record also has "time" (seconds since 1970). Only rank 0
writes; the others stay silent. Every line is strict JSON: what was not measured is null,
never NaN (the loss of an interval whose every step was skipped as non-finite, a
non-finite gradient norm).

tokens/s measures training alone: time spent inside `paused()` (evaluation, saving) is
taken off the clock. At the end: the glue that opens a run's log (describe, open_log) and
writes its report (report_run: report.py, at the end of every run).
"""

import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from experts import load_summary
from device import default_dtype, peak_flops_per_second, sync as sync_device
from health import Health
from report import write_report


class RunLog:
    """Messages from the start; the JSONL file and the progress bar once `open`ed."""

    def __init__(self, rank, quiet):
        self.rank, self.show = rank, rank == 0 and not quiet
        self.file = self.wandb = self.bar = self.health = None
        self.loss_sum, self.good_steps = 0.0, 0  # of the steps since the last train record
        self.expert_load = None  # an MoE's slots per expert since then (layers, E)
        self.last_time, self.last_tokens = time.perf_counter(), 0

    def open(self, path, total_steps, step, tokens_seen, health):
        """Append to the log at path (rank 0); a bar from step to total_steps. health: a
        health.Health that watches the records written, and warns."""
        self.health = health
        if self.rank == 0:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=step, disable=not self.show,
                        dynamic_ncols=True, desc="pretrain")
        self.last_time, self.last_tokens = time.perf_counter(), tokens_seen

    def say(self, message):
        """Print above the progress bar (rank 0, unless --quiet)."""
        if self.show:
            tqdm.write(message)

    def start_wandb(self, project, config):
        try:
            import wandb
        except ImportError:
            self.say("warning: --use_wandb asked but wandb is not installed; logging to the "
                     "JSONL file only")
            return
        if self.rank == 0:
            self.wandb = wandb.init(project=project, config=config)

    def write(self, record):
        # strict JSON has no NaN or infinity: a value that is not a finite number is null
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in record.items()}
        self._write(record)
        for warning in self.health.feed(record):
            self.say(f"warning (step {warning['step']}): {warning['message']}")
            self._write(warning)

    def _write(self, record):
        record["time"] = round(time.time(), 3)  # wall clock: the report's wall time
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.wandb is not None:  # its charts take numbers; the texts stay in the file
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float))}
            self.wandb.log(numbers, step=record["step"])

    def add_step(self, loss, good, expert_load=None):
        """One optimizer step done; its loss and `good` (device tensors) join the interval's
        mean without waiting for the device. Skipped (bad) steps do not count. expert_load:
        an MoE's slots per expert (experts.balance_experts), summed for the record."""
        self.bar.update(1)
        if expert_load is not None:
            self.expert_load = expert_load + (0 if self.expert_load is None else
                                              self.expert_load)
        self.loss_sum = self.loss_sum + torch.where(good, loss, 0.0)  # a NaN loss adds 0
        self.good_steps = self.good_steps + good

    def train_record(self, step, tokens_seen, lr, grad_norm, extra, mfu_of=None):
        """Write the "train" record of the steps since the last one and show it on the bar;
        mfu_of(tokens_per_sec) gives the MFU where the GPU's peak is known."""
        now = time.perf_counter()
        tokens_per_sec = (tokens_seen - self.last_tokens) / max(now - self.last_time, 1e-9)
        # the one wait for the device; no loss when every step of the interval was skipped
        good_steps = int(self.good_steps)
        loss = float(self.loss_sum) / good_steps if good_steps else None
        record = {"kind": "train", "step": step, "tokens": tokens_seen, "loss": loss, "lr": lr,
                  "grad_norm": float(grad_norm), "tokens_per_sec": tokens_per_sec, **extra}
        postfix = {"loss": "skipped" if loss is None else f"{loss:.3f}", "lr": f"{lr:.2e}",
                   "tok/s": f"{tokens_per_sec:,.0f}"}
        if mfu_of is not None:
            record["mfu"] = mfu_of(tokens_per_sec)
            postfix["mfu"] = f"{record['mfu']:.1%}"
        if self.expert_load is not None:
            record.update(load_summary(self.expert_load))
            postfix["experts"] = f"spread {record['expert_spread']:.2f}"
            self.expert_load = None
        self.write(record)
        self.bar.set_postfix(postfix)
        self.loss_sum, self.good_steps = 0.0, 0
        self.last_time, self.last_tokens = now, tokens_seen

    @contextmanager
    def paused(self, device):
        """Time inside does not count as training. It first waits for the step's queued GPU
        kernels, which are training time."""
        sync_device(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.last_time += time.perf_counter() - start

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def describe(run, resumed_from):
    """The first lines of a train_pretrain.Run: the model and the plan."""
    m, config, plan, say = run.raw_model, run.raw_model.config, run.plan, run.log.say
    moe = f" ({m.num_params(active=True) / 1e6:.2f}M active per token)" if config.use_moe else ""
    say(f"model: {m.num_params() / 1e6:.2f}M parameters{moe}, vocab {config.vocab_size}, "
        f"dim {config.dim}, {config.n_layers} layers")
    say(f"train: {len(run.train_ds)} sequences of {run.args.max_seq_len} tokens, "
        f"{plan.tokens_per_step} tokens per optimizer step, {plan.total_steps} steps "
        f"({plan.steps_per_epoch} per epoch), warmup {plan.warmup}, world size "
        f"{run.world_size}, {run.device.type} {run.dtype_name} ("
        + ("--dtype" if run.args.dtype else default_dtype(run.device)[1]) + ")")
    if len(run.val_ds) < run.world_size:
        say(f"note: the validation split has {len(run.val_ds)} sequences of "
            f"{run.args.max_seq_len} tokens, too few for every rank: no validation loss")
    if resumed_from:
        say(f"resumed from {resumed_from} at step {run.first_step}")


def open_log(run, state):
    """Start the JSONL log (appending to the resumed run's) with a "run" or "resume" record."""
    if run.args.use_wandb:  # first: wandb.init takes seconds, which are not training time
        run.log.start_wandb(run.args.wandb_project, vars(run.args))
    run.log.open(state.log_path, run.plan.total_steps, state.step, state.tokens_seen,
                 Health(run.tok.get_vocab_size(), run.plan.warmup, resumed=state.step > 0))
    run.log.write({"kind": "resume" if state.step else "run", "step": state.step,
                   "config": asdict(run.raw_model.config), "args": vars(run.args),
                   "world_size": run.world_size, "device": run.device.type,
                   "dtype": run.dtype_name, "data": run.data_meta, "plan": asdict(run.plan),
                   "probes": [probe["prompt"] for probe in run.probes]})


def report_run(run, state):
    """OUT_DIR/reports/<log name>/report.md (report.py). A report that fails costs
    one line, never the run."""
    out = Path(run.args.out_dir) / "reports" / Path(state.log_path).stem
    try:
        run.log.say(f"report: {write_report([state.log_path], out)}")
    except Exception as e:  # noqa: BLE001 (an extra: whatever goes wrong, the run is done)
        print(f"warning: no report written ({type(e).__name__}: {e}); rerun "
              f"`python report.py {state.log_path}` to see why", file=sys.stderr)


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per token of a Transformer: 6N (N active parameters; forward 2N,
    backward 4N; an MoE's idle experts left out) plus 6 * layers * seq_len * heads * (query
    + value channels of a head) for attention scores and values: 12 * layers * dim * seq_len
    for GQA (PaLM, appendix B). MLA counts its expanded heads (nope + rope, v)."""
    c = model.config
    qk, v = ((c.qk_nope_head_dim + c.qk_rope_head_dim, c.v_head_dim) if c.attention == "mla"
             else (c.head_dim, c.head_dim))
    return 6 * model.num_params(active=True) + 6 * c.n_layers * seq_len * c.n_heads * (qk + v)


def mfu_of(run):
    """tokens/s -> model FLOP utilisation of a train_pretrain.Run, or None where the device's
    peak is unknown (CPUs, unlisted GPUs)."""
    peak = peak_flops_per_second(run.device)
    if not peak:
        return None
    flops = flops_per_token(run.raw_model, run.args.max_seq_len)
    return lambda tokens_per_sec: flops * tokens_per_sec / run.world_size / peak


def warn_cpu_time(run, state, quick_command):
    """After the first step on a CPU: the GPU-sized defaults would take hours; say so."""
    eta = (time.perf_counter() - run.log.last_time) * (run.plan.total_steps - state.step)
    if eta > 1800:
        run.log.say(f"on this CPU the run needs about {eta / 3600:.1f} h; for a quick run "
                    f"try: {quick_command}")
