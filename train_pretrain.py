"""Pretrain MyLLM: next-token prediction on a packed token stream, on one device or many.

    python train_pretrain.py                                   # one process
    torchrun --nproc_per_node 6 train_pretrain.py              # one machine, 6 GPUs
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \\
        --rdzv_backend c10d --rdzv_endpoint HOST:29500 train_pretrain.py   # on every node

The story, top to bottom: flags -> learning-rate schedule, loss and optimizer -> the plan
and the data -> one optimizer step `train_step` -> what stays fixed in a run (`Run`) -> what
follows a step (stop on a signal, log, evaluate, save) -> the loop `train_loop` ->
`start_run` (model, optimizer, state) -> `pretrain(args)`, which sets a run up and runs it.
The machinery is imported: distributed.py (process group, stop signal), checkpoint.py
(files, the run's state), runlog.py (log, report), evaluator.py, prepare.py (the data).
"""

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from benchmarks import Tracker, add_bench_flags, check_tasks
from checkpoint import (DiskFull, RunState, arch_tag, checkpoint_paths, find_resume_file,
                        lock_out_dir, restore_run, save_run)
from dataset import PretrainDataset, ShardedSampler
from device import device_error, mixed_precision, pick_device
from distributed import StopSignal, check_same_data, ranks, setup_distributed, teardown
from experts import balance_experts
from evaluator import default_probes, load_probes, sample_prompts, validate
from flags import (add_device_flags, add_model_flags, add_out_dir_flag, add_prepare_flags,
                   add_source_flags, model_fields, str_to_bool)
from fsdp import check_fsdp_flags, full_value, is_sharded, resume_dir, shard_model
from memory import add_memory_flags, checkpoint_blocks, dry_run, peak_line, plan_lines
from model import LMConfig, Transformer
from muon import Muon, muon_param_groups, step_where
from prepare import MINIMIND_DATA, check_source_flags, load_meta, prepare_for_run
from runlog import RunLog, describe, mfu_of, open_log, report_run, warn_cpu_time
from tokenizer import token_byte_counts

SAMPLES = 3  # the sample prompts (evaluator.sample_prompts) continued at every evaluation
# a run that fits a 2-core CPU in minutes (the README's first command)
QUICK_FLAGS = ("--dim 192 --n_layers 4 --max_seq_len 128 --batch_size 32 --accumulation_steps 1 "
               "--epochs 2 --log_interval 20 --eval_interval 100")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Pretrain a MyLLM model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # MiniMind's flags, same names and meaning
    add_out_dir_flag(p)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=32, help="sequences per micro-step per rank")
    p.add_argument("--learning_rate", type=float, default=None,
                   help="peak rate; default 5e-4 (MiniMind's) at dim >= 512, 5e-4 * 512 / dim "
                        "below, at most 2e-3 (default_learning_rate)")
    add_device_flags(p)
    p.add_argument("--use_wandb", action="store_true")
    p.add_argument("--wandb_project", default="MyLLM-Pretrain")
    p.add_argument("--num_workers", type=int, default=None,
                   help="data loader processes; default 1 on CUDA (the next batch loads while "
                        "the GPU works), 0 on CPU (slicing a memory map is cheaper than a "
                        "worker process)")
    p.add_argument("--accumulation_steps", type=int, default=8,
                   help="micro-steps per optimizer step")
    p.add_argument("--grad_clip", type=float, default=1.0)
    p.add_argument("--warmup_iters", type=int, default=None,
                   help="warmup optimizer steps; default 2%% of all steps")
    p.add_argument("--log_interval", type=int, default=100, help="optimizer steps")
    p.add_argument("--save_interval", type=int, default=500, help="optimizer steps")
    add_model_flags(p)
    p.add_argument("--max_seq_len", type=int, default=512,
                   help="tokens per training sequence; the model's context (its RoPE tables) "
                        "is this or 8192, whichever is longer")
    p.add_argument("--dropout", type=float, default=0.0, help="MiniMind's; 0 for pretraining")
    p.add_argument("--flash_attn", type=str_to_bool, default=True,
                   help="fused attention (scaled_dot_product_attention); 0: spelled out")
    add_source_flags(p, data_path_help=(
        f"raw .jsonl/.txt files or globs, or one directory prepared by dataset.py; default "
        f"{MINIMIND_DATA} if present, else the built-in corpus"))
    add_prepare_flags(p)
    # what a serious run needs
    p.add_argument("--vocab_size", type=int, default=6400, help="when a tokenizer is trained")
    p.add_argument("--max_steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--max_tokens", type=float, default=None, help="stop after this many tokens")
    p.add_argument("--min_lr", type=float, default=None, help="default learning_rate / 10")
    # wsd by default: ahead of the cosine beyond seed noise at equal steps (scripts/speedrun.py,
    # docs/quality.md); cosine is MiniMind's schedule
    p.add_argument("--lr_schedule", default="wsd", choices=["wsd", "cosine"],
                   help="after the warmup: warmup-stable-decay (constant, then linear to min_lr "
                        "over the last --decay_frac of the steps), or a cosine to min_lr")
    p.add_argument("--decay_frac", type=float, default=0.2,
                   help="wsd: the share of all steps spent decaying")
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--optimizer", default=None, choices=["adamw", "muon"],
                   help="muon: Muon for the hidden weight matrices, AdamW for embedding, "
                        "norms and MoE router (muon.py); default muon below dim 512, adamw "
                        "(MiniMind's) from 512 (default_optimizer)")
    p.add_argument("--muon_lr", type=float, default=0.02,
                   help="Muon's peak learning rate; it follows the same schedule, scaled by "
                        "muon_lr / learning_rate")
    p.add_argument("--eval_interval", type=int, default=500, help="optimizer steps")
    p.add_argument("--eval_iters", type=int, default=20, help="validation batches per rank")
    p.add_argument("--compile", action="store_true", help="torch.compile the model and the loss")
    p.add_argument("--seed", type=int, default=1337, help="initial weights and data order")
    p.add_argument("--resume", default="auto",
                   help="auto: continue from the resume file if there is one; none; or a path")
    p.add_argument("--max_bad_steps", type=int, default=5,
                   help="stop after this many non-finite steps in a row")
    p.add_argument("--quiet", action="store_true", help="no progress bar or report")
    p.add_argument("--probe", default="auto",
                   help="probe file (eval_model.py --probe) scored at every evaluation; auto: "
                        "the shipped set in the corpus language; none: no probes")
    p.add_argument("--no_report", action="store_true",
                   help="no OUT_DIR/reports/<run>/report.md at the end (report.py)")
    add_bench_flags(p)  # --bench NAMES: scored at every evaluation
    add_memory_flags(p)  # --grad_checkpoint; --dry_run --nproc N prints the memory plan
    args = p.parse_args(argv)
    if args.learning_rate is None:
        args.learning_rate = default_learning_rate(args.dim)
    if args.optimizer is None:
        args.optimizer = default_optimizer(args.dim)
    check_args(p, args)
    if args.min_lr is None:
        args.min_lr = args.learning_rate / 10
    if args.num_workers is None:
        args.num_workers = int(pick_device(args.device).type == "cuda")
    return args


def model_config(args, vocab_size: int = LMConfig.vocab_size) -> LMConfig:
    """The model the flags describe. The RoPE tables keep their default length (8192) unless
    training needs more. LMConfig raises ValueError for an impossible shape."""
    return LMConfig(vocab_size=vocab_size, dropout=args.dropout, flash_attn=args.flash_attn,
                    max_seq_len=max(args.max_seq_len, LMConfig.max_seq_len), **model_fields(args))


def default_learning_rate(dim: int) -> float:
    """The peak learning rate for a model dim wide: MiniMind's 5e-4 for its 512-wide model
    and wider, 5e-4 * 512 / dim below, at most 2e-3. Adam's best rate for the hidden
    matrices falls as 1 / width (muP: Yang et al. 2021, "Tensor Programs V"), so a narrower
    model takes a higher one; the measurements behind it are in docs/quality.md."""
    return min(2e-3, 5e-4 * max(1.0, 512 / dim))


def default_optimizer(dim: int) -> str:
    """Muon below dim 512, where it was measured to win (docs/quality.md); AdamW, MiniMind's
    optimizer and one fused kernel on the GPU, from 512 on, where Muon is not measured yet."""
    return "muon" if dim < 512 else "adamw"


def get_lr(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int,
           schedule: str = "wsd", decay_frac: float = 0.2) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to lr over the first
    warmup_steps, then down to min_lr, reached at the last step: along a cosine, or (wsd:
    warmup-stable-decay) held at lr and decayed linearly over the last decay_frac of the
    steps. WSD's long constant phase lets a run be extended, or branched into a decay at any
    point, without restarting the schedule."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_start = warmup_steps  # the cosine decays from the end of the warmup on
    if schedule == "wsd":  # held at lr until the last decay_frac of the steps
        decay_start = max(warmup_steps, total_steps - round(decay_frac * total_steps))
    decay_steps = total_steps - 1 - decay_start
    if step < decay_start or decay_steps <= 0:
        return lr
    progress = min(1.0, (step - decay_start) / decay_steps)
    if schedule == "wsd":
        return lr + (min_lr - lr) * progress  # a line down to min_lr at the last step
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def masked_lm_loss(logits, targets, loss_mask):
    """Mean cross-entropy over the positions where loss_mask is 1 (padding carries none)."""
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    mask = loss_mask.flatten()
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def make_optimizer(model, learning_rate, weight_decay, device, name="adamw", muon_lr=0.02,
                   dtype_name="float32"):
    """AdamW, betas (0.9, 0.95), weight decay on matrices only (not on norm gains), fused
    into one kernel launch where it can be. name "muon": Muon at muon_lr for the hidden
    matrices, AdamW for the rest (muon.py), orthogonalising in bfloat16 in a bf16 run."""
    if name == "muon":
        ns_dtype = torch.bfloat16 if dtype_name == "bfloat16" else torch.float32
        return Muon(muon_param_groups(model, learning_rate, muon_lr, weight_decay),
                    ns_dtype=ns_dtype)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.95), fused=fused, foreach=not fused)


def set_lr(optimizer, lr, learning_rate, muon_lr):
    """The schedule's lr for this step, in every group; Muon's groups follow the same curve
    scaled to peak at muon_lr. Muon's step has a fixed size (an orthogonal matrix: about
    1/sqrt(width) per weight) whatever the gradient's, so its lr is on another scale: the
    reference's 0.02 is 40x the AdamW default here."""
    for group in optimizer.param_groups:
        group["lr"] = lr * muon_lr / learning_rate if group.get("use_muon") else lr


@dataclass
class Plan:
    """The run's length, counted in optimizer steps."""
    tokens_per_step: int
    steps_per_epoch: int
    total_steps: int
    warmup: int


def plan_steps(args, n_train, world_size) -> Plan:
    tokens_per_step = args.batch_size * args.max_seq_len * args.accumulation_steps * world_size
    samples_per_rank = n_train // world_size  # ShardedSampler drops the remainder
    micro_per_epoch = math.ceil(samples_per_rank / args.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / args.accumulation_steps)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    if args.max_tokens is not None:
        total_steps = min(total_steps, math.ceil(args.max_tokens / tokens_per_step))
    warmup = args.warmup_iters if args.warmup_iters is not None else math.ceil(0.02 * total_steps)
    return Plan(tokens_per_step, steps_per_epoch, total_steps, warmup)


def load_data(args, local_rank, world_size, log):
    """(tokenizer, train split, val split): a directory prepared by dataset.py, or the raw
    sources prepared now (prepare.prepare_for_run). This runs before the process group
    exists, so it may take as long as it needs."""
    tok, prepared = prepare_for_run(args, local_rank, log)
    train_ds = PretrainDataset(prepared, "train", args.max_seq_len)
    val_ds = PretrainDataset(prepared, "val", args.max_seq_len)
    train_ds.check_enough(world_size)
    return tok, train_ds, val_ds


def train_step(model, optimizer, scaler, batches, n_micro, loss_fn, autocast, device,
               grad_clip):
    """One optimizer step on the next n_micro micro-batches of `batches`. Returns (loss,
    grad_norm, samples, good): the loss averaged over micro-steps and ranks, the gradient
    norm before clipping, the samples this rank read, and whether the step was good (a bad
    one, with a non-finite loss or gradient, is not applied). Loss, norm and `good` are
    device tensors: nothing here waits for the device."""
    ddp, sharded = isinstance(model, DistributedDataParallel), is_sharded(model)
    step_loss = torch.zeros((), device=device)
    samples = 0
    for micro in range(n_micro):
        X, Y, loss_mask = next(batches)
        X, Y = X.to(device, non_blocking=True), Y.to(device, non_blocking=True)
        loss_mask = loss_mask.to(device, non_blocking=True)
        samples += X.shape[0]
        # DDP averages gradients across ranks during backward; that is only needed once per
        # optimizer step, on the last micro-step
        last = micro == n_micro - 1
        if sharded:  # the same for sharded gradients: reduce-scattered on the last alone
            model.set_requires_gradient_sync(last)
        with model.no_sync() if ddp and not last else contextlib.nullcontext():
            with autocast:
                out = model(X)
                loss = loss_fn(out.logits, Y, loss_mask)
            # the last accumulation of an epoch may be short: divide by its real length
            scaler.scale((loss + out.aux_loss) / n_micro).backward()
        step_loss += loss.detach()
    step_loss /= n_micro
    if ddp or sharded:  # every rank then logs the same loss, and judges the step alike
        dist.all_reduce(step_loss)
        step_loss /= dist.get_world_size()

    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = full_value(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    # A step with a non-finite loss or gradient is not applied, decided on the device: the
    # host never waits for the step to finish. With float16, gradients that overflow are
    # routine (the scaler lowers its scale, below), so there only a non-finite loss makes
    # a step bad.
    loss_finite = torch.isfinite(step_loss)
    apply = loss_finite & torch.isfinite(grad_norm)
    step_where(optimizer, apply)
    scaler.update()  # reads the overflow flags that unscale_ left on the device
    optimizer.zero_grad(set_to_none=True)
    good = loss_finite if scaler.is_enabled() else apply
    return step_loss, grad_norm, samples, good


@dataclass
class Run:
    """What stays fixed while a run trains (the state that changes is RunState)."""
    args: argparse.Namespace
    rank: int
    world_size: int
    device: torch.device
    tok: object
    train_ds: PretrainDataset
    val_ds: PretrainDataset
    raw_model: Transformer  # the model itself; `model` may be its DDP wrapper
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: object
    loss_fn: object
    plan: Plan
    log: RunLog
    stop: StopSignal
    weights_path: Path
    resume_path: Path
    first_step: int  # the step this process started at (0, or where it resumed)
    dtype_name: str  # the precision it trains in (device.mixed_precision)
    byte_counts: list  # UTF-8 bytes of every token id (tokenizer.token_bytes)
    probes: list  # scored at every evaluation (evaluator.load_probes); [] for none
    prompts: list  # continued greedily at every evaluation, in the corpus language
    bench: Tracker | None  # the benchmarks scored at every evaluation (--bench)
    data_meta: dict  # the prepared data's meta.json, with its cleaning report


def after_step(run: Run, state: RunState, lr, grad_norm):
    """What follows an optimizer step: agree on a stop signal, log, evaluate, save. Returns
    the name of the signal that stops the run, or None."""
    args, step = run.args, state.step
    if step == run.first_step + 1 and run.device.type == "cpu":
        warn_cpu_time(run, state, f"python train_pretrain.py {QUICK_FLAGS}")
    elif step == run.first_step + 1 and (peak := peak_line(run.device)):
        run.log.say(peak)
    # the first step too: its loss says whether the initialisation is right (health.py)
    logging = step % args.log_interval == 0 or step in (run.first_step + 1, run.plan.total_steps)
    evaluating = step % args.eval_interval == 0 or step == run.plan.total_steps
    saving = step % args.save_interval == 0 and step < run.plan.total_steps
    stopped = run.stop.agreed()  # a signal's name, the same on every rank
    if logging or saving or stopped:  # the only steps where the host reads the bad-step counts
        state.check_bad_steps(args.max_bad_steps, run.resume_path)
    if logging:
        run.log.train_record(step, state.tokens_seen, lr, grad_norm,
                             {"epoch": state.epoch, "bad_steps": state.bad_steps}, mfu_of(run))
    if evaluating:
        with run.log.paused(run.device):  # not training time
            validate(run, state)
    if saving and not stopped:  # a stopped run saves on its way out
        with run.log.paused(run.device):
            save_run(run, state)
    return stopped


def train_loop(run: Run, state: RunState):
    """Train until the plan's last step or the last epoch; returns the name of the signal
    that stopped it early, or None."""
    args, plan = run.args, run.plan
    while state.step < plan.total_steps and state.epoch < args.epochs:
        # rank r reads global positions start + r, start + r + world_size, ... of this
        # epoch's shuffled order, so the ranks' shards are disjoint (see ShardedSampler)
        sampler = ShardedSampler(len(run.train_ds), run.rank, run.world_size, seed=args.seed,
                                 epoch=state.epoch, start=state.samples_in_epoch,
                                 shuffle=not run.train_ds.ordered)
        batches = iter(DataLoader(run.train_ds, args.batch_size, sampler=sampler,
                                  num_workers=args.num_workers,
                                  pin_memory=run.device.type == "cuda"))
        micro_left = math.ceil(len(sampler) / args.batch_size)
        while micro_left > 0 and state.step < plan.total_steps:
            lr = get_lr(state.step, plan.total_steps, args.learning_rate, args.min_lr,
                        plan.warmup, args.lr_schedule, args.decay_frac)
            set_lr(run.optimizer, lr, args.learning_rate, args.muon_lr)
            n_micro = min(args.accumulation_steps, micro_left)
            loss, grad_norm, samples, good = train_step(
                run.model, run.optimizer, run.scaler, batches, n_micro, run.loss_fn,
                run.autocast, run.device, args.grad_clip)
            micro_left -= n_micro
            state.advance(samples * run.world_size, args.max_seq_len, good)
            run.log.add_step(loss, good, balance_experts(run.raw_model, good, run.world_size > 1))
            stopped = after_step(run, state, lr, grad_norm)
            if stopped:
                return stopped
        if micro_left == 0:  # the epoch is done (not merely capped by max_steps)
            state.next_epoch()
    return None


def start_run(args, rank, world_size, device, log, data):
    """Model, optimizer and the run's state, fresh or from the resume file, for data =
    load_data(...)."""
    tok, train_ds, val_ds = data
    if world_size > 1:
        check_same_data(train_ds.fingerprint, world_size)
    config = model_config(args, tok.get_vocab_size())
    torch.manual_seed(args.seed)  # every rank builds the same initial weights
    raw_model = Transformer(config).to(device)
    if args.grad_checkpoint:
        checkpoint_blocks(raw_model)
    dtype_name, autocast, scaler = mixed_precision(device, args.dtype)
    if args.fsdp:  # the sharding's precision policy takes autocast's place (fsdp.py)
        shard_model(raw_model, dtype_name)
        autocast = contextlib.nullcontext()
    optimizer = make_optimizer(raw_model, args.learning_rate, args.weight_decay, device,
                               args.optimizer, args.muon_lr, dtype_name)
    weights_path, resume_path = checkpoint_paths(args.out_dir, args.dim, arch_tag(config))
    resume_path = resume_dir(resume_path) if args.fsdp else resume_path  # a directory
    state = RunState(log_path=str(Path(args.out_dir) / "logs" / (
        f"{weights_path.stem}_{time.strftime('%Y%m%d-%H%M%S')}.jsonl")))
    found = find_resume_file(args.resume, resume_path, world_size, device, args.fsdp)
    if found is None:
        torch.manual_seed(args.seed + rank)  # dropout differs per rank, weights do not
    else:
        state = restore_run(found, args, config, tok, train_ds.fingerprint, world_size, rank,
                            device, raw_model, optimizer, scaler, dtype_name)
    model, loss_fn = raw_model, masked_lm_loss
    if args.compile:
        # Compile the model in place, then wrap it in DDP, as PyTorch's torch.compile guide
        # advises: Dynamo traces the plain model, and DDP's gradient hooks stay outside the
        # graph (Dynamo's DDPOptimizer still splits it at bucket boundaries, so the
        # all-reduce overlaps backward). In place, the state_dict keys stay unprefixed.
        raw_model.compile()
        loss_fn = torch.compile(masked_lm_loss)  # fuses the fp32 upcast into cross-entropy
    if world_size > 1 and not args.fsdp:
        model = DistributedDataParallel(
            raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    plan = plan_steps(args, len(train_ds), world_size)
    run = Run(args=args, rank=rank, world_size=world_size, device=device, tok=tok,
              train_ds=train_ds, val_ds=val_ds, raw_model=raw_model, model=model,
              optimizer=optimizer, scaler=scaler, autocast=autocast, loss_fn=loss_fn,
              plan=plan, log=log, stop=StopSignal(world_size), weights_path=weights_path,
              resume_path=resume_path, first_step=state.step, dtype_name=dtype_name,
              byte_counts=token_byte_counts(tok), data_meta=load_meta(train_ds.prepared_dir),
              prompts=sample_prompts(tok)[:SAMPLES], bench=Tracker(
                  args.bench, args.bench_items, tok, train_ds.prepared_dir,
                  args.max_seq_len) if args.bench else None,
              probes=[] if args.probe == "none" else load_probes(
                  default_probes(tok) if args.probe == "auto" else args.probe))
    describe(run, found)
    if rank == 0:  # what the run will need on each GPU, and what to try if it does not fit
        log.say("\n".join(plan_lines(raw_model, args, world_size, dtype_name, device)))
    return run, state


def pretrain(args):
    """Run (or continue) one pretraining run; returns a summary dict (and the model)."""
    rank, local_rank, world_size = ranks()
    lock = run = None
    report_due = False
    try:
        # 1. one run per --out_dir; the data, then the device and the process group
        lock = lock_out_dir(args.out_dir) if rank == 0 else None
        log = RunLog(rank, args.quiet)
        data = load_data(args, local_rank, world_size, log)
        device = setup_distributed(args.device, local_rank, world_size, args.fsdp)
        # 2. the model, the optimizer and the run's state: fresh, or from the resume file
        run, state = start_run(args, rank, world_size, device, log, data)
        stopped = None
        if state.step >= run.plan.total_steps:
            run.log.say(f"nothing to do: the run is complete at step {state.step}; pass "
                        "--resume none to start over, or raise --max_steps/--epochs")
            run.log.close()
            return summary(run, state, stopped)
        # 3. the loop, then the last save; the report on the way out
        open_log(run, state)
        # a run that failed needs its report most: it is written on the way out, whatever
        # happens (after the process group is gone, so that no rank waits for rank 0)
        report_due = rank == 0 and not args.no_report
        try:
            with run.stop:
                run.raw_model.train()
                stopped = train_loop(run, state)
                save_run(run, state)
                run.log.write({"kind": "end", "step": state.step, "tokens": state.tokens_seen,
                               "stopped_by": stopped})
        finally:
            run.log.close()
        verb = f"stopped by {stopped} at" if stopped else "finished at"
        run.log.say(f"{verb} step {state.step}, {state.tokens_seen:,} tokens; weights: "
                    f"{run.weights_path}; resume file: {run.resume_path}; log: {state.log_path}")
        return summary(run, state, stopped)
    finally:
        if lock is not None:
            lock.close()
        teardown(run)
        if report_due and state.step > 0:  # before the first step: nothing to report
            report_run(run, state)


def summary(run: Run, state: RunState, stopped_by):
    return dict(model=run.raw_model, step=state.step, tokens_seen=state.tokens_seen,
                bad_steps=state.bad_steps, weights_path=run.weights_path,
                log_path=Path(state.log_path), stopped_by=stopped_by)


def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args, model_config(args, args.vocab_size), pick_device(args.device))
    try:
        return pretrain(args)
    except (ValueError, FileNotFoundError, FloatingPointError, DiskFull) as e:
        sys.exit(f"error: {e}")


def check_args(p, args):
    """Usage errors for flags that cannot work, before minutes of data preparation."""
    for name in ("epochs", "batch_size", "accumulation_steps", "log_interval", "save_interval",
                 "eval_interval", "eval_iters", "max_seq_len", "dim", "n_layers",
                 "bench_items", "nproc"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if not 0 <= args.decay_frac <= 1:
        p.error("--decay_frac must be between 0 and 1 (the share of steps spent decaying)")
    try:
        model_config(args)
    except ValueError as e:
        p.error(f"model shape: {e}")
    if args.device is not None and (problem := device_error(args.device)):
        p.error(problem)
    check_source_flags(p, args)
    try:
        args.bench = check_tasks(args.bench) if args.bench else []
    except ValueError as e:
        p.error(f"--bench: {e}")
    check_fsdp_flags(p, args)
    if args.probe not in ("auto", "none"):
        try:
            load_probes(args.probe)
        except (ValueError, FileNotFoundError) as e:
            p.error(f"--probe: {e}")



if __name__ == "__main__":
    main()
