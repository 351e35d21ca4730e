"""decode.py's StaticDecoder against a full forward, RoPE tables under dtype casts, and MoE
experts left without tokens."""

import math

import pytest
import torch

from decode import StaticDecoder, StaticKVCache
from model import LMConfig, Transformer

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, max_seq_len=600)


def tiny_model(**overrides):
    """A model whose outputs depend on the context: at the usual init (std 0.02) a tiny
    model mostly echoes its input token, and a broken attention mask would go unnoticed.
    Larger weights make attention matter; the first test checks that it does."""
    torch.manual_seed(0)
    model = Transformer(LMConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("wq.weight", "wk.weight", "wv.weight", "wo.weight",
                              "wkv_a.weight", "wkv_b.weight", "wq_b.weight")):
                p.mul_(8)
    return model


def test_the_test_model_depends_on_context():
    model = tiny_model()
    g = torch.Generator().manual_seed(4)
    a, b = torch.randint(3, 300, (1, 12), generator=g), torch.randint(3, 300, (1, 12), generator=g)
    b[0, -1] = a[0, -1]  # same last token, different history
    with torch.inference_mode():
        diff = (model(a).logits[0, -1] - model(b).logits[0, -1]).abs().max()
        greedy_a = model.generate(a, max_new_tokens=8, temperature=0)[0, 12:]
        greedy_b = model.generate(b, max_new_tokens=8, temperature=0)[0, 12:]
    assert diff > 0.1
    assert not torch.equal(greedy_a, greedy_b)


def test_static_decoder_generates_the_same_tokens_as_the_kv_cache_and_no_cache():
    model = tiny_model()
    prompt = torch.randint(3, 300, (3, 9), generator=torch.Generator().manual_seed(1))
    cached = model.generate(prompt, max_new_tokens=25, temperature=0)
    static = model.generate(prompt, max_new_tokens=25, temperature=0,
                            decoder=StaticDecoder(model, 3, 34))
    uncached = model.generate(prompt, max_new_tokens=25, temperature=0, use_cache=False)
    assert torch.equal(static, cached)
    assert torch.equal(static, uncached)


def decoder_logits(decoder, ids, prompt_len):
    """Logits after positions prompt_len-1 .. end-1: a prefill, then one step per token."""
    steps = [decoder.prefill(ids[:, :prompt_len]).clone()]
    steps += [decoder.step(ids[:, t:t + 1]).clone() for t in range(prompt_len, ids.shape[1])]
    return torch.stack(steps, dim=1)


@pytest.mark.parametrize("overrides", [{}, dict(attention="mla", q_lora_rank=16)],
                         ids=["gqa", "mla"])
def test_static_decoder_logits_match_a_full_forward_at_every_step(overrides):
    model = tiny_model(**overrides)
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = model(ids).logits  # (2, 12, vocab): the truth, no cache at all
    steps = decoder_logits(StaticDecoder(model, 2, 12), ids, 5)
    torch.testing.assert_close(steps, full[:, 4:], atol=1e-4, rtol=1e-4)


def test_a_kept_decoder_serves_the_next_call_and_stale_slots_stay_hidden():
    """The second, shorter sequence reuses buffers the first one filled further: the slots
    past it hold old keys, which the mask must keep out of attention."""
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    long_ids, short_ids = torch.randint(3, 300, (1, 200), generator=g), torch.randint(
        3, 300, (1, 10), generator=g)
    decoder = StaticDecoder(model, 1, 200)
    decoder_logits(decoder, long_ids, 150)
    assert decoder.fits(1, 10) and not decoder.fits(2, 10) and not decoder.fits(1, 257)
    with torch.inference_mode():
        full = model(short_ids).logits
    torch.testing.assert_close(decoder_logits(decoder, short_ids, 3), full[:, 2:],
                               atol=1e-4, rtol=1e-4)
    again = model.generate(short_ids, max_new_tokens=6, temperature=0, decoder=decoder)
    assert torch.equal(again, model.generate(short_ids, max_new_tokens=6, temperature=0))


def test_a_decoder_serves_one_stream_at_a_time():
    """Two unfinished streams on one decoder would overwrite each other's caches: the second
    is refused, and the decoder serves again once the first is done."""
    model = tiny_model()
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(3, 300, (1, 6), generator=g), torch.randint(3, 300, (1, 6), generator=g)
    decoder = StaticDecoder(model, 1, 16)
    stream_a = model.generate(a, max_new_tokens=10, temperature=0, stream=True, decoder=decoder)
    first = next(stream_a)
    with pytest.raises(ValueError, match="in use by an unfinished"):
        next(model.generate(b, max_new_tokens=10, temperature=0, stream=True, decoder=decoder))
    rest = list(stream_a)
    alone_a = model.generate(a, max_new_tokens=10, temperature=0)[0, 6:]
    assert [first.item()] + [t.item() for t in rest] == alone_a.tolist()
    assert torch.equal(model.generate(b, max_new_tokens=10, temperature=0, decoder=decoder),
                       model.generate(b, max_new_tokens=10, temperature=0))


def test_a_decoder_refuses_what_does_not_fit():
    model = tiny_model()
    prompt = torch.randint(3, 300, (1, 5))
    decoder = StaticDecoder(model, 1, 8)  # 256 slots
    decoder.prefill(torch.randint(3, 300, (1, 255)))
    decoder.step(prompt[:, :1])
    with pytest.raises(ValueError, match="do not fit"):
        decoder.step(prompt[:, :1])
    with pytest.raises(ValueError, match="make a decoder that fits"):
        model.generate(prompt.repeat(2, 1), max_new_tokens=3, decoder=decoder)
    with pytest.raises(ValueError, match="without padding"):
        model.generate(prompt, torch.ones_like(prompt), max_new_tokens=3, decoder=decoder)


def test_static_decoder_capacity_is_a_multiple_of_256_within_max_seq_len():
    model = tiny_model()
    assert StaticDecoder(model, 1, 10).capacity == 256
    assert StaticDecoder(model, 1, 257).capacity == 512
    assert StaticDecoder(model, 1, 590).capacity == 600  # capped at max_seq_len


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


def test_two_streams_made_before_either_is_read_do_not_share_a_decoder():
    """Both calls pass the check at the call (neither stream has started); the second to
    start is refused, so they never overwrite each other's caches."""
    model = tiny_model()
    g = torch.Generator().manual_seed(7)
    a, b = torch.randint(3, 300, (1, 6), generator=g), torch.randint(3, 300, (1, 6), generator=g)
    decoder = StaticDecoder(model, 1, 16)
    stream_a = model.generate(a, max_new_tokens=5, temperature=0, stream=True, decoder=decoder)
    stream_b = model.generate(b, max_new_tokens=5, temperature=0, stream=True, decoder=decoder)
    first = next(stream_a)
    with pytest.raises(ValueError, match="in use by an unfinished"):
        next(stream_b)
    assert [first.item()] + [t.item() for t in stream_a] == \
        model.generate(a, max_new_tokens=5, temperature=0)[0, 6:].tolist()
