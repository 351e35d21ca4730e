"""The device a script runs on, the precision it trains in, and the GPU peaks behind MFU."""

import contextlib
from pathlib import Path

import torch

# Dense bf16 peak of common GPUs, in FLOP/s, for MFU (the share of it a run achieves):
# (words that must all be in the GPU's name, peak), the more specific names first. An H100's
# peak depends on its form: 989 TFLOP/s as SXM, 835 as NVL, 756 as PCIe (NVIDIA's sheet,
# half of the figures it gives with sparsity).
PEAK_BF16_FLOPS = ((("H100", "PCIe"), 756e12), (("H100", "NVL"), 835e12), (("H100",), 989e12),
                   (("H200",), 989e12), (("A100",), 312e12), (("RTX 4090",), 165e12),
                   (("RTX 3090",), 71e12))


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
    runs faster than fp32 (docs/performance.md); without them bf16 is emulated and slower.
    Linux: the kernel's flags in /proc/cpuinfo; elsewhere torch's probes (private, and
    missing from some builds)."""
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
    at equal steps (docs/quality.md)."""
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
    return next((flops for words, flops in PEAK_BF16_FLOPS
                 if all(word in name for word in words)), None)


def sync(device):
    """Wait for queued GPU work: GPU kernels run asynchronously, a clock must not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
