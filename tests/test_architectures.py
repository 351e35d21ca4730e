"""The architectures beyond MiniMind's Llama-style model (QK-norm, MLA, DeepSeek's MoE)
against independent truths: transformers' Qwen3, Qwen3-MoE and DeepSeek-V3 on the same
weights, checkpoints saved by MiniMind's own code (tests/fixtures), and per-token loops."""

import copy
import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import export_hf
import import_hf
from checkpoint import (arch_tag, checkpoint_paths, load_model, resolved_config, save_config,
                        save_torch)
from experts import balance_experts, moe_gates
from model import LMConfig, Transformer
from test_export import assert_same_greedy_tokens
from tokenizer import save_tokenizer, train_tokenizer

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
BASE = dict(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=300)
KINDS = {  # transformers' model_type: a MyLLM model it computes exactly
    "qwen3": dict(BASE, qk_norm=True, norm_eps=1e-6),
    "qwen3_moe": dict(BASE, qk_norm=True, use_moe=True, n_routed_experts=4,
                      num_experts_per_tok=2, n_shared_experts=0, first_k_dense=1),
    "deepseek_v3": dict(BASE, attention="mla", q_lora_rank=24, use_moe=True,
                        score_func="sigmoid", n_routed_experts=8, num_experts_per_tok=3,
                        n_shared_experts=1, moe_inter_dim=32, first_k_dense=1,
                        routed_scaling=1.5),
}


def random_model(seed=0, **fields):
    """Weights large enough that logits are of order 1, norms away from 1, and a balancing
    bias that changes which experts are chosen."""
    torch.manual_seed(seed)
    model = Transformer(LMConfig(**fields))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0, 0.2) if name.endswith("norm.weight") else p.normal_(0.0, 0.15)
        for gate in moe_gates(model):
            if gate.sigmoid:
                gate.expert_bias.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{model_type: (model, weights file, exported directory)}, exported by the command from
    the weights file and the config file beside it (no architecture flags retyped)."""
    out = tmp_path_factory.mktemp("arch")
    save_tokenizer(train_tokenizer(["The quick brown fox. 预训练一个小模型。"] * 20,
                                   vocab_size=300), out / "tokenizer.json")
    result = {}
    for kind, fields in KINDS.items():
        model = random_model(**fields)
        weights = checkpoint_paths(out, 64, arch_tag(model.config))[0]
        save_torch(model.state_dict(), weights)
        save_config(model.config, weights)
        export_hf.main(["--ckpt", str(weights), "--out", str(out / kind),
                        "--tokenizer", str(out / "tokenizer.json")])
        result[kind] = model, weights, out / kind
    return result


def test_file_names_tell_architectures_of_one_width_apart(exported):
    names = {kind: weights.name for kind, (_, weights, _) in exported.items()}
    assert names == {"qwen3": "pretrain_64_qknorm.pth", "qwen3_moe": "pretrain_64_qknorm_moe.pth",
                     "deepseek_v3": "pretrain_64_mla_dsmoe.pth"}
    # MiniMind's own names for its models stay
    assert arch_tag(LMConfig()) == "" and arch_tag(LMConfig(use_moe=True)) == "_moe"


@pytest.mark.parametrize("kind", KINDS)
def test_transformers_computes_the_same_logits_and_greedy_tokens(exported, kind):
    from transformers import AutoModelForCausalLM

    model, _, hf_dir = exported[kind]
    hf, info = AutoModelForCausalLM.from_pretrained(hf_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert hf.config.model_type == kind
    ids = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf.eval()(ids).logits
    assert ours.abs().max() > 1  # logits big enough for the comparison to mean something
    assert (ours - theirs).abs().max().item() < 1e-4
    assert_same_greedy_tokens(model, hf, 16)


def split_experts(hf_dir):
    """Rewrite a directory's fused experts (transformers 5: mlp.experts.gate_up_proj) one
    module each (mlp.experts.N.gate_proj ...), as files on the hub hold them."""
    weights, split = import_hf.load_hf_weights(hf_dir), {}
    for key, value in weights.items():
        layer, _, name = key.rpartition(".experts.")
        if name == "gate_up_proj":
            for e, (gate, up) in enumerate(v.chunk(2) for v in value):
                split[f"{layer}.experts.{e}.gate_proj.weight"] = gate.clone()
                split[f"{layer}.experts.{e}.up_proj.weight"] = up.clone()
        elif name == "down_proj":
            split.update({f"{layer}.experts.{e}.down_proj.weight": v.clone()
                          for e, v in enumerate(value)})
        else:
            split[key] = value
    export_hf.save_safetensors(split, hf_dir / "model.safetensors")


@pytest.mark.parametrize("kind", KINDS)
def test_import_gives_back_the_exact_weights_and_config(exported, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    model, _, hf_dir = exported[kind]
    # the directory as transformers saves it (its config fields), its experts as the hub's
    AutoModelForCausalLM.from_pretrained(hf_dir).save_pretrained(tmp_path / "saved")
    split_experts(tmp_path / "saved")
    import_hf.main(["--hf_dir", str(tmp_path / "saved"), "--out", str(tmp_path / "back.pth")])
    back = load_model(tmp_path / "back.pth", 300)  # its config file says what it is
    expected = dataclasses.replace(model.config, max_seq_len=back.config.max_seq_len)
    assert back.config == expected
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_a_checkpoint_saved_by_minimind_code_imports_with_its_logits(tmp_path, kind):
    """tests/fixtures: tiny minimind-3 models (QK-norm, rms_norm_eps 1e-6, half-split RoPE;
    the MoE top-1 without a shared expert) saved by MiniMind's own code, and its logits."""
    ref = torch.load(os.path.join(FIXTURES, "minimind3_logits.pt"), weights_only=True)
    import_hf.main(["--minimind", os.path.join(FIXTURES, f"minimind3_{kind}.pth"),
                    "--out", str(tmp_path / "m3.pth")])
    model = load_model(tmp_path / "m3.pth", ref[f"{kind}_logits"].shape[-1])
    with torch.no_grad():
        logits = model(ref["input_ids"]).logits
    assert (logits - ref[f"{kind}_logits"]).abs().max().item() < 1e-4


def deepseek_moe_per_token(ffn, x):
    """DeepSeek-V3's MoE, one token at a time: sigmoid affinities, the top k of affinity
    plus bias, weights from the affinities alone, normalised, scaled; plus shared experts."""
    gate, rows = ffn.gate, []
    for token in x.reshape(-1, x.shape[-1]):
        scores = torch.sigmoid(gate.weight @ token)
        chosen = (scores + gate.expert_bias).topk(gate.top_k).indices
        weights = scores[chosen] / scores[chosen].sum() * gate.scaling
        out = ffn.shared_experts(token)
        for w, e in zip(weights, chosen.tolist()):
            out = out + w * ffn.experts[e](token)
        rows.append(out)
    return torch.stack(rows).view_as(x)


# 30 float32s are not whole 16 bytes: grouped_mm has no kernel, and the loop fallback runs
@pytest.mark.parametrize("moe_inter_dim", [32, 30], ids=["grouped_mm", "loop"])
def test_deepseek_moe_equals_a_per_token_loop_in_outputs_and_gradients(moe_inter_dim):
    fields = dict(KINDS["deepseek_v3"], moe_inter_dim=moe_inter_dim)
    ffn = random_model(**fields).layers[1].feed_forward.train()
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(4))
    results = []
    for run in (lambda m, x: m(x), deepseek_moe_per_token,
                lambda m, x: m.shared_experts(x) + m.every_expert(x, *m.gate(x)[:2])):
        layer = copy.deepcopy(ffn)
        x_in = x.clone().requires_grad_()
        out = run(layer, x_in)
        (out * upstream).sum().backward()
        results.append((out, x_in.grad, {n: p.grad for n, p in layer.named_parameters()}))
    (out, x_grad, grads), *references = results
    for ref_out, ref_x_grad, ref_grads in references:
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x_grad, ref_x_grad, atol=1e-5, rtol=1e-5)
        for name, grad in grads.items():  # every expert's, an unchosen one's too (zero)
            assert grad is not None, name
            ref = ref_grads[name]  # None where the loop never ran the expert
            torch.testing.assert_close(grad, torch.zeros_like(grad) if ref is None else ref,
                                       atol=1e-5, rtol=1e-5)


def skewed_router_model():
    """A model with one MoE layer, its router, and inputs for that layer: every token leans
    along channel 0, toward which expert 0's router row points, so expert 0 takes them all."""
    model = random_model(**dict(KINDS["deepseek_v3"], n_layers=2, bias_update_speed=0.02))
    gate = moe_gates(model)[0]
    x = torch.randn(4, 32, 64, generator=torch.Generator().manual_seed(5))
    x[..., 0] += 3.0
    with torch.no_grad():
        gate.expert_bias.zero_()
        gate.weight[0, 0] = 2.0
    return model.train(), gate, x


def test_balancing_bias_moves_the_load_toward_even_and_not_the_weights():
    model, gate, x = skewed_router_model()
    shares = []
    for step in range(60):
        gate(x)
        load = balance_experts(model, torch.tensor(True), distributed=False)[0]
        shares.append((load[0] / load.sum()).item())
    assert shares[0] == pytest.approx(1 / 3)  # chosen by every token, one of its 3 experts
    assert shares[-1] < 0.2  # even: 1/8 of the slots
    assert gate.expert_bias[0] < 0 and not gate.expert_bias.requires_grad
    # the bias decides the choice only: the weights, and so the gradients, are those of
    # the affinities at the chosen experts
    experts, weights, _ = gate(x)
    scores = torch.sigmoid(x @ gate.weight.T).gather(-1, experts)
    torch.testing.assert_close(weights, scores / scores.sum(-1, keepdim=True) * gate.scaling)


def test_a_skipped_step_leaves_the_balancing_bias_alone():
    model, gate, x = skewed_router_model()
    gate(x)
    before = gate.expert_bias.clone()
    load = balance_experts(model, torch.tensor(False), distributed=False)
    assert load.sum() > 0 and torch.equal(gate.expert_bias, before) and gate.load is None


def balance_on_two_ranks(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, gate, x = skewed_router_model()
    for step in range(3):  # each rank its own tokens
        gate(x[rank::2])
        balance_experts(model, torch.tensor(True), distributed=True)
    results[rank] = gate.expert_bias.clone()
    dist.destroy_process_group()


def test_the_balancing_bias_is_the_same_on_every_rank():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(balance_on_two_ranks, args=(port, results), nprocs=2)
    assert torch.equal(results[0], results[1]) and results[0].abs().sum() > 0


def test_a_config_saved_before_a_field_existed_takes_its_default():
    saved = dataclasses.asdict(LMConfig(dim=64, n_layers=2))
    for field in ("qk_norm", "head_dim", "attention", "kv_lora_rank", "moe_inter_dim",
                  "score_func", "first_k_dense", "bias_update_speed"):
        del saved[field]
    assert resolved_config(saved) == LMConfig(dim=64, n_layers=2)
    with pytest.raises(ValueError, match="fields this MyLLM does not know"):
        resolved_config({**saved, "rope_scaling": 2.0})


def test_mla_caches_the_latent_and_the_rope_key_only():
    model = Transformer(LMConfig(**KINDS["deepseek_v3"])).eval()
    cache = model(torch.randint(0, 300, (2, 9)), use_cache=True).past_key_values[0]
    c = model.config
    assert cache.k.shape[1:] == (1, 9, c.kv_lora_rank)  # one latent per token
    assert cache.v.shape[1:] == (1, 9, c.qk_rope_head_dim)  # and its RoPE key part


def test_active_parameters_count_only_the_chosen_experts():
    model = Transformer(LMConfig(**KINDS["deepseek_v3"]))
    c = model.config
    moe_layers = c.n_layers - c.first_k_dense
    idle = moe_layers * (c.n_routed_experts - c.num_experts_per_tok) * 3 * c.dim * c.moe_inter_dim
    assert model.num_params() - model.num_params(active=True) == idle


def test_a_head_count_that_disagrees_with_the_config_file_is_refused(exported):
    _, weights, _ = exported["qwen3"]  # 4 heads, said by its config file
    assert load_model(weights, 300, n_heads=4).config.n_heads == 4
    with pytest.raises(ValueError, match="checkpoint: n_heads 4; asked: 8"):
        load_model(weights, 300, n_heads=8)  # same shapes, another model: not taken
