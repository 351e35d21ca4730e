"""Pretrain MyLLM: next-token prediction on a packed token stream, on one device or many.

    python train_pretrain.py                                   # one process
    torchrun --nproc_per_node 6 train_pretrain.py              # one machine, 6 GPUs
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \\
        --rdzv_backend c10d --rdzv_endpoint HOST:29500 train_pretrain.py   # on every node

The story, top to bottom: flags -> learning-rate schedule, loss and optimizer -> checkpoint
files -> distributed set-up -> data and tokenizer -> resume -> evaluation -> one optimizer
step `train_step` -> the training loop `pretrain(args)` -> main.
"""

import argparse
import contextlib
import itertools
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import PretrainDataset, ShardedSampler, check_tokenizer, load_meta, prepare
from model import LMConfig, Transformer
from tokenizer import (load_tokenizer, read_sample, save_tokenizer, tokenizer_fingerprint,
                       train_tokenizer)

MINIMIND_DATA = Path("dataset/pretrain_hq.jsonl")  # used by default when the user has it
# a run that fits a 2-core CPU in minutes (the README's first command)
QUICK_FLAGS = ("--dim 192 --n_layers 4 --max_seq_len 128 --batch_size 32 --accumulation_steps 1 "
               "--epochs 2 --log_interval 20 --eval_interval 100")

# Dense bf16 peak of common GPUs, in FLOP/s, for MFU (the share of it a run achieves).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12,
                   "RTX 4090": 165e12, "RTX 3090": 71e12}


def str_to_bool(value) -> bool:
    """argparse type of an on/off flag: `--use_moe`, `--use_moe 1` and `--use_moe true` all
    switch it on (MiniMind passes 1/0), `--use_moe 0` / `false` / `no` / `off` off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off, not {value!r}")


def model_config(args, vocab_size: int = LMConfig.vocab_size) -> LMConfig:
    """The model the flags describe. The RoPE tables keep their default length (8192) unless
    training needs more. LMConfig raises ValueError for an impossible shape."""
    return LMConfig(dim=args.dim, n_layers=args.n_layers, vocab_size=vocab_size,
                    max_seq_len=max(args.max_seq_len, LMConfig.max_seq_len), use_moe=args.use_moe)


def is_prepared_dir(path) -> bool:
    """A directory dataset.py finished: it writes meta.json last."""
    return (Path(path) / "meta.json").is_file()


def device_error(name: str):
    """Why --device NAME cannot work on this machine, or None."""
    try:
        device = torch.device(name)
    except RuntimeError:
        return f"--device {name} is not a device name; use cuda, cuda:1, cpu or mps"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return (f"--device {name}: this PyTorch sees no CUDA GPU; use --device cpu, or "
                    "install the CUDA build of PyTorch (see the README)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            return (f"--device {name}: there are only {torch.cuda.device_count()} CUDA "
                    "device(s), numbered from 0")
    if device.type == "mps" and not torch.backends.mps.is_available():
        return f"--device {name}: MPS is not available here; use --device cpu"
    return None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Pretrain a MyLLM model.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # MiniMind's flags, same names and meaning
    p.add_argument("--out_dir", default="out")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=32, help="sequences per micro-step per rank")
    p.add_argument("--learning_rate", type=float, default=5e-4)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu; default: cuda if available")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="autocast dtype; default bfloat16 on CUDA, float32 on CPU")
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
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n_layers", type=int, default=8)
    p.add_argument("--max_seq_len", type=int, default=512, help="tokens per training sequence")
    p.add_argument("--use_moe", type=str_to_bool, nargs="?", const=True, default=False,
                   help="mixture of experts: --use_moe, or --use_moe 1/0 as MiniMind passes it")
    p.add_argument("--data_path", nargs="+", default=None,
                   help=f"raw .jsonl/.txt files or globs, or one directory prepared by "
                        f"dataset.py; default {MINIMIND_DATA} if present, else the built-in "
                        "corpus")
    # what a serious run needs
    p.add_argument("--text_field", default="text", help="JSON field that holds the text")
    p.add_argument("--skip_bad_lines", action="store_true",
                   help="skip and count malformed lines instead of stopping")
    p.add_argument("--weights", nargs="+", type=float, default=None,
                   help="one per --data_path entry: how often its documents appear in training")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json; default OUT_DIR/tokenizer.json, trained if absent (for "
                        "a prepared --data_path: the tokenizer that prepared it)")
    p.add_argument("--vocab_size", type=int, default=6400, help="when a tokenizer is trained")
    p.add_argument("--max_steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--max_tokens", type=float, default=None, help="stop after this many tokens")
    p.add_argument("--min_lr", type=float, default=None, help="default learning_rate / 10")
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--eval_interval", type=int, default=500, help="optimizer steps")
    p.add_argument("--eval_iters", type=int, default=20, help="validation batches per rank")
    p.add_argument("--compile", action="store_true", help="torch.compile the model and the loss")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--resume", default="auto",
                   help="auto: continue from the resume file if there is one; none; or a path")
    p.add_argument("--max_bad_steps", type=int, default=5,
                   help="stop after this many non-finite steps in a row")
    p.add_argument("--quiet", action="store_true", help="no progress bar or report")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "accumulation_steps", "log_interval", "save_interval",
                 "eval_interval", "eval_iters", "max_seq_len", "dim", "n_layers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    # shape and device problems show now, not after minutes of data preparation
    try:
        model_config(args)
    except ValueError as e:
        p.error(f"model shape: {e}")
    if args.device is not None and (problem := device_error(args.device)):
        p.error(problem)
    if args.data_path and any(is_prepared_dir(path) for path in args.data_path):
        if len(args.data_path) > 1:
            p.error("--data_path: a directory prepared by dataset.py is used alone; prepare "
                    "several sources together with `python dataset.py --data A B`")
        if args.weights:
            p.error("--weights applies to raw sources; a prepared directory has its weights")
    if args.weights and len(args.weights) != len(args.data_path or [None]):
        p.error(f"--weights: {len(args.weights)} weights for "
                f"{len(args.data_path or [None])} --data_path entries; give one per entry")
    if args.min_lr is None:
        args.min_lr = args.learning_rate / 10
    return args


def get_lr(step: int, total_steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to lr over the first
    warmup_steps, then a cosine from lr down to min_lr, reached at the last step."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return lr
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def masked_lm_loss(logits, targets, loss_mask):
    """Mean cross-entropy over the positions where loss_mask is 1 (padding carries none)."""
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
    mask = loss_mask.flatten()
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def allow_tf32():
    """Let float32 matmuls and convolutions run on tensor cores (TF32: fp32 range, a 10-bit
    mantissa), several times faster on Ampere and later; autocast covers the rest."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def make_optimizer(model, learning_rate, weight_decay, device):
    """AdamW, betas (0.9, 0.95), weight decay on matrices only (not on norm gains).

    The fused kernel updates all parameters in one launch; PyTorch (2.4 and later, as
    requirements.txt asks) has it on CUDA and CPU. Elsewhere the foreach kernels do the same
    a tensor list at a time."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate, betas=(0.9, 0.95), fused=fused, foreach=not fused)


def mixed_precision(device, dtype_name):
    """(dtype name, autocast context, GradScaler) for --dtype on this device."""
    dtype_name = dtype_name or ("bfloat16" if device.type == "cuda" else "float32")
    if dtype_name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype_name = "float16"  # GPUs before Ampere
    amp_dtype = getattr(torch, dtype_name)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype != torch.float32
                else contextlib.nullcontext())
    # fp16 gradients underflow without loss scaling; bf16 and fp32 have the range of fp32
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return dtype_name, autocast, scaler


def plan_steps(args, n_train, world_size):
    """(tokens per optimizer step, steps per epoch, total steps, warmup steps)."""
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
    return tokens_per_step, steps_per_epoch, total_steps, warmup


def checkpoint_paths(out_dir, dim: int, use_moe: bool):
    """MiniMind's weights file name, and the resume file beside it."""
    stem = f"pretrain_{dim}{'_moe' if use_moe else ''}"
    return Path(out_dir) / f"{stem}.pth", Path(out_dir) / f"{stem}_resume.pth"


def save_atomic(obj, path: Path):
    """torch.save to a temporary file, fsync, then rename over `path`: a crash or a full disk
    mid-write leaves the previous file intact, never a truncated one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def peak_flops_per_second(device: torch.device):
    """Dense bf16 peak of the GPU from PEAK_BF16_FLOPS, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def setup_distributed(device_arg):
    """(rank, local_rank, world_size, device). torchrun sets RANK, LOCAL_RANK and WORLD_SIZE;
    NCCL moves gradients between GPUs, gloo between CPU processes."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    if device_arg:
        device = torch.device(device_arg)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and (world_size > 1 or device.index is None):
        device = torch.device("cuda", local_rank)  # one GPU per process; set_device needs an index
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, local_rank, world_size, device


def report(enabled: bool, message: str):
    """Print above the progress bar (only on rank 0, unless --quiet)."""
    if enabled:
        tqdm.write(message)


def resolve_tokenizer(args, sources, rank, world_size, verbose):
    """The tokenizer path: --tokenizer, else OUT_DIR/tokenizer.json, trained here if absent."""
    if args.tokenizer:
        return Path(args.tokenizer)
    path = Path(args.out_dir) / "tokenizer.json"
    if rank == 0 and not path.exists():
        report(verbose, f"no tokenizer at {path}: training one (vocab {args.vocab_size}) on "
                        "the data")
        # a bounded sample: memory stays flat
        texts, _ = read_sample(sources, text_field=args.text_field,
                               skip_bad_lines=args.skip_bad_lines, verbose=verbose)
        save_tokenizer(train_tokenizer(texts, args.vocab_size), path)
    if world_size > 1:
        dist.barrier()  # the others wait until rank 0 has written it
    return path


def resolve_data(args, verbose):
    """Raw sources to prepare: --data_path, else MiniMind's file when present, else None
    (the built-in corpus)."""
    if args.data_path:
        return list(args.data_path)
    if MINIMIND_DATA.exists():
        report(verbose, f"data: {MINIMIND_DATA} (MiniMind's pretraining set)")
        return [str(MINIMIND_DATA)]
    report(verbose, "data: the built-in corpus (Python's own documentation); "
                    f"put MiniMind's pretrain_hq.jsonl at {MINIMIND_DATA} or pass --data_path")
    return None


def load_data(args, rank, world_size, verbose):
    """(tokenizer, train split, val split). A directory prepared by dataset.py is used as it
    is; raw sources are prepared by rank 0 into OUT_DIR/data (cached there, so a second run
    reuses them), where the other ranks then find them."""
    if args.data_path and is_prepared_dir(args.data_path[0]):
        prepared = Path(args.data_path[0])
        tok = load_tokenizer(args.tokenizer or load_meta(prepared)["tokenizer_path"])
        check_tokenizer(prepared, tok)
        report(verbose, f"data: {prepared}, prepared by dataset.py")
    else:
        sources = resolve_data(args, verbose)
        tok_path = resolve_tokenizer(args, sources, rank, world_size, verbose)
        tok = load_tokenizer(tok_path)
        options = {"text_field": args.text_field, "skip_bad_lines": args.skip_bad_lines,
                   "weights": args.weights}
        cache_dir = Path(args.out_dir) / "data"
        if rank == 0:
            prepared = prepare(sources, tok_path, cache_dir, verbose=verbose, **options)
        if world_size > 1:
            dist.barrier()
        if rank != 0:
            prepared = prepare(sources, tok_path, cache_dir, verbose=False, **options)
    train_ds = PretrainDataset(prepared, "train", args.max_seq_len)
    val_ds = PretrainDataset(prepared, "val", args.max_seq_len)
    if len(train_ds) < world_size:
        raise ValueError(f"{prepared} has {len(train_ds)} training sequences of "
                         f"{args.max_seq_len} tokens, fewer than the {world_size} ranks; "
                         "add data or lower --max_seq_len")
    return tok, train_ds, val_ds


def find_resume_file(args, resume_path, world_size, device):
    """The resume file to continue from, or None for a fresh run. Every rank must see the
    same answer: on several nodes --out_dir has to be a filesystem they share."""
    if args.resume == "none":
        return None
    path = resume_path if args.resume == "auto" else Path(args.resume)
    found = path.is_file()
    if world_size > 1:
        seen_by = torch.tensor([int(found)], device=device)
        dist.all_reduce(seen_by)  # how many ranks see the file
        if 0 < seen_by.item() < world_size:
            raise ValueError(
                f"{path} is visible to {seen_by.item()} of {world_size} ranks; put --out_dir "
                "on a filesystem all nodes share (or copy the file to every node), or pass "
                "--resume none to start over")
    if not found and args.resume != "auto":
        raise FileNotFoundError(f"--resume {path}: no such file")
    return path if found else None


def load_resume(path, args, config, tok_fingerprint, world_size, warn):
    """The state saved in resume file `path`, checked against this run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file fails in pickle, zip or tensor reading
        raise ValueError(f"{path} is not a readable resume file ({type(e).__name__}); delete "
                         "it, or pass --resume none to start over") from None
    if not isinstance(state, dict) or not {"optimizer", "config", "args"} <= state.keys():
        raise ValueError(f"{path} is not a resume file (a weights file?); pass a "
                         "*_resume.pth written by train_pretrain.py, or --resume none")
    asked, saved = asdict(config), state["config"]
    differ = [k for k in asked if asked[k] != saved.get(k)]
    if differ:
        raise ValueError(
            f"{path} holds a model with " + ", ".join(f"{k} {saved.get(k)}" for k in differ) +
            "; this run asks " + ", ".join(f"{k} {asked[k]}" for k in differ) +
            "; pass the same flags, or --resume none to start over")
    if state["tokenizer_fingerprint"] != tok_fingerprint:
        raise ValueError(f"{path} was trained with another tokenizer; pass the run's "
                         "--tokenizer, or --resume none to start over")
    # the data position counts sequences of max_seq_len tokens: another length would
    # continue somewhere else in the data
    old = state["args"]
    if old["max_seq_len"] != args.max_seq_len:
        raise ValueError(f"{path} was trained with --max_seq_len {old['max_seq_len']}; pass "
                         f"--max_seq_len {old['max_seq_len']} to continue it, or --resume "
                         "none to start over")
    if (old["batch_size"], old["accumulation_steps"]) != (args.batch_size,
                                                          args.accumulation_steps):
        report(warn, f"warning: resuming a run of --batch_size {old['batch_size']} "
                     f"--accumulation_steps {old['accumulation_steps']} with "
                     f"{args.batch_size} and {args.accumulation_steps}: the tokens per "
                     "optimizer step change, and the steps and LR schedule are recomputed")
    if state["world_size"] != world_size:
        report(warn, f"warning: resuming a run of world size {state['world_size']} "
                     f"with {world_size}; training continues at the same token position, "
                     "but the steps per epoch and the LR schedule are recomputed")
    return state


def make_loader(ds, sampler, batch_size, num_workers, device):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


@torch.no_grad()
def evaluate(model, val_ds, args, rank, world_size, device, autocast):
    """Validation loss: the NLL summed over every target token of up to eval_iters batches
    per rank and over all ranks, divided by their number (as eval_model.py computes it);
    None when the validation split has no batch."""
    model.eval()
    sampler = ShardedSampler(len(val_ds), rank, world_size, seed=args.seed, epoch=0)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of NLL, targets)
    batches = make_loader(val_ds, sampler, args.batch_size, 0, device)
    for X, Y, loss_mask in itertools.islice(batches, args.eval_iters):
        X, Y, loss_mask = X.to(device), Y.to(device), loss_mask.to(device)
        with autocast:
            logits = model(X).logits
        targets = loss_mask.sum()
        totals[0] += masked_lm_loss(logits, Y, loss_mask).double() * targets  # mean -> sum
        totals[1] += targets
    if world_size > 1:
        dist.all_reduce(totals)
    model.train()
    return (totals[0] / totals[1]).item() if totals[1] > 0 else None


def train_step(model, optimizer, scaler, batches, n_micro, loss_fn, autocast, device,
               grad_clip):
    """One optimizer step on the next n_micro micro-batches of `batches`.

    Returns (loss, grad_norm, samples, good): the loss averaged over the micro-steps (and
    over the ranks), the gradient norm before clipping, the samples this rank read, and
    whether the step was good; a bad step (non-finite loss or gradient) is not applied."""
    ddp = isinstance(model, DistributedDataParallel)
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
        sync = model.no_sync() if ddp and not last else contextlib.nullcontext()
        with sync:
            with autocast:
                out = model(X)
                loss = loss_fn(out.logits, Y, loss_mask)
            # the last accumulation of an epoch may be short: divide by its real length
            scaler.scale((loss + out.aux_loss) / n_micro).backward()
        step_loss += loss.detach()
    step_loss /= n_micro
    if ddp:  # every rank then logs the same loss, and judges the step alike
        dist.all_reduce(step_loss)
        step_loss /= dist.get_world_size()

    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    # One host sync per optimizer step: a bad step must not be applied. With float16 the
    # scaler skips a step whose gradients overflowed and lowers the scale; that is routine,
    # so there only a non-finite loss makes a step bad.
    finite = torch.isfinite(step_loss)
    if not scaler.is_enabled():
        finite &= torch.isfinite(grad_norm)
    good = bool(finite)
    if good:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm, samples, good


def pretrain(args):
    """Run (or continue) one pretraining run; returns a summary dict (and the model)."""
    rank, local_rank, world_size, device = setup_distributed(args.device)
    ddp = world_size > 1
    out_dir = Path(args.out_dir)
    try:
        return _pretrain(args, rank, world_size, device, ddp, out_dir)
    finally:
        if ddp:
            dist.destroy_process_group()


def _pretrain(args, rank, world_size, device, ddp, out_dir):
    show = rank == 0 and not args.quiet

    def say(message):
        report(show, message)

    # -- data and tokenizer
    tok, train_ds, val_ds = load_data(args, rank, world_size, show)

    # -- model: every rank builds the same initial weights from the same seed
    config = model_config(args, tok.get_vocab_size())
    torch.manual_seed(args.seed)
    model = Transformer(config).to(device)
    weights_path, resume_path = checkpoint_paths(out_dir, args.dim, args.use_moe)
    found = find_resume_file(args, resume_path, world_size, device)
    state = None
    if found is not None:
        state = load_resume(found, args, config, tokenizer_fingerprint(tok), world_size,
                            warn=rank == 0)  # warnings show even with --quiet

    # -- optimizer and precision
    if device.type == "cuda":
        allow_tf32()
    optimizer = make_optimizer(model, args.learning_rate, args.weight_decay, device)
    dtype_name, autocast, scaler = mixed_precision(device, args.dtype)

    step, epoch, samples_in_epoch, tokens_seen, bad_steps_total = 0, 0, 0, 0, 0
    log_path = out_dir / "logs" / f"{weights_path.stem}_{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, epoch = state["step"], state["epoch"]
        samples_in_epoch, tokens_seen = state["samples_in_epoch"], state["tokens_seen"]
        bad_steps_total = state["bad_steps"]
        log_path = Path(state["log_path"])
        if state["world_size"] == world_size:
            torch.set_rng_state(state["rng"][rank]["cpu"])
            if device.type == "cuda" and state["rng"][rank]["cuda"] is not None:
                torch.cuda.set_rng_state(state["rng"][rank]["cuda"])
    else:
        torch.manual_seed(args.seed + rank)  # dropout differs per rank, weights do not

    num_workers = args.num_workers if args.num_workers is not None else int(
        device.type == "cuda")
    raw_model = model
    loss_fn = masked_lm_loss
    if args.compile:
        # Compile the model in place, then wrap it in DDP, as PyTorch's torch.compile guide
        # advises: Dynamo traces the plain model, and DDP's gradient hooks stay outside the
        # graph (Dynamo's DDPOptimizer still splits it at bucket boundaries, so the
        # all-reduce overlaps backward). In place, the state_dict keys stay unprefixed.
        model.compile()
        loss_fn = torch.compile(masked_lm_loss)  # fuses the fp32 upcast into cross-entropy
    if ddp:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type ==
                                        "cuda" else None)

    # -- schedule, counted in optimizer steps
    tokens_per_step, steps_per_epoch, total_steps, warmup = plan_steps(args, len(train_ds),
                                                                       world_size)
    flops_per_token = raw_model.flops_per_token(args.max_seq_len)
    peak_flops = peak_flops_per_second(device)

    moe_note = (f" ({raw_model.num_params(active=True) / 1e6:.2f}M active per token)"
                if args.use_moe else "")
    say(f"model: {raw_model.num_params() / 1e6:.2f}M parameters{moe_note}, "
        f"vocab {config.vocab_size}, dim {args.dim}, {args.n_layers} layers")
    say(f"train: {len(train_ds)} sequences of {args.max_seq_len} tokens, {tokens_per_step} "
        f"tokens per optimizer step, {total_steps} steps ({steps_per_epoch} per epoch), "
        f"warmup {warmup}, world size {world_size}, {device.type} {dtype_name}")
    if len(val_ds) < world_size:
        say(f"note: the validation split has {len(val_ds)} sequences of {args.max_seq_len} "
            "tokens, too few for every rank: no validation loss is reported")
    if state is not None:
        say(f"resumed from {found} at step {step}")
    if step >= total_steps:
        say(f"nothing to do: the run is complete at step {step}; pass --resume none to start "
            "over, or raise --max_steps/--epochs")
        return {"model": raw_model, "step": step, "tokens_seen": tokens_seen,
                "bad_steps": bad_steps_total, "weights_path": weights_path,
                "log_path": log_path, "stopped_by": None}

    # -- logging
    run_log = None
    wandb_run = None
    if rank == 0:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        run_log = open(log_path, "a", encoding="utf-8")
        record = {"kind": "run" if state is None else "resume", "step": step,
                  "config": asdict(config), "args": vars(args), "world_size": world_size}
        run_log.write(json.dumps(record) + "\n")
        if args.use_wandb:
            try:
                import wandb
                wandb_run = wandb.init(project=args.wandb_project, config=vars(args))
            except ImportError:
                say("warning: --use_wandb asked but wandb is not installed; logging to "
                    "the JSONL file only")

    def log(record):
        if run_log is not None:
            run_log.write(json.dumps(record) + "\n")
            run_log.flush()
        if wandb_run is not None:
            wandb_run.log(record, step=record["step"])

    def save():
        """Weights for eval and MiniMind, plus everything needed to continue exactly."""
        rng = {"cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        all_rng = [rng]
        if ddp:
            all_rng = [None] * world_size
            dist.all_gather_object(all_rng, rng)
        if rank == 0:  # only global rank 0 writes: on several nodes --out_dir must be shared
            weights = {k: v.detach().cpu() for k, v in raw_model.state_dict().items()}
            save_atomic(weights, weights_path)
            save_atomic({"model": weights, "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict(), "step": step, "epoch": epoch,
                         "samples_in_epoch": samples_in_epoch, "tokens_seen": tokens_seen,
                         "bad_steps": bad_steps_total, "rng": all_rng,
                         "config": asdict(config), "args": vars(args),
                         "tokenizer_fingerprint": tokenizer_fingerprint(tok),
                         "world_size": world_size, "log_path": str(log_path)}, resume_path)
        if ddp:
            dist.barrier()  # nobody trains on while the files are half written

    # SIGTERM (a scheduler, torchrun) or SIGINT (Ctrl-C): finish the step, save, exit
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    old_handlers = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old_handlers[sig] = signal.signal(sig, on_signal)
        except ValueError:  # not the main thread: leave the handlers alone
            pass

    bar = tqdm(total=total_steps, initial=step, disable=not show, dynamic_ncols=True,
               desc="pretrain")
    model.train()
    last_log_time, last_log_tokens = time.perf_counter(), tokens_seen
    loop_start, first_step = last_log_time, step
    loss_sum = torch.zeros((), device=device)  # summed on device; read at log intervals
    logged_steps, bad_in_a_row = 0, 0
    stopped_by = None
    try:
        while step < total_steps and epoch < args.epochs:
            # samples_in_epoch counts the samples of this epoch all ranks together have read;
            # rank r reads global positions start + r, start + r + world_size, ... of this
            # epoch's shuffled order, so the ranks' shards are disjoint
            sampler = ShardedSampler(len(train_ds), rank, world_size, seed=args.seed,
                                     epoch=epoch, start=samples_in_epoch)
            batches = iter(make_loader(train_ds, sampler, args.batch_size, num_workers, device))
            micro_left = math.ceil(len(sampler) / args.batch_size)
            while micro_left > 0 and step < total_steps:
                lr = get_lr(step, total_steps, args.learning_rate, args.min_lr, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                n_micro = min(args.accumulation_steps, micro_left)
                loss, grad_norm, samples, good = train_step(
                    model, optimizer, scaler, batches, n_micro, loss_fn, autocast, device,
                    args.grad_clip)
                micro_left -= n_micro
                if good:
                    bad_in_a_row = 0
                else:
                    bad_in_a_row += 1
                    bad_steps_total += 1
                if bad_in_a_row >= args.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad_in_a_row} optimizer steps in a row had a non-finite loss or "
                        f"gradient (step {step}); likely causes: a learning rate too high "
                        "(lower --learning_rate, lengthen --warmup_iters), float16 overflow "
                        "(use --dtype bfloat16), or corrupt data. The last good checkpoint "
                        f"is kept: {resume_path}")

                step += 1
                samples_in_epoch += samples * world_size
                tokens_seen += samples * world_size * args.max_seq_len
                if good:
                    loss_sum += loss
                    logged_steps += 1
                bar.update(1)
                if step == first_step + 1 and device.type == "cpu":
                    eta = (time.perf_counter() - loop_start) * (total_steps - step)
                    if eta > 1800:  # the GPU-sized defaults on a CPU: say so, and what to do
                        say(f"on this CPU the run needs about {eta / 3600:.1f} h; for a quick "
                            f"run try: python train_pretrain.py {QUICK_FLAGS}")

                if step % args.log_interval == 0 or step == total_steps:
                    now = time.perf_counter()
                    tokens_per_sec = (tokens_seen - last_log_tokens) / (now - last_log_time)
                    mean_loss = loss_sum.item() / max(logged_steps, 1)
                    record = {"kind": "train", "step": step, "tokens": tokens_seen,
                              "loss": mean_loss, "lr": lr, "grad_norm": float(grad_norm),
                              "tokens_per_sec": tokens_per_sec, "epoch": epoch,
                              "bad_steps": bad_steps_total}
                    postfix = {"loss": f"{mean_loss:.3f}", "lr": f"{lr:.2e}",
                               "tok/s": f"{tokens_per_sec:,.0f}"}
                    if peak_flops:
                        record["mfu"] = flops_per_token * tokens_per_sec / world_size / peak_flops
                        postfix["mfu"] = f"{record['mfu']:.1%}"
                    log(record)
                    bar.set_postfix(postfix)
                    loss_sum.zero_()
                    logged_steps = 0
                    last_log_time, last_log_tokens = now, tokens_seen

                evaluating = step % args.eval_interval == 0 or step == total_steps
                if evaluating or step % args.save_interval == 0:
                    if device.type == "cuda":  # the step's queued kernels are training time
                        torch.cuda.synchronize(device)
                pause_start = time.perf_counter()
                if evaluating:
                    val_loss = evaluate(model.module if ddp else model, val_ds, args, rank,
                                        world_size, device, autocast)
                    if val_loss is not None:
                        log({"kind": "val", "step": step, "tokens": tokens_seen,
                             "val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))})
                        say(f"step {step}: val loss {val_loss:.4f}, "
                            f"ppl {math.exp(min(val_loss, 50)):.2f}")

                if ddp:  # every rank stops at the same step, or none does
                    flag = torch.tensor([stop["signal"] or 0], device=device)
                    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                    stop["signal"] = int(flag.item()) or None
                if stop["signal"] is not None:
                    stopped_by = signal.Signals(stop["signal"]).name
                    break
                if step % args.save_interval == 0 and step < total_steps:
                    save()
                # tokens/s measures training: evaluating and saving do not count
                last_log_time += time.perf_counter() - pause_start
            if stopped_by:
                break
            if micro_left == 0:  # the epoch is done (not merely capped by max_steps)
                epoch, samples_in_epoch = epoch + 1, 0
        save()
    finally:
        bar.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if run_log is not None:
            run_log.close()
        if wandb_run is not None:
            wandb_run.finish()

    verb = f"stopped by {stopped_by} at" if stopped_by else "finished at"
    say(f"{verb} step {step}, {tokens_seen:,} tokens; weights: {weights_path}; "
        f"resume file: {resume_path}; log: {log_path}")
    return {"model": raw_model, "step": step, "tokens_seen": tokens_seen,
            "bad_steps": bad_steps_total, "weights_path": weights_path, "log_path": log_path,
            "stopped_by": stopped_by}


def main(argv=None):
    args = parse_args(argv)
    try:
        pretrain(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
