"""Generating text with a trained model: the decoding loop, the sampling filters, and fast
decoding with static caches and CUDA graphs, kept apart from the network in model.py.

    model.generate(ids, max_new_tokens=64, temperature=0)             # the plain KVCache
    decoder = StaticDecoder(model, batch_size=1, capacity=512)        # made once, kept
    model.generate(ids, max_new_tokens=64, temperature=0, decoder=decoder)

At the end, RoPE scaling (NTK, YaRN): it lets a trained model read contexts longer than
training saw, a setting of inference that model.py's RoPE tables take when LMConfig asks
for it. Nothing here imports model.py; the loop and the decoder take the model as an
argument.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch


def apply_repetition_penalty(logits, ids, attention_mask, penalty: float):
    """Make every token already in the row less likely (CTRL, Keskar et al. 2019): divide a
    positive logit by the penalty, multiply a negative one by it. Padding is not counted."""
    seen = ids
    if attention_mask is not None:
        seen = torch.where(attention_mask.bool(), ids, ids[:, -1:])  # pads -> a real token
    picked = logits.gather(1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(1, seen, picked)


def sample_next_token(logits, temperature: float, top_k: int, top_p: float, generator=None):
    """One token per row from logits (B, vocab): greedy at temperature 0, else sampled from
    the softmax at that temperature, restricted to the top_k tokens and to the smallest set
    whose probability reaches top_p (nucleus sampling, Holtzman et al. 2019)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@dataclass
class Sampling:
    """How the next token is chosen from the logits (see generate())."""
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    generator: Optional[torch.Generator] = None

    def pick(self, logits, ids, attention_mask):
        """The next token of every row (B,) from float logits (B, vocab)."""
        if self.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, ids, attention_mask,
                                              self.repetition_penalty)
        return sample_next_token(logits, self.temperature, self.top_k, self.top_p,
                                 self.generator)


def generate_steps(model, ids, attention_mask, max_new_tokens, sampling, eos_token_id,
                   caches=None, decoder=None):
    """Transformer.generate's loop: yields the (B,) new tokens of each step.

    The first step runs the whole prompt; every later step runs only the token just chosen,
    whose keys and values join the caches (model.KVCache, or the decoder's). With neither,
    every step runs the whole sequence again.
    """
    B, T = ids.shape
    prompt_len = T if attention_mask is None else int(attention_mask.sum(-1).max())
    check_generate_args(model.config, decoder, B, attention_mask, prompt_len + max_new_tokens)
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    unseen = ids  # the tokens the caches have not seen yet: the prompt, then one per step
    if decoder is not None:
        decoder.in_use = True  # until this stream ends, or is closed or collected
    try:
        for i in range(max_new_tokens):
            with torch.inference_mode():
                if decoder is not None:
                    logits = decoder.prefill(ids) if i == 0 else decoder.step(unseen)
                else:
                    cached = caches is not None  # else the whole sequence, every step
                    logits = model(unseen if cached else ids, attention_mask, caches, cached,
                                   logits_to_keep=1).logits[:, -1]
            token = sampling.pick(logits.float(), ids, attention_mask)  # (B,)
            if eos_token_id is not None:  # finished rows repeat eos
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done = done | (token == eos_token_id)
            ids = torch.cat([ids, token[:, None]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)],
                                           dim=1)
            unseen = token[:, None]
            yield token
            if eos_token_id is not None and bool(done.all()):
                return
    finally:
        if decoder is not None:
            decoder.in_use = False


# The fast path. At batch 1 a decoding step of a small model is a few hundred tiny kernels,
# and on a GPU launching them one by one from Python takes far longer than running them.
# A CUDA graph records the kernels of one step once; replaying it launches all of them in
# one call. A replay reuses the recorded memory, so nothing a step reads may move or change
# shape: the caches have a fixed size, and the position of the new token is a tensor.


def fast_decoding(model):
    """Where a StaticDecoder's CUDA graph pays off: on CUDA (MoE too: its routing has no
    shape that depends on the tokens, so a graph can record it)."""
    return model.tok_embeddings.weight.device.type == "cuda"


class StaticKVCache:
    """Keys and values of one layer in buffers of a fixed size, written at a position held
    in a tensor (`pos`, shared by all layers and advanced by StaticDecoder). Attention reads
    all `capacity` slots; StaticDecoder's mask hides the ones not written yet."""

    def __init__(self, capacity: int, pos):
        self.capacity = capacity
        self.pos = pos  # 0-dim long tensor: the slot of the first new token
        self.k = self.v = None  # (B, Hkv, capacity, hd), allocated in the dtype of the first k

    def update(self, k, v):
        if self.k is None:
            self.k = k.new_zeros(*k.shape[:2], self.capacity, k.shape[3])
            self.v = torch.zeros_like(self.k)
        slots = self.pos + torch.arange(k.shape[2], device=k.device)
        self.k.index_copy_(2, slots, k)
        self.v.index_copy_(2, slots, v)
        return self.k, self.v


class StaticDecoder:
    """Decoding over StaticKVCaches, each new token's step replayed from a CUDA graph.

    Made by the caller for batch_size rows of up to `capacity` tokens (rounded up to a
    multiple of 256, so that nearby lengths fit one decoder, and capped at the model's
    max_seq_len) and kept for as many generate() calls as fit: recording costs a few
    steps' time. One stream at a time: generate() refuses a decoder still in use. The
    graph is recorded where fast_decoding says it pays off; elsewhere the steps run eagerly.
    compile_step: torch.compile fuses a step's ~50 small kernels per layer first (tens of
    seconds, once), so each replay launches a fraction as many.
    Parameters are read in place: training's in-place updates are seen, but after the model
    moves (.to(), another dtype) make a new decoder.
    """

    def __init__(self, model, batch_size: int, capacity: int, compile_step: bool = False):
        device = model.tok_embeddings.weight.device
        self.model, self.batch_size = model, batch_size
        self.capacity = min(256 * math.ceil(capacity / 256), model.config.max_seq_len)
        self.length = 0  # slots filled; self.pos is set from it before every forward
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.slots = torch.arange(self.capacity, device=device)
        self.caches = [StaticKVCache(self.capacity, self.pos) for _ in model.layers]
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.step_fn = self._forward  # one decoding step; compiled if asked
        if compile_step:
            self.step_fn = torch.compile(self._forward, dynamic=False)
        self.graph, self.in_use = None, False  # in_use: by an unfinished generate() stream
        if fast_decoding(model):
            self._record()

    def fits(self, batch_size: int, length: int) -> bool:
        return batch_size == self.batch_size and length <= self.capacity

    def _forward(self, ids):
        """Logits (B, vocab) after ids (B, T) written at slots pos .. pos + T - 1: positions
        and mask come from the position tensor, so nothing waits for the device."""
        positions = (self.pos + torch.arange(ids.shape[1], device=ids.device))[None]  # (1, T)
        mask = (self.slots <= positions[0, :, None])[None, None]  # (1, 1, T, capacity)
        logits, _ = self.model.forward_at(ids, positions, mask, self.caches, logits_to_keep=1)
        return logits[:, -1]

    @torch.inference_mode()
    def _record(self):
        device = self.pos.device
        # warm up on a side stream (allocates the caches, lets libraries pick their
        # kernels), as CUDA graph capture requires; slot 0 is overwritten by prefill
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            self._forward(self.token)  # eagerly first: the caches exist before compiling
            for _ in range(3):
                self.step_fn(self.token)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.step_fn(self.token)  # refilled by every replay

    def _place(self, n: int):
        """Point the caches at the next n free slots (checked on the host: no sync)."""
        if self.length + n > self.capacity:
            raise ValueError(f"{self.length + n} tokens do not fit this decoder's "
                             f"{self.capacity} slots; make a larger one")
        self.pos.fill_(self.length)

    @torch.inference_mode()
    def prefill(self, ids):
        """Logits (B, vocab) after the prompt ids (B, T), which fill slots 0..T-1."""
        self.length = 0
        self._place(ids.shape[1])
        logits = self._forward(ids)
        self.length = ids.shape[1]
        return logits

    @torch.inference_mode()
    def step(self, token):
        """Logits (B, vocab) after one more token per row, token (B, 1). On a GPU this is
        the graph's output buffer, overwritten by the next step: use or copy it first."""
        self._place(1)
        if self.graph is None:
            logits = self.step_fn(token)
        else:
            self.token.copy_(token)
            self.graph.replay()
            logits = self.logits
        self.length += 1
        return logits


def decoder_error(model, ids, prompt_len, compile_step=False):
    """Largest |logit| difference between a StaticDecoder (on a GPU, replaying its CUDA
    graph) and one forward pass over the whole of ids (1, T), across a prefill of prompt_len
    tokens and one step per token after it: the fast path is worth its speed only if this
    is at rounding level."""
    with torch.inference_mode():
        full = model(ids).logits[0, prompt_len - 1:].float()
        decoder = StaticDecoder(model, 1, ids.shape[1], compile_step=compile_step)
        # clone: on a GPU every step returns the same graph output buffer
        logits = [decoder.prefill(ids[:, :prompt_len]).clone()]
        logits += [decoder.step(ids[:, t:t + 1]).clone() for t in range(prompt_len, ids.shape[1])]
    return (torch.cat(logits).float() - full).abs().max().item()


def scaled_rope_frequencies(head_dim: int, theta: float, scaling: dict):
    """RoPE frequencies (see model.rope_frequencies) stretched for a longer context than
    training saw, and a factor for cos/sin. Off unless LMConfig.rope_scaling is set.

    NTK-aware scaling raises theta so the slowest pairs stretch over factor x more positions
    while the fastest barely change. YaRN (Peng et al. 2023, sec. 3) interpolates only the
    slow pairs (fewer than beta_slow turns over the original context), keeps the fast ones
    (more than beta_fast turns), ramps linearly in between, and scales the attention logits.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    kind, factor = scaling.get("type"), float(scaling.get("factor", 1.0))
    if kind == "ntk":
        return (theta * factor ** (head_dim / (head_dim - 2))) ** -exponents, 1.0
    if kind == "yarn":
        original_len = scaling["original_max_seq_len"]
        beta_fast, beta_slow = scaling.get("beta_fast", 32), scaling.get("beta_slow", 1)
        freqs = theta ** -exponents

        def pair_index(turns):  # the pair that makes `turns` full turns over original_len
            return head_dim * math.log(original_len / (turns * 2 * math.pi)) / (
                2 * math.log(theta))

        low = max(math.floor(pair_index(beta_fast)), 0)
        high = min(math.ceil(pair_index(beta_slow)), head_dim - 1)
        ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) /
                max(high - low, 1e-3)).clamp(0, 1)  # 0: keep as is, 1: interpolate
        scaled = freqs / factor * ramp + freqs * (1 - ramp)
        return scaled, 0.1 * math.log(factor) + 1.0
    raise ValueError(f"rope_scaling type {kind!r} is not supported; use 'ntk' or 'yarn'")


def check_generate_args(config, decoder, batch_size, attention_mask, longest):
    """ValueError for a generate() call that cannot work, before any work is done."""
    if longest > config.max_seq_len:
        raise ValueError(f"prompt plus max_new_tokens is {longest} tokens but max_seq_len is "
                         f"{config.max_seq_len}; shorten the prompt or lower max_new_tokens")
    if decoder is not None and attention_mask is not None:
        raise ValueError("a StaticDecoder takes batches without padding; pass "
                         "attention_mask=None, or decode padded batches without a decoder")
    if decoder is not None and decoder.in_use:
        raise ValueError("this decoder is in use by an unfinished generate() stream; finish "
                         "or close that stream first, or make a second decoder")
    if decoder is not None and not decoder.fits(batch_size, longest):
        raise ValueError(f"this decoder holds {decoder.batch_size} rows of {decoder.capacity} "
                         f"tokens, but the call needs {batch_size} of {longest}; make a "
                         "decoder that fits")
