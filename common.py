"""What every MyLLM script shares: the flags several scripts declare (declared once here, so
their names, help and defaults cannot drift apart), the device and its precision, the GPU
peaks behind MFU, the one way files are written (atomically), and, last, how the
benchmarks time and print what they measure."""

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import torch

DEFAULT_TOKENIZER = "out/tokenizer.json"  # where tokenizer.py writes and dataset.py reads
# Dense bf16 peak of common GPUs, in FLOP/s, for MFU (the share of it a run achieves).
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12,
                   "RTX 4090": 165e12, "RTX 3090": 71e12}


def write_atomic(path, write):
    """Write a file so that a reader sees the old file or the whole new one, also after a
    crash or a full disk: write(f) fills a hidden temporary file beside `path` (opened "wb"),
    which is fsynced, renamed over `path`, and the rename made durable by an fsync of the
    directory (POSIX only: Windows cannot open a directory). A failure leaves no temporary;
    a process killed mid-write leaves one, of a fixed name, which the next write replaces.
    The file gets the permissions open() would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the kernel applies umask
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_text_atomic(path, text):
    """write_atomic for UTF-8 text."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


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


class Renamed(argparse.Action):
    """An old flag name that still works, for one that had another meaning elsewhere: it
    sets the new flag and prints a one-line note. Hidden from --help."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = "--" + self.dest
        print(f"note: {option_string} is now {new}, its name in every script; the old name "
              "still works", file=sys.stderr)
        setattr(namespace, self.dest, values)


def renamed(parser, old, new_dest, **kwargs):
    parser.add_argument(old, dest=new_dest, action=Renamed, help=argparse.SUPPRESS, **kwargs)


def add_model_flags(parser, dim=512, n_layers=8, use_moe=False, note=""):
    """--dim, --n_layers, --use_moe: MiniMind's names for the model's shape."""
    group = parser.add_argument_group("model")
    group.add_argument("--dim", type=int, default=dim, help=f"model width{note}")
    group.add_argument("--n_layers", type=int, default=n_layers, help=f"layers{note}")
    group.add_argument("--use_moe", type=str_to_bool, nargs="?", const=True, default=use_moe,
                       help="mixture of experts: --use_moe, or --use_moe 1/0 as MiniMind "
                            f"passes it{note}")
    return group


def add_device_flags(parser, dtype=True):
    """--device and --dtype, read by pick_device and mixed_precision."""
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:1, cpu or mps; default: cuda, else mps, else cpu")
    if dtype:
        parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                            help="autocast dtype; default bfloat16 on CUDA and on CPUs with bf16 "
                                 "units (AMX or AVX512-BF16), else float32")


def add_source_flags(parser, data_path_default=None, data_path_help=None):
    """Where raw text comes from: --data_path (--data in tokenizer.py and dataset.py before),
    --text_field, --skip_bad_lines."""
    parser.add_argument("--data_path", nargs="+", default=data_path_default,
                        help=data_path_help or ".jsonl/.txt files (optionally .gz) or globs, "
                                               "or 'builtin' for the text that ships with Python")
    parser.add_argument("--text_field", default="text", help="JSON field that holds the text")
    parser.add_argument("--skip_bad_lines", action="store_true",
                        help="skip and count malformed lines instead of stopping")


def add_out_dir_flag(parser):
    parser.add_argument("--out_dir", default="out", help="where train_pretrain.py writes (and "
                        "the other scripts find) weights, resume file, tokenizer, data, logs")


def add_tokenizer_flag(parser):
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json, or a folder holding one; default "
                             "OUT_DIR/tokenizer.json (out/tokenizer.json in dataset.py)")


def add_prepare_flags(parser):
    """How dataset.prepare() turns sources into token files (dataset.py and training)."""
    add_tokenizer_flag(parser)
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one per --data_path entry: how often its documents appear in "
                             "training (2 repeats each document, 0.5 keeps half)")
    parser.add_argument("--split_seed", type=int, default=0,
                        help="seed of the train/val split of the documents")
    parser.add_argument("--prep_workers", type=int, default=None,
                        help="processes for cleaning and MinHash (default: CPU count, max 8)")


def device_error(name):
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


def pick_device(name=None):
    """--device, or else the fastest one here: a CUDA GPU, Apple's GPU (MPS), the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def allow_tf32():
    """Let float32 matmuls use tensor cores (TF32: fp32 range, a 10-bit mantissa), several
    times faster on Ampere and later; autocast covers the rest. For training."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


# (its flag in /proc/cpuinfo, its name, torch's probe of it elsewhere), the faster first
CPU_BF16_UNITS = (("amx_bf16", "AMX", "_is_amx_tile_supported"),
                  ("avx512_bf16", "AVX512-BF16", "_is_avx512_bf16_supported"))


def cpu_bf16_units():
    """The CPU's bfloat16 arithmetic, "AMX" or "AVX512-BF16", or None when it has none.

    Intel's AMX tiles multiply bf16 matrices; AVX512-BF16 (Intel from Cooper Lake, AMD from
    Zen 4) has bf16 dot-product instructions. With either, a bf16-autocast training step
    runs faster than fp32: 1.9x with AMX (1,313 against 680 tokens/s at 512 x 8 on a 2-core
    Xeon), 1.7-2.3x with AVX512-BF16 (a 2-core AMD EPYC; README, "Better models for the same
    compute"). Without them bf16 is emulated and slower. Linux: the kernel's flags in
    /proc/cpuinfo; elsewhere torch's probes (private, and missing from some builds)."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = None
    if cpuinfo.exists():
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                 for flag in line.split()}
    for flag, name, probe in CPU_BF16_UNITS:
        if flags is None:  # not Linux: ask torch
            present = getattr(torch.cpu, probe, lambda: False)()
        else:
            present = flag in flags
        if present:
            return name
    return None


def default_dtype(device):
    """(dtype name, why) when --dtype is not given, the why for the run's first lines:
    bfloat16 autocast (fp32 master weights) on CUDA and on CPUs with bf16 arithmetic,
    float32 elsewhere. On the CPU, bf16 autocast reached the same held-out bpb as float32
    at equal steps (README, "Better models for the same compute")."""
    if device.type == "cuda":
        return "bfloat16", "autocast, the CUDA default"
    if device.type == "cpu":
        units = cpu_bf16_units()
        return (("bfloat16", f"autocast: {units} bf16 units") if units
                else ("float32", "no AMX or AVX512-BF16 units"))
    return "float32", f"the {device.type} default"


def mixed_precision(device, dtype_name):
    """(dtype name, autocast context, GradScaler) for --dtype on this device."""
    dtype_name = dtype_name or default_dtype(device)[0]
    if dtype_name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype_name = "float16"  # GPUs before Ampere
    amp_dtype = getattr(torch, dtype_name)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype != torch.float32
                else contextlib.nullcontext())
    # fp16 gradients underflow without loss scaling; bf16 and fp32 have the range of fp32
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return dtype_name, autocast, scaler


def peak_flops_per_second(device: torch.device):
    """Dense bf16 peak of the GPU from PEAK_BF16_FLOPS, or None (CPU, unknown GPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


# Measuring, for bench.py and the benchmark scripts: a GPU runs queued kernels after the
# Python call returns, so the clock waits for them (sync); things compared take turns
# (timed_rounds), so that a busy machine slows each of them alike.


def machine_name(device):
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
             if line.startswith("model name")] or [platform.machine()]
    return f"{names[0]}, {torch.get_num_threads()} threads"


def sync(device):
    """Wait for queued GPU work: GPU kernels run asynchronously, a clock must not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mib(device, reset=False):
    """CUDA: peak bytes held by tensors. CPU (Linux): the process's peak resident memory,
    everything in the process included (writing 5 to clear_refs resets it). None where
    neither can be read."""
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return None


def timed_rounds(tasks, repeats, device):
    """Run every task of {name: fn} once per round, for `repeats` rounds, so a busy machine
    slows all of them alike. Returns {name: (seconds of each run, peak memory MiB)}."""
    seconds, peak = {name: [] for name in tasks}, dict.fromkeys(tasks)
    for _ in range(repeats):
        for name, task in tasks.items():
            peak_memory_mib(device, reset=True)
            sync(device)
            start = time.perf_counter()
            task()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
            memory = peak_memory_mib(device)
            if memory is not None:
                peak[name] = max(peak[name] or 0.0, memory)
    return {name: (seconds[name], peak[name]) for name in tasks}


def format_rows(rows, names):
    """A plain-text table: one row per (label, values, higher_is_better, format), one column
    per name, and where there are two names their ratio, >1 when the first is better (for a
    time, the second's over the first's). higher_is_better None: no ratio."""
    lines = [["", *names] + (["ratio"] if len(names) == 2 else [])]
    for label, values, higher_is_better, fmt in rows:
        cells = [label] + ["-" if v is None else fmt.format(v) for v in values]
        if len(values) == 2:
            a, b = values
            ratio = (a / b if higher_is_better else b / a) if a and b else None
            cells.append("" if higher_is_better is None else
                         "-" if ratio is None else f"{ratio:.2f}x")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths))) for line in lines)
