"""The MyLLM decoder: a Llama-style transformer, written to be read top to bottom: LMConfig
-> RMSNorm -> RoPE -> KVCache -> Attention -> FeedForward (SwiGLU) -> MoE -> Block ->
Transformer (forward, generate) -> sampling and generate's loop. It imports nothing from the
project; decode.py builds fast decoding (static caches, CUDA graphs) on it. Parameter names
follow MiniMind (2025), so its `.pth` files load with strict=True. Shapes: B batch, T new
tokens, S tokens attended to (cached + new), D model dim, H query heads, Hkv key/value
heads, hd head dim, E routed experts, k experts per token.
"""

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LMConfig:
    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 2  # GQA: every n_heads // n_kv_heads query heads share one key/value head
    vocab_size: int = 6400
    hidden_dim: Optional[int] = None  # SwiGLU width; None -> ~8/3 * dim rounded up to multiple_of
    multiple_of: int = 64
    norm_eps: float = 1e-5
    max_seq_len: int = 8192  # length of the precomputed RoPE tables: the longest usable context
    rope_theta: float = 1e6
    dropout: float = 0.0  # train_pretrain.py --dropout
    flash_attn: bool = True  # fused scaled_dot_product_attention; False: the eager path
    # Mixture of experts (MoE) in place of every FeedForward.
    use_moe: bool = False
    num_experts_per_tok: int = 2  # k
    n_routed_experts: int = 4  # E
    n_shared_experts: int = 1  # always-on experts added to the routed output
    aux_loss_alpha: float = 0.1
    seq_aux: bool = True  # load-balancing loss per sequence (True) or over all tokens (False)
    norm_topk_prob: bool = True

    def __post_init__(self):
        if self.hidden_dim is None:
            # ceil((8 * dim / 3) / multiple_of) * multiple_of, in integers: 1408 for dim 512
            self.hidden_dim = -(-8 * self.dim // (3 * self.multiple_of)) * self.multiple_of
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) "
                             f"and n_heads by n_kv_heads ({self.n_kv_heads})")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head dim {self.dim // self.n_heads} must be even for RoPE")
        if self.use_moe and not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
            raise ValueError("num_experts_per_tok must be between 1 and n_routed_experts")


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 so bf16 activations don't lose the mean."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def precompute_rope(config: LMConfig):
    """cos, sin tables (max_seq_len, head_dim // 2). Pair i of a head turns theta^(-2i/head_dim)
    radians per position (RoFormer): the first pairs tell near positions apart, the last far."""
    head_dim = config.dim // config.n_heads
    freqs = config.rope_theta ** -(torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, T, heads, hd) by cos/sin (B, T, hd/2):
    Meta's Llama (and MiniMind) layout. transformers' Llama pairs x[i] with x[i + hd/2]
    instead; the two agree once the rows of wq and wk are permuted."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, T, heads, hd/2, 2)
    even, odd = pairs.unbind(-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def repeat_kv(x, n_rep: int):
    """(B, Hkv, S, hd) -> (B, Hkv * n_rep, S, hd): each key/value head serves n_rep
    consecutive query heads (a copy; SDPA's enable_gqa does the same without one)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


class KVCache:
    """Keys and values of one layer for every token so far, in buffers for `capacity` tokens
    (doubled if more come): a new token attends to the history without recomputing it."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0  # slots to allocate first, slots filled
        self.k = self.v = None  # (B, Hkv, slots, hd), allocated by the first update

    def update(self, k, v):
        """Append k, v (B, Hkv, T, hd); return every key and value so far (B, Hkv, S, hd)."""
        n, end = self.length, self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:  # empty: slots past `length` are never read
            size = max(end, self.capacity, 2 * n)
            grown = [x.new_empty(*x.shape[:2], size, x.shape[3]) for x in (k, v)]
            if n:
                grown[0][:, :, :n], grown[1][:, :, :n] = self.k[:, :, :n], self.v[:, :, :n]
            self.k, self.v = grown
        self.k[:, :, n:end], self.v[:, :, n:end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.n_rep = config.n_heads // config.n_kv_heads
        self.head_dim = config.dim // config.n_heads
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        self.dropout, self.flash = config.dropout, config.flash_attn
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask=None, cache: Optional[KVCache] = None):
        """mask: boolean (B or 1, 1, T, S), True where a query may attend to a key; None where
        each query attends to every key up to itself (no cache, or one new token)."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, S, hd)
        dropout = self.dropout if self.training else 0.0

        # enable_gqa: no repeat_kv copy, where a fused kernel takes it (CPU; FlashAttention)
        fused_gqa = mask is None and (
            x.device.type == "cpu" or q.dtype in (torch.float16, torch.bfloat16))
        if self.flash:
            if not fused_gqa:
                k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, H, S, hd)
            # is_causal's triangle is top-left: right when T == S (no cache); one new token
            # needs no mask
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                 is_causal=mask is None and T > 1,
                                                 enable_gqa=fused_gqa)
        else:  # the same computation, spelled out
            k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, H, S, hd)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
            if mask is None:  # causal, with the new tokens at the end of the S keys
                S = k.shape[2]
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
            probs = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(q)
            out = F.dropout(probs, dropout, self.training) @ v  # (B, H, T, hd)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.resid_dropout(self.wo(out))


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: LMConfig, hidden_dim: Optional[int] = None):
        super().__init__()
        hidden_dim = hidden_dim or config.hidden_dim
        self.w1 = nn.Linear(config.dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, config.dim, bias=False)
        self.w3 = nn.Linear(config.dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class MoEGate(nn.Module):
    """Scores every token against every routed expert and picks the top k. Also returns the
    load-balancing loss (Switch Transformer, DeepSeekMoE): per expert, its share of the
    routed slots (1 when uniform) times the mean probability the router gave it, summed:
    alpha for a uniform router, more as the load concentrates."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.norm_topk_prob, self.seq_aux = config.norm_topk_prob, config.seq_aux
        self.alpha = config.aux_loss_alpha
        # a bias-free Linear(dim, n_experts), held as a bare weight to keep MiniMind's key
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.dim))

    def forward(self, x):  # x: (B, T, D)
        # router probabilities in float32: small logit gaps decide the routing
        scores = F.linear(x, self.weight).softmax(dim=-1, dtype=torch.float32)  # (B, T, E)
        weights, experts = torch.topk(scores, self.top_k, dim=-1)  # (B, T, k) each
        if self.top_k > 1 and self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)

        aux_loss = scores.new_zeros(())
        if self.training and self.alpha > 0:
            # per sequence, then averaged; or (seq_aux False) the whole batch as one sequence
            groups = x.shape[0] if self.seq_aux else 1
            probs, routed = scores.reshape(groups, -1, self.n_experts), experts.reshape(groups, -1)
            # slots routed to each expert (groups, E); unlike bincount, scatter_add_ knows its
            # output's size without reading the expert ids (a host sync on a GPU)
            load = probs.new_zeros(groups, self.n_experts).scatter_add_(
                1, routed, torch.ones_like(routed, dtype=probs.dtype))
            load = load / (probs.shape[1] * self.top_k / self.n_experts)  # uniform -> 1
            aux_loss = self.alpha * (load * probs.mean(dim=1)).sum(dim=1).mean()
        return experts, weights.type_as(x), aux_loss


class MoEFeedForward(nn.Module):
    """Routed experts (k of E per token) plus always-on shared experts. Every routed expert
    runs on every token, and each token keeps its k experts' outputs weighted by the gate (0
    for the others): E / k times the work of routing tokens to their experts only, but no
    shape depends on the routing, so nothing waits for the host, torch.compile makes one
    graph, and every expert has a gradient, as DDP requires."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_routed_experts))
        self.gate = MoEGate(config)
        # n shared SwiGLU experts summed equal one SwiGLU n times as wide (MiniMind's keys)
        self.shared_experts = (FeedForward(config, config.hidden_dim * config.n_shared_experts)
                               if config.n_shared_experts > 0 else None)

    def forward(self, x):  # x: (B, T, D)
        experts, weights, aux_loss = self.gate(x)  # (B, T, k) each
        # the gate's weight of every (token, expert) pair, 0 where the token was not routed
        combine = weights.new_zeros(*x.shape[:2], len(self.experts)).scatter(2, experts, weights)
        out = torch.zeros_like(x) if self.shared_experts is None else self.shared_experts(x)
        for e, expert in enumerate(self.experts):
            out = out + expert(x) * combine[..., e, None]  # (B, T, D)
        self.aux_loss = aux_loss
        return out


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then h + feed_forward(norm(h))."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.attention = Attention(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = MoEFeedForward(config) if config.use_moe else FeedForward(config)

    def forward(self, x, cos, sin, mask=None, cache=None):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # (B, T, vocab_size)
    aux_loss: torch.Tensor  # scalar: the MoE load-balancing loss, 0 for a dense model
    past_key_values: Optional[List[KVCache]] = None


class Transformer(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied: one matrix reads and writes tokens
        # buffers move with .to(device) but stay out of the state dict: they are derived
        for name, table in zip(("rope_cos", "rope_sin"), precompute_rope(config)):
            self.register_buffer(name, table, persistent=False)
        for module in self.modules():  # every matrix ~ normal(0, 0.02); norms start at 1
            if isinstance(module, (nn.Linear, nn.Embedding, MoEGate)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # GPT-2: what writes into the residual stream is scaled so its variance holds with depth
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    def _apply(self, fn, *args, **kwargs):
        """.to(), .half() and the like go through here. bf16 would round the RoPE tables too
        (8 bits: angles far off at long positions), so they are rebuilt in float32."""
        super()._apply(fn, *args, **kwargs)
        if self.rope_cos.dtype != torch.float32:
            device = self.rope_cos.device
            self.rope_cos, self.rope_sin = (t.to(device) for t in precompute_rope(self.config))
        return self

    def num_params(self, active: bool = False) -> int:
        """Parameters, the tied embedding once; active: what one token uses (k of E experts)."""
        c, total = self.config, sum(p.numel() for p in self.parameters())
        if active and c.use_moe:
            per_expert = sum(p.numel() for p in self.layers[0].feed_forward.experts[0].parameters())
            total -= c.n_layers * per_expert * (c.n_routed_experts - c.num_experts_per_tok)
        return total

    def _positions(self, input_ids, attention_mask, past_len):
        """Position of every new token (B or 1, T): the count of real tokens before it in its
        row, so a left-padded prompt starts at 0 just as it would alone."""
        T = input_ids.shape[1]
        if attention_mask is None:  # the last position is known on the host: no device sync
            positions = torch.arange(past_len, past_len + T, device=input_ids.device)[None]
            last = past_len + T - 1
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            last = int(positions.max()) if positions.numel() else -1
        if last >= self.config.max_seq_len:
            raise ValueError(f"position {last} asked for, but max_seq_len is "
                             f"{self.config.max_seq_len}; shorten the input or raise it")
        return positions

    def _attention_mask(self, attention_mask, T, past_len, device):
        """Boolean (B or 1, 1, T, S) mask, or None where Attention needs none. A query attends
        to real tokens at or before it, and always to itself: a padding query would otherwise
        have no key, and a softmax over an empty row is 0/0 = NaN, in the gradient too."""
        if attention_mask is None and (past_len == 0 or T == 1):
            return None
        S = past_len + T
        key = torch.arange(S, device=device)
        query = torch.arange(past_len, S, device=device)[:, None]  # (T, 1)
        allowed = key <= query  # (T, S)
        if attention_mask is not None:
            real = attention_mask[:, -S:].bool()[:, None, :]  # (B, 1, S)
            allowed = allowed & (real | (key == query))  # (B, T, S)
        return allowed.unsqueeze(-3) if allowed.dim() == 3 else allowed[None, None]

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False,
                logits_to_keep: int = 0):
        """input_ids (B, T); attention_mask (B, S): 1 for real tokens, 0 for padding, cached
        and new; past_key_values from an earlier call with use_cache; logits_to_keep > 0:
        logits of the last that many positions only."""
        if use_cache and past_key_values is None:
            past_key_values = [KVCache(input_ids.shape[1]) for _ in self.layers]
        past_len = past_key_values[0].length if past_key_values is not None else 0
        positions = self._positions(input_ids, attention_mask, past_len)
        mask = self._attention_mask(attention_mask, input_ids.shape[1], past_len, input_ids.device)
        logits, aux_loss = self.forward_at(input_ids, positions, mask, past_key_values,
                                           logits_to_keep)
        return CausalLMOutput(logits, aux_loss, past_key_values if use_cache else None)

    def forward_at(self, input_ids, positions, mask, caches=None, logits_to_keep: int = 0):
        """The network, given each token's position (B or 1, T) and the attention mask; returns
        (logits, MoE aux loss). decode.py calls it with positions held in a tensor."""
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B or 1, T, hd/2)
        h = self.dropout(self.tok_embeddings(input_ids))
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, mask, caches[i] if caches is not None else None)
        logits = self.output(self.norm(h[:, -logits_to_keep:] if logits_to_keep > 0 else h))
        if not self.config.use_moe:
            return logits, logits.new_zeros((), dtype=torch.float32)
        return logits, sum(layer.feed_forward.aux_loss for layer in self.layers)

    def generate(self, input_ids, attention_mask=None, max_new_tokens=256, temperature=1.0,
                 top_k=0, top_p=1.0, repetition_penalty=1.0, eos_token_id=None,
                 use_cache=True, stream=False, generator=None, decoder=None):
        """Continue each prompt of input_ids (B, T), left-padded where attention_mask is 0.
        temperature 0 is greedy; top_k 0 and top_p 1 disable those filters; rows that end
        (eos_token_id) repeat it until all have. Returns (B, T + new) ids, or with stream=True
        an iterator of (B,) tensors. use_cache=False recomputes everything at each step;
        decoder: a decode.StaticDecoder (static caches, a CUDA graph)."""
        B, T = input_ids.shape
        longest = max_new_tokens + (T if attention_mask is None else
                                    int(attention_mask.sum(-1).max()))
        if longest > self.config.max_seq_len:  # checked at the call, a stream's too
            raise ValueError(f"prompt plus max_new_tokens is {longest} tokens but max_seq_len "
                             f"is {self.config.max_seq_len}; shorten the prompt or lower "
                             "max_new_tokens")
        decoder = decoder if use_cache else None
        if decoder is not None:
            decoder.check_call(B, attention_mask, longest)
        caches = [KVCache(T + max_new_tokens) for _ in self.layers] if use_cache and not decoder \
            else None
        sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty, generator=generator)
        steps = decode_steps(self, input_ids, attention_mask, max_new_tokens, sampling,
                             eos_token_id, caches, decoder)
        return steps if stream else torch.cat([input_ids, *(t[:, None] for t in steps)], dim=1)


def apply_repetition_penalty(logits, ids, attention_mask, penalty: float):
    """Make every token already in the row less likely (CTRL, Keskar et al. 2019): divide a
    positive logit by the penalty, multiply a negative one by it. Padding is not counted."""
    # a pad counts as the row's last token, which is real (prompts are left-padded)
    seen = ids if attention_mask is None else torch.where(attention_mask.bool(), ids, ids[:, -1:])
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
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def decode_steps(model, ids, attention_mask, max_new_tokens, sampling, eos_token_id,
                 caches=None, decoder=None):
    """generate's loop, yielding each step's (B,) new tokens. The first step runs the prompt,
    each later one only the token just chosen (into KVCaches or the decoder's), or without
    caches the whole sequence again."""
    B, penalty = ids.shape[0], sampling.pop("repetition_penalty")
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)
    unseen = ids  # the tokens the caches have not seen yet: the prompt, then one per step
    # a decoder serves one stream at a time (checked again: another may have begun since)
    longest = ids.shape[1] + max_new_tokens
    with decoder.serving(B, attention_mask, longest) if decoder is not None else nullcontext():
        for i in range(max_new_tokens):
            with torch.inference_mode():
                if decoder is not None:
                    logits = decoder.prefill(ids) if i == 0 else decoder.step(unseen)
                else:
                    cached = caches is not None  # else the whole sequence, every step
                    logits = model(unseen if cached else ids, attention_mask, caches, cached,
                                   logits_to_keep=1).logits[:, -1]
            if penalty != 1.0:
                logits = apply_repetition_penalty(logits.float(), ids, attention_mask, penalty)
            token = sample_next_token(logits.float(), **sampling)  # (B,)
            if eos_token_id is not None:  # finished rows repeat eos
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done = done | (token == eos_token_id)
            unseen = token[:, None]
            ids = torch.cat([ids, unseen], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, torch.ones_like(unseen)], dim=1)
            yield token
            if eos_token_id is not None and bool(done.all()):
                return

