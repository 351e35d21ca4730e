"""Will it fit? The memory a training run needs on each GPU, planned before it starts, and
activation checkpointing (--grad_checkpoint), which trades compute for that memory.

What a GPU holds while it trains, per rank:
    parameters       4 bytes each: MyLLM keeps float32 weights, autocast computes in bf16
    gradients        4 bytes each, one per parameter
    DDP buckets      4 bytes each: DDP all-reduces gradients through buckets of its own
    optimizer state  AdamW: two moments, 8 bytes a parameter; Muon: one momentum (4 bytes)
                     for the hidden matrices, AdamW's two for the rest
    activations      what the forward pass keeps for the backward pass: grows with the
                     micro-batch (--batch_size x --max_seq_len tokens) and the layers
The activations are measured, not guessed: one block and the output head run forward once
on the CPU, at this sequence length and precision, while autograd's saved-tensor hooks add
up what it keeps (parameters left out, each storage once). A block of MyLLM keeps no
seq_len x seq_len matrix (the fused attention recomputes it), so the figure grows linearly
with the tokens. With --grad_checkpoint a block keeps only its input, and recomputes the
rest in the backward pass (about a third more compute): then the layers cost little and
one block's activations are needed at a time.

Not counted: the CUDA context and the kernels' workspace (several hundred MiB), and what
the allocator loses to fragmentation; the plan says so in its total.
"""

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from device import mixed_precision
from model import Block, RMSNorm, Transformer, precompute_rope
from muon import muon_param_groups

GIB = 1024 ** 3


def checkpoint_blocks(model):
    """Activation checkpointing for every block of a Transformer: each block keeps its input
    and recomputes its activations when the backward pass needs them. The forward is
    replaced on each block object, so the weights' names (and the files) do not change."""
    for block in model.layers:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    return model


def saved_bytes(fn, exclude=()):
    """The bytes autograd keeps for the backward pass while fn() runs: each storage counted
    once, the tensors in `exclude` (the parameters) left out."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            kept[storage.data_ptr()] = max(kept.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(kept.values())


def activation_bytes(config, seq_len, dtype):
    """What one block keeps, and what the head and loss keep, for sequences of seq_len
    tokens: each as (bytes kept once a micro-batch, bytes kept per sequence). Measured on a
    block and a head of `config` built on the CPU, at 1 and at 2 sequences: what does not
    grow with the batch (under autocast, the bf16 copy of each weight; the RoPE rows) is
    kept once."""
    torch.manual_seed(0)
    # the largest block: an MoE one (past the dense first layers) where there are any
    block = Block(config, layer_id=min(config.first_k_dense, config.n_layers - 1))
    norm = RMSNorm(config.dim, config.norm_eps)
    head = torch.nn.Linear(config.dim, config.vocab_size, bias=False)
    params = [*block.parameters(), *norm.parameters(), *head.parameters()]
    cos, sin = (table[torch.arange(seq_len)][None] for table in precompute_rope(config))

    def measure(batch):
        x = torch.randn(batch, seq_len, config.dim, requires_grad=True)
        targets = torch.zeros(batch, seq_len, dtype=torch.long)
        with torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 \
                else contextlib.nullcontext():
            in_block = saved_bytes(lambda: block(x, cos, sin), params)
            # the head: the last norm, the output projection, and the loss, which keeps
            # float32 logits (as train_pretrain.masked_lm_loss does)
            in_head = saved_bytes(lambda: F.cross_entropy(
                head(norm(x)).flatten(0, 1).float(), targets.flatten(), reduction="none").sum(),
                params)
        return in_block, in_head

    (block_1, head_1), (block_2, head_2) = measure(1), measure(2)
    return (2 * block_1 - block_2, block_2 - block_1), (2 * head_1 - head_2, head_2 - head_1)


def count_params(model):
    """(all parameters, those Muon updates), the tied embedding once; model may be on the
    meta device."""
    groups = muon_param_groups(model, 1.0, 1.0, 0.0)
    hidden = sum(p.numel() for g in groups if g["use_muon"] for p in g["params"])
    return model.num_params(), hidden


def memory_plan(model, batch_size, seq_len, world_size, optimizer, dtype,
                grad_checkpoint=False, sharded=False):
    """The bytes per rank, by what holds them: {name: bytes}, in the order printed.
    sharded (--fsdp): weights, gradients and optimizer state are split over the ranks, and
    a block's weights are gathered whole while it runs (the next one is gathered ahead)."""
    n, hidden = count_params(model)
    share = world_size if sharded else 1
    plan = {"parameters": 4 * n // share, "gradients": 4 * n // share}
    if world_size > 1 and not sharded:
        plan["DDP buckets"] = 4 * n
    plan["optimizer state"] = (8 * n if optimizer == "adamw"
                               else 4 * hidden + 8 * (n - hidden)) // share
    if sharded:  # two blocks' weights gathered at a time, in the compute precision
        block = sum(p.numel() for p in model.layers[0].parameters())
        plan["gathered blocks"] = 2 * block * torch.finfo(dtype).bits // 8
    config = model.config
    (block_once, block_each), (head_once, head_each) = activation_bytes(config, seq_len, dtype)
    one_block = block_once + batch_size * block_each
    head = head_once + batch_size * head_each
    if grad_checkpoint:  # each block keeps its float32 input; one block is redone at a time
        inputs = config.n_layers * batch_size * 4 * seq_len * config.dim
        plan["activations"] = inputs + one_block + head
    else:
        plan["activations"] = config.n_layers * one_block + head
    return plan


def format_plan(plan, device_bytes=None):
    """The plan as lines: each part in GiB, the total, and the device's memory if known."""
    lines = [f"  {name:<16} {size / GIB:8.2f} GiB" for name, size in plan.items()]
    total = sum(plan.values())
    lines.append(f"  {'total':<16} {total / GIB:8.2f} GiB, plus the CUDA context and "
                 "workspace (several hundred MiB)")
    if device_bytes:
        lines.append(f"  {'this GPU has':<16} {device_bytes / GIB:8.2f} GiB")
    return lines


def advice(plan, device_bytes, args, world_size):
    """What would make a plan that does not fit fit, or None when it fits (10% margin)."""
    if not device_bytes or sum(plan.values()) <= 0.9 * device_bytes:
        return None
    ways = []
    if not args.grad_checkpoint:
        ways.append("--grad_checkpoint (activations: a block's input each, about 1/3 more "
                    "compute)")
    if args.batch_size > 1:
        ways.append(f"--batch_size {max(1, args.batch_size // 2)} --accumulation_steps "
                    f"{args.accumulation_steps * 2} (the same tokens per step)")
    if not args.fsdp and world_size > 1:
        ways.append(f"--fsdp (weights, gradients and optimizer state split {world_size} ways)")
    if args.optimizer == "adamw":
        ways.append("--optimizer muon (one moment for the hidden matrices, not two)")
    return "the plan does not fit this GPU; try " + "; or ".join(ways or ["a smaller model"])


def add_memory_flags(parser):
    """--grad_checkpoint, --fsdp, and --dry_run with --nproc: train_pretrain.py's memory
    flags."""
    parser.add_argument("--grad_checkpoint", action="store_true",
                        help="recompute each block's activations in the backward pass: far "
                             "less memory, about 1/3 more compute (memory.py)")
    parser.add_argument("--fsdp", action="store_true",
                        help="under torchrun: shard weights, gradients and optimizer state "
                             "over the ranks instead of copying them (fsdp.py)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print the memory plan for --nproc ranks and exit, without "
                             "preparing data (--vocab_size gives the vocabulary)")
    parser.add_argument("--nproc", type=int, default=1,
                        help="--dry_run: the number of GPUs (ranks) to plan for")


def plan_lines(model, args, world_size, dtype_name, device):
    """The memory plan a run prints first: per GPU, by part, and whether it fits."""
    plan = memory_plan(model, args.batch_size, args.max_seq_len, world_size, args.optimizer,
                       getattr(torch, dtype_name), args.grad_checkpoint, args.fsdp)
    device_bytes = (torch.cuda.get_device_properties(device).total_memory
                    if device.type == "cuda" else None)
    extras = ", --grad_checkpoint" * args.grad_checkpoint + ", --fsdp" * args.fsdp
    lines = [f"memory plan per GPU ({world_size} rank{'s' * (world_size > 1)}, "
             f"{args.optimizer}, {dtype_name}{extras}; docs/memory.md):"]
    lines += format_plan(plan, device_bytes)
    if (tip := advice(plan, device_bytes, args, world_size)) is not None:
        lines.append(tip)
    return lines


def peak_line(device):
    """After the first step on a GPU: the memory it really took at its peak."""
    if device.type != "cuda":
        return None
    return (f"memory: {torch.cuda.max_memory_allocated(device) / GIB:.2f} GiB allocated at "
            f"the first step's peak ({torch.cuda.max_memory_reserved(device) / GIB:.2f} GiB "
            "reserved by the allocator)")


def dry_run(args, config, device):
    """train_pretrain.py --dry_run: print the plan for --nproc ranks; no data is read."""
    with torch.device("meta"):  # shapes only: no memory, no time
        model = Transformer(config)
    # planned for GPUs: in their precision (bf16 unless --dtype says otherwise)
    dtype_name = args.dtype or (mixed_precision(device, None)[0] if device.type == "cuda"
                                else "bfloat16")
    print("\n".join(plan_lines(model, args, args.nproc, dtype_name, device)))
