"""Static-cache decoding, RoPE tables under dtype casts, and MoE experts left without tokens."""

import math

import torch

from model import LMConfig, StaticKVCache, Transformer

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=600)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return Transformer(LMConfig(**{**TINY, **overrides})).eval()


def test_static_cache_generates_the_same_tokens_as_the_growing_cache_and_no_cache():
    model = tiny_model()
    prompt = torch.randint(3, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    growing = model.generate(prompt, max_new_tokens=25, temperature=0, static_cache=False)
    static = model.generate(prompt, max_new_tokens=25, temperature=0, static_cache=True)
    uncached = model.generate(prompt, max_new_tokens=25, temperature=0, use_cache=False)
    assert torch.equal(static, growing)
    assert torch.equal(static, uncached)


def test_static_decoder_logits_match_a_full_forward_at_every_step():
    model = tiny_model()
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = model(ids).logits  # (2, 12, vocab): the truth, no cache at all
        decoder = model._static_decoder(2, 12)
        steps = [decoder.prefill(ids[:, :5])]
        steps += [decoder.step(ids[:, t:t + 1]) for t in range(5, 12)]
    for i, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, 4 + i], atol=1e-5, rtol=1e-5)


def test_static_decoder_is_reused_across_calls_and_stale_slots_stay_hidden():
    """The second, shorter call reuses the buffers the first one filled further: slots past
    the new prompt hold old keys, which the mask must keep out."""
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    long_prompt, short_prompt = torch.randint(3, 300, (1, 40), generator=g), torch.randint(
        3, 300, (1, 4), generator=g)
    model.generate(long_prompt, max_new_tokens=30, temperature=0, static_cache=True)
    first = model._decoder_cache[1]
    static = model.generate(short_prompt, max_new_tokens=30, temperature=0, static_cache=True)
    assert model._decoder_cache[1] is first  # both fit the same 256-slot capacity
    growing = model.generate(short_prompt, max_new_tokens=30, temperature=0, static_cache=False)
    assert torch.equal(static, growing)


def test_static_cache_capacity_is_a_multiple_of_256_within_max_seq_len():
    model = tiny_model()
    assert model._static_decoder(1, 10).capacity == 256
    assert model._static_decoder(1, 257).capacity == 512
    assert model._static_decoder(1, 590).capacity == 600  # capped at max_seq_len


def test_static_kv_cache_writes_at_the_position_tensor():
    pos = torch.tensor(3)
    cache = StaticKVCache(8, pos)
    k = torch.arange(2 * 1 * 2 * 4, dtype=torch.float32).view(2, 1, 2, 4)
    keys, values = cache.update(k, -k)
    assert keys.shape == (2, 1, 8, 4)
    assert torch.equal(keys[:, :, 3:5], k) and torch.equal(values[:, :, 3:5], -k)
    assert keys[:, :, :3].abs().sum() == 0 and keys[:, :, 5:].abs().sum() == 0


def test_rope_tables_stay_float32_when_the_model_is_cast():
    model = tiny_model()
    cos32 = model.rope_cos.clone()
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.float()):
        model = cast(model)
        assert model.rope_cos.dtype == model.rope_sin.dtype == torch.float32
        assert torch.equal(model.rope_cos, cos32)
    # the truth at one entry: position 500, pair 1 of head_dim 16 -> angle 500 * theta^(-2/16)
    angle = 500 * 1e6 ** (-2 / 16)
    assert math.isclose(model.rope_cos[500, 1].item(), math.cos(angle), abs_tol=1e-6)


def test_an_expert_that_gets_no_tokens_still_has_a_zero_gradient():
    """DDP needs every parameter in every backward pass; an expert without tokens must get a
    gradient of exactly zero (it did not touch the loss), not None."""
    model = tiny_model(use_moe=True, n_routed_experts=4, num_experts_per_tok=1,
                       n_shared_experts=1).train()
    for layer in model.layers:  # route every token to expert 0: experts 1-3 get nothing
        with torch.no_grad():
            layer.feed_forward.gate.weight.zero_()
            layer.feed_forward.gate.weight[0] = 1.0
    # make every token's input positive along the gate direction: all-ones embeddings
    with torch.no_grad():
        model.tok_embeddings.weight.fill_(1.0)
    ids = torch.randint(3, 300, (2, 6))
    model(ids).logits.sum().backward()
    for layer in model.layers:
        experts = layer.feed_forward.experts
        assert experts[0].w1.weight.grad.abs().sum() > 0
        for idle in experts[1:]:
            for p in idle.parameters():
                assert p.grad is not None and p.grad.abs().sum() == 0
