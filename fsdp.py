"""Sharded data parallelism (train_pretrain.py --fsdp): each of N GPUs holds 1/N of the
weights, gradients and optimizer state, where DDP holds all of them on every GPU (ZeRO
stage 3; PyTorch's FSDP2, `fully_shard`, as torchtitan uses it).

Every block is sharded on its own, then the root (the embedding, the tied output head, the
last norm): a block's weights are gathered just before it runs and freed after, so a GPU
holds one or two whole blocks at a time (the next is gathered ahead). The tied embedding
must stay in the root's group: sharded alone, its two users would see two different
copies. The precision is a policy of
the sharding (weights gathered in bf16, gradients reduced in float32) in place of autocast.

A forward pass of a sharded model is collective: every rank must run it, with the same
number of calls, or the others wait forever. So evaluation, probes, samples and benchmarks
run on every rank under --fsdp (rank 0 writes what they give).

Checkpoints: the weights file is gathered onto rank 0, MiniMind's single .pth as under DDP.
The resume state is a directory, OUT_DIR/pretrain_{dim}{_moe}_resume/, that every rank
writes its shard of with torch.distributed.checkpoint, and that a run of another world size
reads back resharded. It is written under a temporary name and put in place by a rename, so
a crash mid-save leaves the previous directory whole.
"""

import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_state_dict, set_state_dict)
from torch.distributed.checkpoint.state_dict_loader import load as load_shards
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict_saver import save as save_shards
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

RUN_FILE = "run.pt"  # beside the shards: the run's state, flags and fingerprints


def check_fsdp_flags(parser, args):
    """Usage errors for --fsdp outside torchrun, or with a flag it does not work with (yet),
    before minutes of data preparation."""
    if args.fsdp and not args.dry_run and "RANK" not in os.environ:
        parser.error("--fsdp shards over the ranks of torchrun: run it as torchrun "
                     "--nproc_per_node N train_pretrain.py ... (N GPUs, 1 or more)")
    if args.fsdp and args.compile:
        parser.error("--fsdp with --compile is not supported yet: drop one of them")
    if args.fsdp and args.dtype == "float16":
        parser.error("--fsdp trains in bfloat16 or float32: float16 would need a sharded "
                     "loss scaler")


def shard_model(model, dtype_name):
    """fully_shard every block, then the root, in place; returns the model."""
    if not dist.is_initialized():
        raise ValueError("--fsdp shards over the ranks of torchrun: run it with "
                         "torchrun --nproc_per_node N (N GPUs, 1 or more)")
    if dtype_name == "float16":
        raise ValueError("--fsdp trains in bfloat16 or float32, and this GPU has no bfloat16: "
                         "pass --dtype float32, or train without --fsdp")
    param_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype_name)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def is_sharded(model):
    return isinstance(model, FSDPModule)


def full_value(tensor):
    """A DTensor's whole value (a sharded gradient norm), or the tensor itself."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gathered_weights(model):
    """The whole state dict on rank 0's CPU (every rank must call this; the others get an
    empty dict), with the tied embedding stored once, as a plain model saves it."""
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return tie_head(state) if state else state


def tie_head(state):
    """A whole state dict with the output head as the embedding itself, as a plain model's
    (tied) state dict holds it: one tensor under two names, saved once."""
    state["output.weight"] = state["tok_embeddings.weight"]
    return state


def resume_dir(resume_path):
    """OUT_DIR/pretrain_512_resume/ for OUT_DIR/pretrain_512_resume.pth."""
    return Path(resume_path).with_suffix("")


def save_sharded(path, model, optimizer, run_fields, rank):
    """Every rank writes its shards of weights and optimizer state into directory `path`
    (atomically: a new directory, then a rename); rank 0 writes run_fields beside them."""
    path = Path(path)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    if rank == 0:  # what a crash mid-save left
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():  # between the two renames: put it back
            old.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    save_shards({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp)
    if rank == 0:
        with open(tmp / RUN_FILE, "wb") as f:
            torch.save(run_fields, f)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def load_run_fields(path):
    """The run's state saved beside the shards (plain values: read with weights_only)."""
    return torch.load(Path(path) / RUN_FILE, map_location="cpu", weights_only=True)


def load_sharded(path, model, optimizer):
    """Put the shards of directory `path` back into a sharded model and its optimizer (of
    any world size: the checkpoint reader reshards)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    load_shards(state, checkpoint_id=Path(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])


# ---- between the two forms: a directory of shards, and a plain resume file ----
# A plain optimizer state numbers its parameters 0, 1, ... in the order of its groups; the
# sharded form names them (layers.0.attention.wq.weight, ...). Each form converts to the
# other with the model's own names, so either run continues the other's state.

def param_names(model, optimizer):
    """The name of each of the optimizer's parameters, in its numbering."""
    names = {p: name for name, p in model.named_parameters()}  # the tied head once
    return [names[p] for group in optimizer.param_groups for p in group["params"]]


def named_optimizer_state(state, names):
    """A plain optimizer state dict with parameter names in place of numbers."""
    return {"state": {names[i]: s for i, s in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                             for g in state["param_groups"]]}


def numbered_optimizer_state(state, names):
    """named_optimizer_state's inverse."""
    number = {name: i for i, name in enumerate(names)}
    return {"state": {number[n]: s for n, s in state["state"].items()},
            "param_groups": [{**g, "params": [number[n] for n in g["params"]]}
                             for g in state["param_groups"]]}


def read_shards(path):
    """{"model", "optimizer"} of a directory of shards, whole, in one process and without
    a process group (through a temporary torch.save file)."""
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(Path(path), Path(tmp) / "whole.pt")
        return torch.load(Path(tmp) / "whole.pt", map_location="cpu", weights_only=True)


def load_plain_into_sharded(model, optimizer, model_state, optimizer_state):
    """A plain resume file's weights and optimizer state into a sharded model (each rank
    keeps its shards of the whole)."""
    named = named_optimizer_state(optimizer_state, param_names(model, optimizer))
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=named,
                   options=StateDictOptions(full_state_dict=True))


def load_shards_into_plain(path, model, optimizer):
    """A directory of shards into a plain (or DDP) model and its optimizer."""
    whole = read_shards(path)
    model.load_state_dict(tie_head(whole["model"]))
    optimizer.load_state_dict(numbered_optimizer_state(whole["optimizer"],
                                                       param_names(model, optimizer)))

