"""device.py: which device a script picks, and which precision the CPU trains in."""

import re
from pathlib import Path

import pytest
import torch

import device
from device import cpu_bf16_units, default_dtype, mixed_precision, pick_device


def test_without_a_gpu_the_device_is_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")


def test_apple_gpu_is_picked_when_there_is_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("mps")


def test_cuda_comes_first_and_a_named_device_is_taken_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    assert pick_device("cpu") == torch.device("cpu")


def cpuinfo_bf16_units():
    """An independent reading: the flags as whole words anywhere in /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text()
    return ("AMX" if re.search(r"\bamx_bf16\b", text) else
            "AVX512-BF16" if re.search(r"\bavx512_bf16\b", text) else None)


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux only")
def test_cpu_precision_follows_the_bf16_units_in_proc_cpuinfo():
    units = cpuinfo_bf16_units()
    assert cpu_bf16_units() == units
    name, why = default_dtype(torch.device("cpu"))
    assert (name, why) == (("bfloat16", f"autocast: {units} bf16 units") if units
                           else ("float32", "no AMX or AVX512-BF16 units"))
    assert mixed_precision(torch.device("cpu"), None)[0] == name


def test_a_fake_cpuinfo_is_read_for_amx_then_avx512_bf16(tmp_path, monkeypatch):
    flags = "flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    monkeypatch.setattr(device, "Path", lambda path: tmp_path / "cpuinfo")
    (tmp_path / "cpuinfo").write_text("processor\t: 0\n" + flags)
    assert cpu_bf16_units() == "AMX"
    (tmp_path / "cpuinfo").write_text(flags.replace(" amx_bf16", ""))
    assert cpu_bf16_units() == "AVX512-BF16"
    (tmp_path / "cpuinfo").write_text(flags.replace(" amx_bf16", "").replace(" avx512_bf16", ""))
    assert cpu_bf16_units() is None  # AVX-512 without its bf16 extension: fp32


def test_without_proc_cpuinfo_torch_s_probes_are_asked_and_a_missing_one_means_no(
        tmp_path, monkeypatch):
    monkeypatch.setattr(device, "Path", lambda path: tmp_path / "no-cpuinfo")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert cpu_bf16_units() == "AVX512-BF16"
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert cpu_bf16_units() is None  # a torch build without the probe: fp32


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835),
    ("NVIDIA H200", 989), ("NVIDIA A100-SXM4-80GB", 312), ("Tesla T4", None)])
def test_mfu_peak_follows_the_gpus_form_factor(monkeypatch, name, tflops):
    # NVIDIA's data sheets: dense bf16 is half the figure given with sparsity
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name)
    peak = device.peak_flops_per_second(torch.device("cuda"))
    assert peak == (None if tflops is None else tflops * 1e12)
