"""Decoding beyond model.generate's plain loop: streaming text as it is generated, and fast
decoding with static caches and CUDA graphs, kept apart from the network in model.py.

    model.generate(ids, max_new_tokens=64, temperature=0)             # the plain KVCache
    decoder = StaticDecoder(model, batch_size=1, capacity=512)        # made once, kept
    model.generate(ids, max_new_tokens=64, temperature=0, decoder=decoder)
    complete(model, tok, "The for statement", sys.stdout)             # text, as it comes

This file builds on model.py and tokenizer.py; model.py imports nothing from here.
"""

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tokenizer import BOS_ID, EOS_ID


class TextStream:
    """Turns token ids, pushed one at a time, into text that is safe to print at once.

    Byte-level BPE splits most Chinese characters across tokens, and the bytes of half a
    character decode to U+FFFD. So tokens wait in `pending` until their text no longer ends
    in U+FFFD. Decoding byte-level tokens joins their bytes, so once a piece ends on a whole
    character, what follows decodes on its own: the pieces add up to decode(all ids).
    """

    def __init__(self, tok):
        self.tok = tok
        self.pending = []

    def push(self, token_id):
        """The new printable text, or "" while a character is incomplete."""
        self.pending.append(token_id)
        text = self.tok.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self):
        """What still waits at the end (bytes that never became a whole character)."""
        text, self.pending = self.tok.decode(self.pending), []
        return text


def prompt_ids(tok, prompt, context):
    """<s> prompt, as a new document starts in the training data; checked against context."""
    ids = [BOS_ID] + tok.encode(prompt, add_special_tokens=False).ids
    if len(ids) >= context:
        raise ValueError(f"the prompt is {len(ids)} tokens but the model's context is {context} "
                         "(max_seq_len); shorten the prompt")
    return ids


@dataclass
class Completion:
    text: str
    n_tokens: int
    first_token_s: float  # time to first token: the prompt's forward pass and one step
    total_s: float


def complete(model, tok, prompt, out, max_new_tokens=256, temperature=0.85, top_k=0,
             top_p=0.85, repetition_penalty=1.0, use_cache=True, generator=None, decoder=None):
    """Write the model's continuation of prompt to out as it is generated. decoder: a
    decode.StaticDecoder to use where the prompt and its continuation fit it."""
    context = model.config.max_seq_len
    ids = prompt_ids(tok, prompt, context)
    device = model.tok_embeddings.weight.device
    max_new_tokens = min(max_new_tokens, context - len(ids))
    steps = model.generate(
        torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
        eos_token_id=EOS_ID, use_cache=use_cache, stream=True, generator=generator,
        decoder=decoder if use_cache and decoder and decoder.fits(1, len(ids) + max_new_tokens)
        else None)
    stream, pieces = TextStream(tok), []
    n_tokens, first_token_s = 0, 0.0
    start = time.perf_counter()
    for step in steps:
        token = int(step[0])  # waits for the device
        n_tokens += 1
        if n_tokens == 1:
            first_token_s = time.perf_counter() - start
        if token == EOS_ID:
            break
        pieces.append(stream.push(token))
        out.write(pieces[-1])
        out.flush()
    pieces.append(stream.flush())
    out.write(pieces[-1])
    return Completion("".join(pieces), n_tokens, first_token_s, time.perf_counter() - start)


# The fast path. At batch 1 a decoding step of a small model is a few hundred tiny kernels,
# and on a GPU launching them one by one from Python takes far longer than running them.
# A CUDA graph records the kernels of one step once; replaying it launches all of them in
# one call. A replay reuses the recorded memory, so nothing a step reads may move or change
# shape: the caches have a fixed size, and the position of the new token is a tensor.


def fast_decoding(model):
    """Where a StaticDecoder's CUDA graph pays off: on CUDA (MoE too: while a graph records,
    every expert runs on every token, so that no shape depends on the routing)."""
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
            # MLA passes its latents as k and RoPE keys as v: widths of their own
            self.k, self.v = (x.new_zeros(*x.shape[:2], self.capacity, x.shape[3]) for x in (k, v))
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

    def check_call(self, batch_size, attention_mask, longest):
        """ValueError for a generate() call this decoder cannot serve (model.generate asks)."""
        if attention_mask is not None:
            raise ValueError("a StaticDecoder takes batches without padding; pass "
                             "attention_mask=None, or decode padded batches without a decoder")
        if self.in_use:
            raise ValueError("this decoder is in use by an unfinished generate() stream; "
                             "finish or close that stream first, or make a second decoder")
        if not self.fits(batch_size, longest):
            raise ValueError(f"this decoder holds {self.batch_size} rows of {self.capacity} "
                             f"tokens, but the call needs {batch_size} of {longest}; make a "
                             "decoder that fits")

    @contextmanager
    def serving(self, batch_size, attention_mask, longest):
        """Held by one generate() stream from its first step to its end, or its close."""
        self.check_call(batch_size, attention_mask, longest)
        self.in_use = True
        try:
            yield self
        finally:
            self.in_use = False

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
