"""What only a GPU can check, skipped without one: decoding replayed from a CUDA graph,
bf16 and fp16 training steps, a step that never waits for the device (CUDA's sync debug
mode), torchrun and NCCL, and the MoE dispatch on CUDA. Each reuses a CPU test's helpers
and its independent truth."""

import math

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from decode import StaticDecoder, decoder_error
from test_decode import tiny_model
from test_model import assert_moe_matches_the_sorted_loop, moe_layer_and_input
from test_train import (ROOT, argv_of, corpus, free_port,  # noqa: F401 (corpus: a fixture)
                        losses, one_step, read_log, run_script, tiny_step_setup)
from train_pretrain import masked_lm_loss


def nan_loss(*args):
    return masked_lm_loss(*args) * float("nan")


pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


@pytest.mark.parametrize("overrides", [{}, dict(use_moe=True), dict(
    attention="mla", use_moe=True, score_func="sigmoid", n_routed_experts=8,
    num_experts_per_tok=3, moe_inter_dim=32)], ids=["dense", "moe", "mla_dsmoe"])
def test_cuda_graph_decoding_equals_a_full_forward(overrides):
    model = tiny_model(**overrides).to(CUDA)
    assert StaticDecoder(model, 1, 40).graph is not None  # recorded: replays, not eager
    ids = torch.randint(3, 300, (1, 40), generator=torch.Generator().manual_seed(2))
    assert decoder_error(model, ids.to(CUDA), prompt_len=8) < 1e-3


def test_bf16_and_fp16_steps_stay_finite_and_track_float32():
    losses_of = {}
    for dtype_name in ("float32", "bfloat16", "float16"):
        model, optimizer, batch = tiny_step_setup(device=CUDA)
        scaler = torch.amp.GradScaler("cuda", enabled=dtype_name == "float16")
        steps = [one_step(model, optimizer, batch, dtype_name, scaler=scaler) for _ in range(3)]
        assert all(bool(good) and math.isfinite(norm) for _, norm, _, good in steps)
        losses_of[dtype_name] = [loss.item() for loss, *_ in steps]
    for dtype_name in ("bfloat16", "float16"):  # 8 and 11 mantissa bits: within 2 %
        assert losses_of[dtype_name] == pytest.approx(losses_of["float32"], rel=2e-2)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_a_training_step_never_waits_for_the_device(use_moe, dtype_name):
    if use_moe and (dtype_name == "float16" or torch.cuda.get_device_capability() < (9, 0)):
        pytest.skip("the routed MoE's grouped_mm has CUDA kernels in bf16 from sm90 on; "
                    "elsewhere it loops over the experts, reading their sizes on the host")
    model, optimizer, batch = tiny_step_setup(use_moe, device=CUDA)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype_name == "float16")
    one_step(model, optimizer, batch, dtype_name, scaler=scaler)  # creates AdamW's state
    torch.cuda.set_sync_debug_mode("error")  # a call that waits for the GPU raises
    try:
        good = one_step(model, optimizer, batch, dtype_name, scaler=scaler)[3]
        bad = one_step(model, optimizer, batch, dtype_name, nan_loss, scaler)[3]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(good) and not bool(bad)


def test_ddp_over_nccl_takes_the_same_step_as_the_plain_model():
    # one rank: NCCL and DDP's hooks run, and averaging over one rank changes nothing
    plain, plain_optimizer, batch = tiny_step_setup(device=CUDA)
    model, optimizer, _ = tiny_step_setup(device=CUDA)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        for _ in range(2):
            one_step(plain, plain_optimizer, batch)
            one_step(ddp, optimizer, batch)
    finally:
        dist.destroy_process_group()
    for (name, p), q in zip(plain.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, msg=name)


def test_torchrun_on_one_gpu_trains_and_logs(corpus, tmp_path):
    done = run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                      str(ROOT / "train_pretrain.py"),
                      *argv_of(corpus, tmp_path, "--device", "cuda", "--max_steps", "3",
                               "--accumulation_steps", "2"))
    assert done.returncode == 0, done.stderr[-3000:]
    logged = losses(read_log(next((tmp_path / "logs").iterdir())))
    assert sorted(logged) == [1, 2, 3] and all(math.isfinite(v) for v in logged.values())
    assert (tmp_path / "pretrain_32.pth").exists()


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_dispatch_equals_the_sorted_loop_on_cuda(top_k):
    ffn, x = moe_layer_and_input(top_k, n_shared=1, starve_last_expert=True)
    assert_moe_matches_the_sorted_loop(ffn.to(CUDA), x.to(CUDA), tol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deepseek_moe_on_cuda_equals_a_per_token_loop(dtype):
    """The routed dispatch's grouped matrix products on CUDA (bf16: the kernels of Hopper
    GPUs; elsewhere the loop fallback), against test_architectures' per-token loop."""
    from test_architectures import KINDS, deepseek_moe_per_token, random_model

    ffn = random_model(**KINDS["deepseek_v3"]).layers[1].feed_forward.to(CUDA).train()
    x = torch.randn(3, 7, 64, device=CUDA)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        out = ffn(x)
    expected = deepseek_moe_per_token(ffn, x)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float(), expected, atol=tol, rtol=tol)
