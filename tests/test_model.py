"""model.py against independent truths: transformers' Llama, invariants, hand-computed values."""

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import (KVCache, LMConfig, Transformer, apply_repetition_penalty, apply_rope, repeat_kv,
                   sample_next_token)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from export_hf import to_hf_state_dict  # noqa: E402  the one place the Llama mapping lives
from test_train import refuse_host_sync  # noqa: E402

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=128)
TINY_MOE = dict(TINY, use_moe=True, n_routed_experts=4, num_experts_per_tok=2)
TINY_QK = dict(TINY, qk_norm=True)
TINY_MLA = dict(TINY, attention="mla")
# DeepSeek-V3's kind: MLA with a low-rank query, a dense first layer, then 8 narrow
# sigmoid-routed experts (3 a token) beside a shared one, scaled, with the balancing bias
TINY_DSMOE = dict(TINY, attention="mla", q_lora_rank=16, use_moe=True, score_func="sigmoid",
                  n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1,
                  moe_inter_dim=32, first_k_dense=1, routed_scaling=1.5, bias_update_speed=0.01)
ARCHITECTURES = dict(dense=TINY, moe=TINY_MOE, qk_norm=TINY_QK, mla=TINY_MLA, dsmoe=TINY_DSMOE)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return Transformer(LMConfig(**{**TINY, **overrides})).eval()


def random_ids(batch, length, vocab=300, seed=1):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def hf_llama(model):
    """transformers' Llama holding model's weights, converted as scripts/export_hf.py does."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_kv_heads, max_position_embeddings=c.max_seq_len,
        rms_norm_eps=c.norm_eps, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta})
    hf_config._attn_implementation = "eager"
    hf = LlamaForCausalLM(hf_config).eval()
    sd = to_hf_state_dict(model.state_dict(), c)
    sd["lm_head.weight"] = model.output.weight  # tied: the embedding matrix
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()},
                                             strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return hf


def test_logits_match_transformers_llama():
    model = tiny(rope_theta=10000.0)
    hf = hf_llama(model)
    for seed, length in [(1, 1), (2, 17), (3, 64)]:
        ids = random_ids(2, length, seed=seed)
        with torch.no_grad():
            ours, theirs = model(ids).logits, hf(ids).logits
        assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("overrides", ARCHITECTURES.values(), ids=ARCHITECTURES)
def test_kv_cache_matches_full_forward(overrides):
    model = tiny(**overrides)
    ids = random_ids(2, 12)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)  # a prompt, then one token at a time
        steps = [out.logits]
        for t in range(5, 12):
            out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_grows_past_its_capacity_and_keeps_every_key():
    cache = KVCache(4)
    chunks = [torch.randn(1, 2, n, 8) for n in (3, 3, 1, 9)]  # the second overflows 4 slots
    for i, chunk in enumerate(chunks):
        keys, values = cache.update(chunk, -chunk)
        assert torch.equal(keys, torch.cat(chunks[:i + 1], dim=2)) and torch.equal(values, -keys)


def test_eager_attention_equals_sdpa_with_and_without_padding():
    sdpa, eager = tiny(flash_attn=True), tiny(flash_attn=False)
    ids = random_ids(2, 20)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    with torch.no_grad():
        torch.testing.assert_close(sdpa(ids).logits, eager(ids).logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sdpa(ids, mask).logits, eager(ids, mask).logits,
                                   atol=1e-5, rtol=1e-5)


def test_gqa_equals_multi_head_attention_with_shared_kv_heads():
    # GQA with 2 kv heads is exactly MHA whose 4 kv heads are the 2 repeated group-wise.
    gqa = tiny(n_kv_heads=2)
    mha = tiny(n_kv_heads=4)
    sd = gqa.state_dict()
    head_dim = 64 // 4
    for key, value in list(sd.items()):
        if key.endswith(("wk.weight", "wv.weight")):
            sd[key] = value.view(2, 1, head_dim, 64).expand(2, 2, head_dim, 64).reshape(64, 64)
    mha.load_state_dict(sd)
    ids = random_ids(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, atol=1e-5, rtol=1e-5)


def test_attention_without_rotation_equals_torch_multihead_attention():
    model = tiny(n_kv_heads=4)
    attn = model.layers[0].attention
    x = torch.randn(2, 10, 64)
    cos, sin = torch.ones(1, 10, 8), torch.zeros(1, 10, 8)  # angle 0: RoPE is the identity
    reference = torch.nn.MultiheadAttention(64, 4, bias=False, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([attn.wq.weight, attn.wk.weight, attn.wv.weight]))
        reference.out_proj.weight.copy_(attn.wo.weight)
        causal = torch.ones(10, 10, dtype=torch.bool).triu(1)  # True = masked, in this API
        expected, _ = reference(x, x, x, attn_mask=causal, need_weights=False)
        torch.testing.assert_close(attn(x, cos, sin), expected, atol=1e-5, rtol=1e-5)


def test_repeat_kv_shares_each_head_with_consecutive_query_heads():
    x = torch.arange(2.0).view(1, 2, 1, 1)  # two kv heads holding 0 and 1
    assert repeat_kv(x, 3).flatten().tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("overrides", ARCHITECTURES.values(), ids=ARCHITECTURES)
def test_changing_later_tokens_changes_no_earlier_logit(overrides):
    model = tiny(**overrides)
    ids = random_ids(1, 16)
    changed = ids.clone()
    changed[0, 9:] = (changed[0, 9:] + 1) % 300
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_rope_dot_product_depends_only_on_distance():
    model = tiny()
    cos, sin = model.rope_cos, model.rope_sin
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        qm = apply_rope(q, cos[m:m + 1][None], sin[m:m + 1][None])
        kn = apply_rope(k, cos[n:n + 1][None], sin[n:n + 1][None])
        return (qm * kn).sum().item()

    assert score(3, 1) == pytest.approx(score(50, 48), abs=1e-5)
    assert score(7, 7) == pytest.approx((q * k).sum().item(), abs=1e-5)
    assert score(9, 2) != pytest.approx(score(9, 5), abs=1e-3)


def test_rope_rotates_interleaved_pairs_by_hand_computed_angle():
    model = tiny(rope_theta=100.0)  # head_dim 16: pair i turns by 100^(-2i/16) per position
    x = torch.zeros(1, 1, 1, 16)
    x[..., 2], x[..., 3] = 1.0, 0.0  # pair 1 = (x[2], x[3])
    pos = 5
    out = apply_rope(x, model.rope_cos[pos:pos + 1][None], model.rope_sin[pos:pos + 1][None])
    angle = pos * 100.0 ** (-2 / 16)
    assert out[..., 2].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert out[..., 3].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert out[..., [0, 1, 4, 5]].abs().max().item() == 0


@pytest.mark.parametrize("overrides", [TINY, TINY_MLA], ids=["gqa", "mla"])
def test_left_padded_batch_matches_each_prompt_alone_without_nan(overrides):
    model = tiny(**overrides)
    prompts = [random_ids(1, 9, seed=5)[0], random_ids(1, 4, seed=6)[0]]
    batch = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    for row, p in enumerate(prompts):
        batch[row, 9 - len(p):], mask[row, 9 - len(p):] = p, 1

    with torch.no_grad():
        logits = model(batch, mask).logits
        for row, p in enumerate(prompts):
            alone = model(p[None]).logits[0]
            torch.testing.assert_close(logits[row, 9 - len(p):], alone, atol=1e-5, rtol=1e-5)
    generated = model.generate(batch, mask, max_new_tokens=6, temperature=0)
    for row, p in enumerate(prompts):
        alone = model.generate(p[None], max_new_tokens=6, temperature=0)
        assert generated[row, 9:].tolist() == alone[0, len(p):].tolist()

    model.train()
    out = model(batch, mask)
    (out.logits * mask[..., None]).sum().backward()
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_padding_rows_stay_finite_in_eager_attention_too():
    model = tiny(flash_attn=False).train()
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    out = model(ids, mask)
    out.logits.sum().backward()
    assert torch.isfinite(out.logits).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def naive_moe(ffn, x):
    """Every expert on every token, combined with the gate's top-k weights: the definition."""
    scores = F.linear(x, ffn.gate.weight).softmax(-1)
    weights, experts = scores.topk(ffn.gate.top_k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    out = ffn.shared_experts(x)
    for e, expert in enumerate(ffn.experts):
        out = out + expert(x) * (weights * (experts == e)).sum(-1, keepdim=True)
    return out


def test_moe_dispatch_equals_dense_definition_in_train_and_eval():
    model = tiny(**TINY_MOE)
    ffn = model.layers[0].feed_forward
    x = torch.randn(3, 7, 64)
    with torch.no_grad():
        expected = naive_moe(ffn, x)
        torch.testing.assert_close(ffn.eval()(x), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ffn.train()(x), expected, atol=1e-5, rtol=1e-5)


def moe_by_sorting(ffn, x):
    """The dispatch model.py had before: slots sorted by expert, each expert run once on
    its own tokens (slicing by counts read on the host). The plain reference."""
    B, T, D = x.shape
    experts, weights, aux_loss = ffn.gate(x)  # (B, T, k) each
    tokens = x.reshape(-1, D)
    slot_expert = experts.flatten()  # slot s belongs to token s // k
    order = torch.argsort(slot_expert, stable=True)
    slot_token = order // experts.shape[-1]
    slot_weight = weights.flatten()[order, None]
    counts = torch.bincount(slot_expert, minlength=len(ffn.experts)).tolist()
    routed, start = torch.zeros_like(tokens), 0
    for expert, count in zip(ffn.experts, counts):
        idx = slot_token[start:start + count]
        routed.index_add_(0, idx, expert(tokens[idx]) * slot_weight[start:start + count])
        start += count
    out = routed.view(B, T, D)
    if ffn.shared_experts is not None:
        out = out + ffn.shared_experts(x)
    return out, aux_loss


def moe_layer_and_input(top_k, n_shared, starve_last_expert, seed=0):
    """A MoE layer in training mode and x (3, 7, 64); starve_last_expert: the gate never
    picks expert 3 (every token leans along e0, which expert 3's gate row opposes)."""
    model = tiny(seed, **{**TINY_MOE, "num_experts_per_tok": top_k, "n_shared_experts": n_shared})
    ffn = model.layers[0].feed_forward.train()
    x = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(seed + 1))
    if starve_last_expert:
        x[..., 0] += 5.0
        with torch.no_grad():
            ffn.gate.weight[3, 0] = -10.0
    return ffn, x


def assert_moe_matches_the_sorted_loop(ffn, x, tol=1e-5):
    """The layer's output, aux loss and gradients (of x and of every parameter, an unused
    expert's too: DDP waits for a gradient of each) equal moe_by_sorting's."""
    reference = copy.deepcopy(ffn)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).to(x.device)
    results = []
    for layer, run in ((ffn, lambda m, x: (m(x), m.aux_loss)), (reference, moe_by_sorting)):
        x_in = x.clone().requires_grad_()
        out, aux_loss = run(layer, x_in)
        ((out * upstream).sum() + aux_loss).backward()
        results.append((out, aux_loss, x_in.grad, dict(layer.named_parameters())))
    (out, aux, x_grad, params), (ref_out, ref_aux, ref_x_grad, ref_params) = results
    torch.testing.assert_close(out, ref_out, atol=tol, rtol=tol)
    assert aux.item() == ref_aux.item() and aux.item() > 0
    torch.testing.assert_close(x_grad, ref_x_grad, atol=tol, rtol=tol)
    for name, p in params.items():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("n_shared", [0, 1])
@pytest.mark.parametrize("starve_last_expert", [False, True], ids=["all_used", "one_unused"])
def test_moe_dispatch_equals_the_sorted_loop_in_outputs_and_gradients(top_k, n_shared,
                                                                       starve_last_expert):
    ffn, x = moe_layer_and_input(top_k, n_shared, starve_last_expert)
    assert (3 in ffn.gate(x)[0].unique().tolist()) != starve_last_expert
    assert_moe_matches_the_sorted_loop(ffn, x)


def test_moe_forward_and_backward_wait_for_no_host_sync(monkeypatch):
    ffn, x = moe_layer_and_input(2, 1, starve_last_expert=False)
    with monkeypatch.context() as m:
        refuse_host_sync(m)
        out = ffn(x)
        (out.square().mean() + ffn.aux_loss).backward()
    assert all(p.grad is not None for p in ffn.parameters())


def test_moe_layer_compiles_into_one_graph_that_matches_the_sorted_loop():
    ffn, x = moe_layer_and_input(2, 1, starve_last_expert=True)
    compiled = torch.compile(ffn, fullgraph=True)  # fullgraph: a graph break is an error
    results = []
    for run in (lambda x: compiled(x), lambda x: moe_by_sorting(ffn, x)[0]):
        ffn.zero_grad()
        x_in = x.clone().requires_grad_()
        out = run(x_in)
        out.square().sum().backward()
        results.append((out, x_in.grad, [p.grad.clone() for p in ffn.parameters()]))
    (out, x_grad, p_grads), (ref_out, ref_x_grad, ref_p_grads) = results
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_grad, ref_x_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p_grads, ref_p_grads, atol=1e-5, rtol=1e-5)


def test_moe_routes_each_token_to_exactly_k_distinct_experts():
    model = tiny(**TINY_MOE)
    experts, weights, _ = model.layers[0].feed_forward.gate(torch.randn(2, 9, 64))
    assert experts.shape == (2, 9, 2)
    assert (experts[..., 0] != experts[..., 1]).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 9))


def routed_tokens(*rows):
    """x (B, T, 64) from rows of "+" / "-": a token along +e0 or along -e0."""
    e0 = torch.zeros(64)
    e0[0] = 1.0
    return torch.stack([torch.stack([e0 if c == "+" else -e0 for c in row]) for row in rows])


@pytest.mark.parametrize("seq_aux, skewed_loss", [(True, 1.25), (False, 1.125)],
                         ids=["per_sequence", "per_batch"])
def test_moe_aux_loss_equals_the_hand_computed_balance_loss(seq_aux, skewed_loss):
    """DeepSeek-V2's expert-level balance loss (MiniMind's too): alpha * sum_e
    f_e * P_e, f_e = E / (k T) * slots routed to expert e, P_e = the mean router probability
    of expert e, over each sequence and then averaged (seq_aux) or over the whole batch."""
    model = tiny(**TINY_MOE, seq_aux=seq_aux, aux_loss_alpha=0.1).train()  # E 4, k 2
    gate = model.layers[0].feed_forward.gate
    a = math.log(3) / 2
    with torch.no_grad():
        gate.weight.zero_()
        gate.weight[:, 0] = torch.tensor([a, a, -a, -a])
    # A "+" token has logits (a, a, -a, -a): probabilities (3/8, 3/8, 1/8, 1/8), since
    # e^2a = 3, and its 2 slots go to experts 0 and 1. A "-" token mirrors it: experts 2, 3.
    balanced = routed_tokens("+-", "-+")
    experts, _, loss = gate(balanced)
    assert sorted(experts[0, 0].tolist()) == [0, 1] and sorted(experts[0, 1].tolist()) == [2, 3]
    # every expert gets 1 of every 4 slots (f_e = 1) and P_e = (3/8 + 1/8) / 2 = 1/4:
    # alpha * 4 * (1 * 1/4) = alpha
    assert loss.item() == pytest.approx(0.1 * 1.0, rel=1e-6)

    _, _, loss = gate(routed_tokens("++", "+-"))
    # per sequence: "++" gives f = (2, 2, 0, 0), P = (3/8, 3/8, 1/8, 1/8): 2 * 3/8 * 2 = 1.5;
    # "+-" is balanced: 1; the mean is 1.25.
    # per batch: 3 "+" and 1 "-": slots (3, 3, 1, 1) of 8, f = (1.5, 1.5, 0.5, 0.5),
    # P = (5/16, 5/16, 3/16, 3/16): 2 * 1.5 * 5/16 + 2 * 0.5 * 3/16 = 18/16 = 1.125
    assert loss.item() == pytest.approx(0.1 * skewed_loss, rel=1e-6)


def test_moe_every_expert_and_the_gate_get_gradient():
    model = tiny(**TINY_MOE).train()
    out = model(random_ids(4, 32))
    (out.logits.logsumexp(-1).mean() + out.aux_loss).backward()
    assert out.aux_loss.item() > 0
    for layer in model.layers:
        for name, p in layer.feed_forward.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initial_loss_is_close_to_log_vocab():
    torch.manual_seed(0)
    model = Transformer(LMConfig(dim=128, n_layers=4, n_heads=4, n_kv_heads=2))  # vocab 6400
    ids = torch.randint(0, 6400, (4, 128))
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    assert abs(loss.item() - math.log(6400)) < 0.3


def test_default_parameter_counts_and_minimind_state_dict_keys():
    dense, moe = Transformer(LMConfig()), Transformer(LMConfig(use_moe=True))
    assert round(dense.num_params() / 1e6, 2) == 25.83
    assert round(moe.num_params() / 1e6, 2) == 95.05
    assert dense.config.hidden_dim == 1408
    keys = set(dense.state_dict())
    expected = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(8):
        expected |= {f"layers.{i}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")}
        expected |= {f"layers.{i}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}
        expected |= {f"layers.{i}.attention_norm.weight", f"layers.{i}.ffn_norm.weight"}
    assert keys == expected
    assert dense.state_dict()["layers.0.attention.wk.weight"].shape == (128, 512)
    moe_keys = set(moe.state_dict())
    assert {"layers.3.feed_forward.gate.weight", "layers.3.feed_forward.experts.3.w2.weight",
            "layers.3.feed_forward.shared_experts.w1.weight"} <= moe_keys
    assert dense.output.weight.data_ptr() == dense.tok_embeddings.weight.data_ptr()


def test_state_dict_round_trip_is_strict_and_exact():
    a, b = tiny(seed=1), tiny(seed=2)
    b.load_state_dict(a.state_dict(), strict=True)
    ids = random_ids(1, 8)
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


@pytest.mark.parametrize("overrides", ARCHITECTURES.values(), ids=ARCHITECTURES)
def test_greedy_generation_is_identical_with_and_without_cache_and_streamed(overrides):
    model = tiny(**overrides)
    prompt = random_ids(2, 5)
    cached = model.generate(prompt, max_new_tokens=12, temperature=0)
    uncached = model.generate(prompt, max_new_tokens=12, temperature=0, use_cache=False)
    streamed = list(model.generate(prompt, max_new_tokens=12, temperature=0, stream=True))
    assert cached.shape == (2, 17)
    assert torch.equal(cached, uncached)
    assert torch.equal(torch.stack(streamed, dim=1), cached[:, 5:])


def test_generation_stops_at_eos_and_pads_finished_rows_with_it():
    model = tiny()
    prompt = random_ids(1, 5)
    free = model.generate(prompt, max_new_tokens=8, temperature=0)[0, 5:].tolist()
    eos = free[2]
    stopped = model.generate(prompt, max_new_tokens=8, temperature=0, eos_token_id=eos)
    assert stopped[0, 5:].tolist() == free[:free.index(eos) + 1]


def test_sampling_is_reproducible_with_a_seeded_generator():
    model = tiny()
    prompt = random_ids(1, 4)
    runs = [model.generate(prompt, max_new_tokens=10, temperature=1.0, top_p=0.9, top_k=50,
                           generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


def test_repetition_penalty_lowers_seen_tokens_for_either_sign():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    ids = torch.tensor([[0, 1, 0]])
    out = apply_repetition_penalty(logits, ids, torch.ones_like(ids), 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]
    padded = apply_repetition_penalty(logits, torch.tensor([[3, 1]]), torch.tensor([[0, 1]]), 2.0)
    assert padded.tolist() == [[2.0, -4.0, 1.0, -1.0]]  # token 3 sits on padding: not seen


def test_top_k_and_top_p_keep_exactly_the_hand_computed_sets():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    draws = lambda **kw: {sample_next_token(logits, 1.0, generator=torch.Generator().manual_seed(s),
                                            **kw).item() for s in range(300)}
    assert draws(top_k=2, top_p=1.0) == {0, 1}
    # nucleus: the fewest most likely tokens whose probability reaches top_p; the top_p
    # values stay clear of the sums 0.5, 0.8, 0.95, where float rounding would decide
    assert draws(top_k=0, top_p=0.49) == {0}
    assert draws(top_k=0, top_p=0.51) == {0, 1}  # 0.5 falls short
    assert draws(top_k=0, top_p=0.79) == {0, 1}  # 0.5 + 0.3 reaches it
    assert draws(top_k=0, top_p=0.81) == {0, 1, 2}  # 0.8 falls short
    assert draws(top_k=0, top_p=0.96) == {0, 1, 2, 3}
    assert sample_next_token(logits, 0.0, 0, 1.0).item() == 0


def test_positions_beyond_max_seq_len_are_a_clear_error():
    model = tiny(max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len is 16"):
        model(random_ids(1, 17))
    with pytest.raises(ValueError, match="max_seq_len is 16"):
        model.generate(random_ids(1, 10), max_new_tokens=7)


def test_generate_refuses_a_bad_call_at_the_call_even_as_a_stream():
    model = tiny()
    ids = random_ids(1, 4)
    too_long = model.config.max_seq_len  # prompt + new tokens past the RoPE tables
    with pytest.raises(ValueError, match="shorten the prompt or lower max_new_tokens"):
        model.generate(ids, max_new_tokens=too_long, stream=True)  # no next() needed
