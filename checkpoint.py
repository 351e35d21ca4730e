"""Checkpoints: the files a run writes, and how every script reads them back.

    OUT_DIR/pretrain_512.pth         the weights alone, MiniMind's file name and keys: what
                                     eval_model.py, scripts/export_hf.py and MiniMind load
    OUT_DIR/pretrain_512_resume.pth  weights, optimizer, loss scaler, the run's state (step,
                                     position in the data, RNG, ...): what --resume continues
    OUT_DIR/.lock                    held while a run trains in OUT_DIR (lock_out_dir)

RunState is what changes from step to step of a run, saved in the resume file (save_run)
and put back from it (restore_run).

Both checkpoints are written atomically (files.write_atomic): a crash or a full disk
mid-save leaves the previous file whole. Both are read with torch.load(weights_only=True),
so a file cannot run code. A weights file says its model's shape through its tensors'
shapes (config_from_state_dict); check_state_dict compares a file with the model it should
fill.
"""

import errno
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist

from files import write_atomic, write_text_atomic
from fsdp import (RUN_FILE, gathered_weights, is_sharded, load_plain_into_sharded,
                  load_shards_into_plain, load_sharded, resume_dir, save_sharded)
from model import LMConfig, Transformer
from tokenizer import tokenizer_fingerprint


def checkpoint_paths(out_dir, dim: int, tag: str = ""):
    """The weights file's name, and the resume file beside it; tag: arch_tag's."""
    stem = f"pretrain_{dim}{tag}"
    return Path(out_dir) / f"{stem}.pth", Path(out_dir) / f"{stem}_resume.pth"


def arch_tag(fields) -> str:
    """What tells two architectures of one width apart in a file name: MiniMind's names
    for its models (pretrain_512.pth, pretrain_512_moe.pth), then _qknorm, _mla, and
    _dsmoe for DeepSeek's MoE (pretrain_512_mla_dsmoe.pth). fields: an LMConfig or a dict
    of its fields (flags.model_fields)."""
    f = fields if isinstance(fields, dict) else asdict(fields)
    tag = "_qknorm" * bool(f.get("qk_norm")) + "_mla" * (f.get("attention") == "mla")
    if f.get("use_moe"):
        tag += "_dsmoe" if f.get("score_func") == "sigmoid" else "_moe"
    return tag


def config_path(weights_path):
    """The model's config, saved beside its weights: pretrain_512_mla.json."""
    return Path(weights_path).with_suffix(".json")


def save_config(config: LMConfig, weights_path):
    write_text_atomic(config_path(weights_path), json.dumps(asdict(config), indent=1) + "\n")


def resolved_config(saved: dict, **override) -> LMConfig:
    """The LMConfig of saved fields (a config file, a resume file's "config"): a field that
    did not exist when it was written takes its default; one unknown here is an error."""
    unknown = sorted(set(saved) - {f.name for f in fields(LMConfig)})
    if unknown:
        raise ValueError(f"the saved config has fields this MyLLM does not know ({unknown[0]}, "
                         "...); update MyLLM")
    return LMConfig(**{**saved, **override})


def lock_out_dir(out_dir):
    """Hold OUT_DIR/.lock while this run lives, so that a second run started in the same
    directory is refused at once instead of overwriting this one's checkpoints. The lock is
    the kernel's (a POSIX record lock, lockf): it belongs to this process alone, not to the
    workers it forks, and goes when the process ends, however it ends, so a crashed run
    leaves nothing stuck. Also the run's first write there: an --out_dir that cannot be
    written is refused before any data is prepared. Returns the open file; closing it
    unlocks. (Windows, or a filesystem without locks: the directory is only checked for
    writing.)"""
    path = Path(out_dir) / ".lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+", encoding="utf-8")
    except OSError as e:
        raise ValueError(f"--out_dir {out_dir} cannot be written ({e.strerror or e}); pass a "
                         "directory this user can write to") from None
    try:
        import fcntl
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        return f
    except OSError as e:
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            return f  # this filesystem has no locks (ENOLCK, ENOSYS, ...): run unlocked
        f.seek(0)
        holder = f.read().strip() or "a process"
        f.close()
        raise ValueError(f"another run ({holder}) is training in --out_dir {out_dir}; wait for "
                         "it to end, or pass another --out_dir") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
    f.flush()
    return f


class DiskFull(OSError):
    """A save that found no space left: the message names the file and the space needed."""


def save_torch(obj, path):
    """torch.save, atomically. A full disk (or quota) raises DiskFull; the file that was
    there before stays whole."""
    try:
        return write_atomic(path, lambda f: torch.save(obj, f))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        need, free = tensor_bytes(obj) / 1e6, shutil.disk_usage(Path(path).parent).free / 1e6
        raise DiskFull(f"{path}: no space left on its disk (about {need:,.0f} MB needed, "
                       f"{free:,.0f} MB free); the previous checkpoint is kept: free some "
                       "space, then run the same command again (--resume auto continues "
                       "from it)") from None


def tensor_bytes(obj):
    """Bytes of the tensors in a nest of dicts, lists and tuples (a file's size, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(weights_path, resume_path, model, optimizer, scaler, run_fields: dict):
    """The weights file, then the resume file: the same weights with the optimizer's and
    the loss scaler's state, the model's config and run_fields (the run's state, flags,
    tokenizer and prepared-data fingerprints, world size)."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(weights, weights_path)
    save_config(model.config, weights_path)
    save_torch({"model": weights, "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "config": asdict(model.config), **run_fields},
               resume_path)


@dataclass
class RunState:
    """Where a run is: everything that changes from step to step, saved in the resume file
    and restored from it as one (the names are the resume file's keys).

    The three bad-step counts are ints when saved, but between two `settle` calls they are
    0-dim tensors on the training device: each step adds to them there (`advance`), so the
    host never waits for a step to finish just to count it."""
    step: int = 0  # optimizer steps done
    epoch: int = 0
    samples_in_epoch: int = 0  # samples of this epoch that all ranks together have read
    tokens_seen: int = 0
    bad_steps: "int | torch.Tensor" = 0  # steps skipped for a non-finite loss or gradient
    bad_in_a_row: "int | torch.Tensor" = 0
    longest_bad_run: "int | torch.Tensor" = 0  # the most in a row since the last `settle`
    rng: list = field(default_factory=list)  # per rank {"cpu", "cuda"}, as of the last save
    log_path: str = ""

    def advance(self, samples: int, seq_len: int, good: torch.Tensor):
        """One optimizer step that read `samples` sequences (all ranks together). `good` is
        a bool on the device, so the bad-step counts become device tensors too: the host
        queues the next step without waiting for this one (`settle` reads them)."""
        self.step += 1
        self.samples_in_epoch += samples
        self.tokens_seen += samples * seq_len
        bad = ~good
        self.bad_steps = self.bad_steps + bad
        self.bad_in_a_row = (self.bad_in_a_row + 1) * bad  # back to 0 on a good step
        self.longest_bad_run = self.bad_in_a_row.clamp(min=self.longest_bad_run)

    def settle(self) -> int:
        """The counts as Python ints, for the log and the resume file (a wait for the
        device). Returns the longest run of bad steps since the last settle: one that has
        ended since still counts."""
        longest = int(self.longest_bad_run)
        self.bad_steps, self.bad_in_a_row = int(self.bad_steps), int(self.bad_in_a_row)
        self.longest_bad_run = self.bad_in_a_row
        return longest

    def check_bad_steps(self, max_bad_steps: int, resume_path):
        """Settle the counts; FloatingPointError if max_bad_steps in a row were bad since the
        last check (a streak that has ended since still counts)."""
        longest = self.settle()
        if longest >= max_bad_steps:
            raise FloatingPointError(
                f"{longest} optimizer steps in a row had a non-finite loss or gradient (step "
                f"{self.step}); likely causes: a learning rate too high (lower "
                "--learning_rate, lengthen --warmup_iters), float16 overflow (use --dtype "
                f"bfloat16), or corrupt data. The last good checkpoint is kept: {resume_path}")

    def next_epoch(self):
        self.epoch, self.samples_in_epoch = self.epoch + 1, 0

    @classmethod
    def from_resume(cls, saved: dict):
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


def save_run(run, state: RunState):
    """Weights for eval and MiniMind, plus everything needed to continue exactly, for a
    train_pretrain.Run. Only global rank 0 writes: on several nodes --out_dir must be
    shared. The bad-step counts are settled (read) first; the caller checks them."""
    state.settle()
    rng = {"cpu": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None}
    state.rng = [rng]
    if run.world_size > 1:
        state.rng = [None] * run.world_size
        dist.all_gather_object(state.rng, rng)
    run_fields = {**asdict(state), "args": vars(run.args),
                  "tokenizer_fingerprint": tokenizer_fingerprint(run.tok),
                  "data_fingerprint": run.train_ds.fingerprint,
                  "world_size": run.world_size, "dtype": run.dtype_name}
    if is_sharded(run.raw_model):  # every rank takes part in gathering and writing
        weights = gathered_weights(run.raw_model)
        if run.rank == 0:
            save_torch(weights, run.weights_path)
            save_config(run.raw_model.config, run.weights_path)
        save_sharded(run.resume_path, run.raw_model, run.optimizer,
                     {**run_fields, "config": asdict(run.raw_model.config), "scaler": {}},
                     run.rank)
    elif run.rank == 0:
        save_checkpoint(run.weights_path, run.resume_path, run.raw_model, run.optimizer,
                        run.scaler, run_fields)
    if run.world_size > 1:
        dist.barrier()  # nobody trains on while the files are half written


def restore_run(path, args, config, tok, data_fingerprint, world_size, rank, device, model,
                optimizer, scaler, dtype_name):
    """The run's state from resume file `path`, with weights, optimizer, loss scaler and
    (with the same world size) every rank's RNG put back as they were. Another precision
    continues too: only float16 has a loss scaler, which then starts fresh or is dropped."""
    warn = print if rank == 0 else (lambda message: None)  # shown even with --quiet
    saved = load_resume(path, args, config, tokenizer_fingerprint(tok), data_fingerprint,
                        world_size, warn)
    # a directory of shards (an --fsdp run's, fsdp.py) or a file, into either kind of run
    if is_sharded(model) and Path(path).is_dir():
        load_sharded(path, model, optimizer)
    elif is_sharded(model):
        load_plain_into_sharded(model, optimizer, saved["model"], saved["optimizer"])
    elif Path(path).is_dir():
        load_shards_into_plain(path, model, optimizer)
    else:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
    # files from before the precision was saved: only a float16 run's scaler has a state
    saved_dtype = saved.get("dtype") or ("float16" if saved["scaler"] else "bfloat16/float32")
    if bool(saved["scaler"]) != scaler.is_enabled():
        warn(f"note: {path} was written by a {saved_dtype} run and this one trains in "
             f"{dtype_name}: the float16 loss scaler "
             + ("starts fresh" if scaler.is_enabled() else "is not needed and is dropped"))
    elif saved["scaler"]:
        scaler.load_state_dict(saved["scaler"])
    state = RunState.from_resume(saved)
    if saved["world_size"] == world_size:
        torch.set_rng_state(state.rng[rank]["cpu"])
        if device.type == "cuda" and state.rng[rank]["cuda"] is not None:
            torch.cuda.set_rng_state(state.rng[rank]["cuda"])
    return state


def load_torch(path, what: str, mmap=False):
    """torch.load of a file of ours (tensors and plain values only: no code runs). mmap:
    tensors stay in the file's pages until used (weights to copy onto a model); not for a
    resume file, whose optimizer state would keep views of a file that the next save
    replaces."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # a pickle error, a truncated zip, a file of another kind
        raise ValueError(f"{path} cannot be read as a {what} ({type(e).__name__}); "
                         + ("delete it, or pass --resume none to start over" if "resume" in what
                            else "pass a pretrain_*.pth written by train_pretrain.py or "
                                 "MiniMind")) from None


def read_state_dict(path):
    """The weights in a .pth file, as a dict of tensors."""
    state = load_torch(path, "weights file", mmap=True)
    if not isinstance(state, dict) or "tok_embeddings.weight" not in state:
        keys = list(state)[:3] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} holds no tok_embeddings.weight (it has {keys}), so it is not "
                         "a MyLLM/MiniMind weights file; pass a pretrain_*.pth")
    return state


def config_from_state_dict(state, n_heads: int = LMConfig.n_heads) -> LMConfig:
    """The model a state dict was saved from, read off its keys and tensor shapes: for the
    files MiniMind writes, which have no config beside them. The head count is the one
    thing the shapes do not tell (the width is heads x head size), unless QK-norm's gains
    give the head size; None where n_heads does not split the width. MLA and DeepSeek's MoE
    need their config file (ValueError)."""
    if any(k.endswith(("wkv_a.weight", "expert_bias")) for k in state):
        raise ValueError("a file of MLA or DeepSeek-MoE weights, whose sizes only its config "
                         "file tells, has none beside it; keep the .json with the .pth")
    vocab_size, dim = state["tok_embeddings.weight"].shape
    n_layers = len({int(key.split(".")[1]) for key in state if key.startswith("layers.")})
    moe_layers = sorted(int(key.split(".")[1]) for key in state
                        if key.endswith("feed_forward.gate.weight"))
    ffn, attn = f"layers.{n_layers - 1}.feed_forward.", "layers.0.attention."
    w1 = state[ffn + ("experts.0.w1.weight" if moe_layers else "w1.weight")]
    head_dim = None
    if attn + "q_norm.weight" in state:  # QK-norm: a gain per head channel
        head_dim = state[attn + "q_norm.weight"].shape[0]
        n_heads = state[attn + "wq.weight"].shape[0] // head_dim
    kv_dim = state[attn + "wk.weight"].shape[0]  # n_kv_heads * head dim
    moe = {}
    if moe_layers:
        shared = state.get(ffn + "shared_experts.w1.weight")
        dense = state.get("layers.0.feed_forward.w1.weight", w1)
        moe = dict(use_moe=True, n_routed_experts=state[ffn + "gate.weight"].shape[0],
                   n_shared_experts=0 if shared is None else shared.shape[0] // w1.shape[0],
                   first_k_dense=moe_layers[0], moe_inter_dim=w1.shape[0],
                   hidden_dim=dense.shape[0])
    try:
        return LMConfig(dim=dim, n_layers=n_layers, n_heads=n_heads, head_dim=head_dim,
                        n_kv_heads=max(kv_dim // (head_dim or dim // n_heads), 1),
                        vocab_size=vocab_size, qk_norm=head_dim is not None,
                        **({"hidden_dim": w1.shape[0]} | moe))
    except (ValueError, ZeroDivisionError):  # the heads do not split the width
        return None


def read_config(path, state, n_heads=None) -> LMConfig:
    """The model of the weights file at path: its config file's (save_config), or else what
    its shapes tell (config_from_state_dict, with n_heads or the default's)."""
    if config_path(path).is_file():
        try:
            saved = json.loads(config_path(path).read_text())
            return resolved_config(saved)  # n_heads given is checked against it (load_model)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{config_path(path)}: {e}; fix it, or delete it to read the "
                             "model's shape from the weights (not MLA's or DeepSeek-MoE's: "
                             "those need it)") from None
    try:
        return config_from_state_dict(state, n_heads or LMConfig.n_heads)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def existing_checkpoints(out_dir):
    """'file (flags that load it)' for every weights file in out_dir, for error messages."""
    found = []
    for path in sorted(Path(out_dir).glob("*.pth")):
        try:
            config = read_config(path, read_state_dict(path))
        except (ValueError, KeyError):
            config = None
        if config is None:
            continue  # a resume file, an incomplete file: nothing that loads
        flags = f"--dim {config.dim} --n_layers {config.n_layers}"
        flags += " --use_moe" if config.use_moe else ""
        if path.name != checkpoint_paths(out_dir, config.dim, arch_tag(config))[0].name \
                or arch_tag(config) not in ("", "_moe"):
            flags = f"--ckpt {path}"
        found.append(f"{path.name} ({flags})")
    return found


def load_model(path, vocab_size, device="cpu", dim=None, n_layers=None, use_moe=None,
               n_heads=None, n_kv_heads=None, **arch):
    """The Transformer that the weights file at path was saved from, loaded, in eval mode.

    Its config file says what it is (read_config); a file without one (MiniMind's) is read
    off its shapes, with n_heads as given (they cannot tell it). dim, n_layers, use_moe,
    n_heads, n_kv_heads and the architecture's fields (arch) are checked against it where
    given.
    vocab_size is the tokenizer's: it must match the checkpoint's embedding.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(missing_checkpoint(path, dim, n_layers, use_moe))
    state = read_state_dict(path)
    try:
        config = read_config(path, state, n_heads)  # None: n_heads does not split the width
    except KeyError as e:  # tok_embeddings.weight is there, but not a layer's weights
        raise ValueError(f"{path} has no {e.args[0]}, so the model's shape cannot be read from "
                         "it; pass a complete pretrain_*.pth") from None
    check_loaded_shape(path, state, config, vocab_size, dict(
        dim=dim, n_layers=n_layers, use_moe=use_moe, n_heads=n_heads, n_kv_heads=n_kv_heads,
        **arch), n_heads or LMConfig.n_heads)
    model = Transformer(config)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def find_resume_file(resume, resume_path, world_size, device, sharded=False):
    """The resume file to continue from (--resume auto / none / PATH), or None for a fresh
    run; sharded (--fsdp): resume_path is the resume directory (fsdp.py). auto takes the
    other form where this run's is not there: a plain file continues under --fsdp, and a
    directory of shards without it. Every rank must see the same answer: on several nodes
    --out_dir has to be a filesystem they share."""
    if resume == "none":
        return None
    path = resume_path if resume == "auto" else Path(resume)
    other = resume_path.with_suffix(".pth") if sharded else resume_dir(resume_path)
    if resume == "auto" and not path.exists() and other.exists():
        path = other  # the other form (a run with or without --fsdp) continues too
    found = path.exists()
    if world_size > 1:
        seen_by = torch.tensor([int(found)], device=device)
        dist.all_reduce(seen_by)  # how many ranks see the file
        if 0 < seen_by.item() < world_size:
            raise ValueError(
                f"{path} is visible to {seen_by.item()} of {world_size} ranks; put --out_dir "
                "on a filesystem all nodes share (or copy the file to every node), or pass "
                "--resume none to start over")
    if not found and resume != "auto":
        raise FileNotFoundError(f"--resume {path}: no such file")
    return path if found else None


def load_resume(path, args, config, tok_fingerprint, data_fingerprint, world_size, warn):
    """The state saved in resume file `path`, checked against this run; warn(message)
    reports what continues but changes (the tokens per step, the world size)."""
    sharded = Path(path).is_dir()  # an --fsdp run's: the run's fields beside the shards
    state = load_torch(Path(path) / RUN_FILE if sharded else path, "resume file")
    if not isinstance(state, dict) or not {"config", "args"} <= state.keys() or not (
            sharded or "optimizer" in state):
        raise ValueError(f"{path} is not a resume file (a weights file?); pass a "
                         "*_resume.pth written by train_pretrain.py, or --resume none")
    check_resume(path, state, args, config, tok_fingerprint, data_fingerprint, world_size, warn)
    return state


def check_state_dict(state, config: LMConfig, name: str, flags: str):
    """ValueError unless state has exactly the keys and shapes of Transformer(config); flags
    says which command-line flags or file set the shape."""
    if any(".experts." in key for key in state) != config.use_moe:
        kinds = ("a dense", "an MoE") if config.use_moe else ("an MoE", "a dense")
        raise ValueError(f"{name} is {kinds[0]} checkpoint but {flags} asks for {kinds[1]} "
                         f"one; {'drop' if config.use_moe else 'add'} --use_moe")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        expected = Transformer(config).state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ValueError(f"{name} has no {key}; is it a MyLLM checkpoint of this shape? "
                             f"({flags})")
        if state[key].shape != value.shape:
            raise ValueError(f"{name}: {key} has shape {tuple(state[key].shape)} but {flags} "
                             f"gives {tuple(value.shape)}; pass the flags it was trained with")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise ValueError(f"{name} has weights that {flags} has no place for ({extra[0]}, ...); "
                         "is it a MyLLM checkpoint?")


def check_resume(path, state, args, config, tok_fingerprint, data_fingerprint, world_size,
                 warn):
    # A file written before a config field existed holds a model with that field's default.
    # Dropout and the attention kernel change how a model trains, not the model: they may
    # change between a run and its continuation.
    asked = asdict(config)
    saved = asdict(resolved_config(state["config"], dropout=config.dropout))
    differ = [k for k in asked if asked[k] != saved[k] and k not in ("dropout", "flash_attn")]
    if differ:
        raise ValueError(
            f"{path} holds a model with " + ", ".join(f"{k} {saved[k]}" for k in differ) +
            "; this run asks " + ", ".join(f"{k} {asked[k]}" for k in differ) +
            "; pass the same flags, or --resume none to start over")
    if state["tokenizer_fingerprint"] != tok_fingerprint:
        raise ValueError(f"{path} was trained with another tokenizer; pass the run's "
                         "--tokenizer, or --resume none to start over")
    # the data position counts sequences of this prepared data: other data would continue
    # somewhere else (files written before data fingerprints were saved cannot be checked)
    saved_data = state.get("data_fingerprint")
    if saved_data is not None and saved_data != data_fingerprint:
        raise ValueError(f"{path} was trained on prepared data {saved_data}, this run on "
                         f"{data_fingerprint} (the sources, tokenizer, options or the data "
                         f"format changed); pass --data_path {Path(args.out_dir)}/data/"
                         f"*-{saved_data} (the directory of that name) to "
                         "continue on the same data, or --resume none to start over")
    # ... and sequences of max_seq_len tokens: another length would continue elsewhere too.
    # Files from before --optimizer were trained with AdamW, from before --lr_schedule on the
    # cosine; another schedule would jump the learning rate mid-run. The optimizer's message
    # names its learning rate too: both defaults follow the width now.
    old = state["args"]
    for flag, before in (("max_seq_len", None), ("optimizer", "adamw"),
                         ("lr_schedule", "cosine")):
        was = old.get(flag, before)  # before: files older than the flag (max_seq_len: none)
        if was != getattr(args, flag):
            rate = f" --learning_rate {old['learning_rate']:g}" if flag == "optimizer" else ""
            raise ValueError(f"{path} was trained with --{flag} {was}; pass --{flag} {was}"
                             f"{rate} to continue it, or --resume none to start over")
    if (old["batch_size"], old["accumulation_steps"]) != (args.batch_size,
                                                          args.accumulation_steps):
        warn(f"warning: resuming a run of --batch_size {old['batch_size']} "
             f"--accumulation_steps {old['accumulation_steps']} with {args.batch_size} and "
             f"{args.accumulation_steps}: the tokens per optimizer step change, and the steps "
             "and LR schedule are recomputed")
    if state["world_size"] != world_size:
        warn(f"warning: resuming a run of world size {state['world_size']} with {world_size}; "
             "training continues at the same token position, but the steps per epoch and the "
             "LR schedule are recomputed")


def missing_checkpoint(path: Path, dim=None, n_layers=None, use_moe=None):
    train = "python train_pretrain.py"
    if dim and n_layers:
        train += f" --dim {dim} --n_layers {n_layers}" + (" --use_moe" if use_moe else "")
    found = existing_checkpoints(path.parent)
    hint = ("load one that exists: " + ", ".join(found) if found
            else f"no weights files are in {path.parent}/")
    return f"{path} not found; train first ({train}), or {hint}"


def check_loaded_shape(path, state, config, vocab_size, asked, n_heads):
    """ValueError unless the flags that were given agree with the file's shape."""
    dim = state["tok_embeddings.weight"].shape[1]
    kv_dim = state.get("layers.0.attention.wk.weight", torch.empty(0, 0)).shape[0]  # 0: MLA
    if config is None or kv_dim and kv_dim != config.n_kv_heads * config.head_dim:
        raise ValueError(f"{path}: dim {dim} and key/value width {kv_dim} do not split into "
                         f"heads of --n_heads {n_heads}; pass the n_heads it was trained with")
    found = asdict(config)
    differ = [k for k, v in asked.items() if v is not None and v != found[k]]
    if differ:
        raise ValueError(f"{path} has another shape; checkpoint: "
                         + ", ".join(f"{k} {found[k]}" for k in differ) + "; asked: "
                         + ", ".join(str(asked[k]) for k in differ)
                         + "; pass flags that match the checkpoint")
    if vocab_size != config.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but {path} was trained with "
                         f"{config.vocab_size}; pass --tokenizer the one used in training")
    check_state_dict(state, config, str(path), "its own shapes")
