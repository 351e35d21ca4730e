"""The MyLLM decoder: a Llama-style transformer, written to be read top to bottom.

RMSNorm -> RoPE -> repeat_kv -> KVCache / StaticKVCache -> Attention -> FeedForward (SwiGLU)
-> MoEGate -> MoEFeedForward -> Block -> Transformer -> GraphedDecoder (fast decoding).

Parameter names and shapes follow MiniMind (2025), so its `.pth` files load with strict=True.
Shapes in comments: B batch, T new tokens, S tokens attended to (cached + new), D model dim,
H query heads, Hkv key/value heads, hd head dim, E routed experts, k experts per token.
"""

import math
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

# PyTorch 2.5 added enable_gqa to scaled_dot_product_attention (see Attention.forward)
SDPA_HAS_GQA = tuple(int(v) for v in torch.__version__.split(".")[:2]) >= (2, 5)


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
    # Context extension at inference, off by default. {"type": "ntk", "factor": 4.0} or
    # {"type": "yarn", "factor": 4.0, "original_max_seq_len": 2048}; see rope_frequencies().
    rope_scaling: Optional[dict] = None
    dropout: float = 0.0
    flash_attn: bool = True  # fused scaled_dot_product_attention; False -> the eager path
    # Mixture of experts (MoE) in place of every FeedForward.
    use_moe: bool = False
    num_experts_per_tok: int = 2  # k
    n_routed_experts: int = 4  # E
    n_shared_experts: int = 1  # always-on experts added to the routed output
    scoring_func: str = "softmax"
    aux_loss_alpha: float = 0.1
    seq_aux: bool = True  # load-balancing loss per sequence (True) or over all tokens (False)
    norm_topk_prob: bool = True

    def __post_init__(self):
        if self.hidden_dim is None:
            # ceil((8 * dim / 3) / multiple_of) * multiple_of, in integers: 1408 for dim 512
            self.hidden_dim = -(-8 * self.dim // (3 * self.multiple_of)) * self.multiple_of
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) and n_heads "
                f"by n_kv_heads ({self.n_kv_heads})")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head dim {self.dim // self.n_heads} must be even for RoPE")
        if self.use_moe and self.scoring_func != "softmax":
            raise ValueError(f"scoring_func {self.scoring_func!r} is not supported; use softmax")
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


def rope_frequencies(head_dim: int, theta: float, scaling: Optional[dict]):
    """Rotation speed of each pair of channels, and a factor for cos/sin (1 unless YaRN).

    Pair i turns by pos * theta^(-2i/head_dim) radians per position (RoFormer, Llama).
    NTK-aware scaling raises theta so the slowest pairs stretch over factor x more positions
    while the fastest barely change. YaRN (Peng et al. 2023, sec. 3) interpolates only the
    slow pairs (fewer than beta_slow turns over the original context), keeps the fast ones
    (more than beta_fast turns), ramps linearly in between, and scales the attention logits.
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    if not scaling:
        return theta ** -exponents, 1.0
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


def precompute_rope(config: LMConfig):
    """cos and sin of every (position, pair) angle: two (max_seq_len, head_dim // 2) tables."""
    head_dim = config.dim // config.n_heads
    freqs, attn_factor = rope_frequencies(head_dim, config.rope_theta, config.rope_scaling)
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64), freqs)
    return (angles.cos() * attn_factor).float(), (angles.sin() * attn_factor).float()


def apply_rope(x, cos, sin):
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x (B, T, heads, hd) by cos/sin (B, T, hd/2).

    This is Meta's reference Llama (and MiniMind) layout. transformers' Llama pairs x[i] with
    x[i + hd/2] instead; the two agree once the rows of wq and wk are permuted.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, T, heads, hd/2, 2)
    even, odd = pairs.unbind(-1)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # broadcast over heads
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def repeat_kv(x, n_rep: int):
    """(B, Hkv, S, hd) -> (B, Hkv * n_rep, S, hd): each key/value head serves n_rep query heads."""
    if n_rep == 1:
        return x
    B, n_kv_heads, S, head_dim = x.shape
    return x[:, :, None].expand(B, n_kv_heads, n_rep, S, head_dim).reshape(
        B, n_kv_heads * n_rep, S, head_dim)


class KVCache:
    """Keys and values of one layer for every token seen so far, in preallocated buffers.

    `update` writes the new tokens' keys/values after the old ones and returns all of them.
    Buffers are allocated once for `capacity` tokens (generate() knows the final length);
    if more arrive, they grow by doubling, so appending stays cheap either way.
    """

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self.length = 0  # slots filled
        self.k = self.v = None  # (B, Hkv, capacity, hd)

    def update(self, k, v):
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            size = max(end, self.capacity, 2 * self.length)
            new_k, new_v = k.new_empty(*k.shape[:2], size, k.shape[3]), v.new_empty(
                *v.shape[:2], size, v.shape[3])
            if self.k is not None:
                new_k[:, :, :self.length] = self.k[:, :, :self.length]
                new_v[:, :, :self.length] = self.v[:, :, :self.length]
            self.k, self.v = new_k, new_v
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class StaticKVCache:
    """Keys and values of one layer in buffers of a fixed size, written at a position held
    in a tensor (`pos`, shared by all layers and advanced by the caller).

    Nothing here depends on a Python number that changes from step to step: every decoding
    step runs the same kernels on the same memory, which is what a CUDA graph needs (see
    GraphedDecoder). Attention reads all `capacity` slots; a mask hides the ones not written.
    """

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
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.flash = config.flash_attn

    def forward(self, x, cos, sin, mask=None, cache: Optional[KVCache] = None):
        """mask: a boolean (B or 1, 1, T, S) tensor, True where a query may attend to a key;
        None where every query attends to every key up to itself: causal attention without
        cached tokens, or one new token (decoding) attending to all of them."""
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, S, hd)
        S = k.shape[2]
        dropout = self.dropout if self.training else 0.0

        # enable_gqa: the kernel lets each key/value head serve its n_rep query heads in
        # place of repeat_kv's copies (when decoding, a copy of the whole cache per layer and
        # token). Only where a fused kernel takes it: the CPU one, or FlashAttention on a GPU,
        # which needs half precision and no mask; elsewhere SDPA would fall back to its slow
        # math path.
        fused_gqa = SDPA_HAS_GQA and mask is None and (
            x.device.type == "cpu" or q.dtype in (torch.float16, torch.bfloat16))
        if self.flash and fused_gqa:
            # is_causal puts the triangle top-left, right when T == S (no cache); a single
            # new token attends to every key and needs no mask.
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout,
                                                 is_causal=T > 1, enable_gqa=True)
        elif self.flash:
            k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, H, S, hd)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None and T > 1)
        else:  # the same computation, spelled out
            k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, H, S, hd)
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, H, T, S)
            if mask is None:  # causal, with the new tokens at the end of the S keys
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
    """Scores every token against every routed expert and picks the top k.

    Also returns the load-balancing loss (Switch Transformer / DeepSeekMoE): for each expert,
    the fraction of routed slots it received, scaled so a uniform load is 1, times the mean
    probability the router gave it, summed over experts. It is 1 (times alpha) for a uniform
    router and grows as the load concentrates.
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.norm_topk_prob, self.seq_aux = config.norm_topk_prob, config.seq_aux
        self.alpha = config.aux_loss_alpha
        # a bias-free Linear(dim, n_experts), held as a bare weight to keep MiniMind's key
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.dim))

    def forward(self, x):  # x: (B, T, D)
        B, T, _ = x.shape
        # router probabilities in float32: small logit gaps decide the routing
        scores = F.linear(x, self.weight).softmax(dim=-1, dtype=torch.float32)  # (B, T, E)
        weights, experts = torch.topk(scores, self.top_k, dim=-1)  # (B, T, k) each
        if self.top_k > 1 and self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)

        aux_loss = scores.new_zeros(())
        if self.training and self.alpha > 0:
            ones = torch.ones_like(experts.flatten(1), dtype=scores.dtype)
            if self.seq_aux:  # per sequence, then averaged over the batch
                load = scores.new_zeros(B, self.n_experts).scatter_add_(1, experts.flatten(1), ones)
                load = load / (T * self.top_k / self.n_experts)  # (B, E), uniform -> 1
                aux_loss = (load * scores.mean(dim=1)).sum(dim=1).mean()
            else:  # over all tokens of the batch
                load = torch.bincount(experts.flatten(), minlength=self.n_experts).to(scores.dtype)
                load = load / (B * T * self.top_k / self.n_experts)  # (E,), uniform -> 1
                aux_loss = (load * scores.mean(dim=(0, 1))).sum()
            aux_loss = aux_loss * self.alpha
        return experts, weights.type_as(x), aux_loss


class MoEFeedForward(nn.Module):
    """Routed experts (k of E per token) plus always-on shared experts.

    Tokens are dispatched by sorting their (token, expert) slots by expert, so each expert
    runs once on one contiguous batch of its tokens; the loop is over experts, never tokens.
    Training and inference take the same path.
    """

    def __init__(self, config: LMConfig):
        super().__init__()
        self.experts = nn.ModuleList(FeedForward(config) for _ in range(config.n_routed_experts))
        self.gate = MoEGate(config)
        # n shared SwiGLU experts summed equal one SwiGLU n times as wide (MiniMind's keys)
        self.shared_experts = (FeedForward(config, config.hidden_dim * config.n_shared_experts)
                               if config.n_shared_experts > 0 else None)

    def forward(self, x):  # x: (B, T, D)
        B, T, D = x.shape
        experts, weights, aux_loss = self.gate(x)  # (B, T, k) each
        tokens = x.reshape(-1, D)  # (N, D), N = B * T
        slot_expert = experts.flatten()  # (N * k,): slot s belongs to token s // k
        order = torch.argsort(slot_expert, stable=True)
        slot_token = order // experts.shape[-1]
        slot_weight = weights.flatten()[order, None]
        # the one host sync of the layer: slicing needs the counts as Python ints
        counts = torch.bincount(slot_expert, minlength=len(self.experts)).tolist()

        routed = torch.zeros_like(tokens)
        start = 0
        for expert, count in zip(self.experts, counts):
            # an expert with no tokens still runs, on an empty batch (next to free): under
            # DDP every parameter must take part in every backward pass, or the sync hangs
            idx = slot_token[start:start + count]
            routed.index_add_(0, idx, expert(tokens[idx]) * slot_weight[start:start + count])
            start += count
        out = routed.view(B, T, D)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
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
    past_key_values: Optional[List[KVCache]] = field(default=None)


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
        cos, sin = precompute_rope(config)
        # buffers move with .to(device) but stay out of the state dict: they are derived
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2 / nanoGPT: the projections that write into the residual stream are scaled
        # down so that the stream's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    def _apply(self, fn, *args, **kwargs):
        """.to(), .half(), .cuda() and the like go through here. A cast to bf16 or fp16 would
        round the RoPE tables too (bf16 keeps 8 bits: angles far off at long positions), so
        they are rebuilt in float32 on the new device; apply_rope computes in float32."""
        super()._apply(fn, *args, **kwargs)
        self.clear_decode_cache()  # a recorded CUDA graph reads the old memory
        if self.rope_cos.dtype != torch.float32:
            cos, sin = precompute_rope(self.config)
            self.rope_cos, self.rope_sin = cos.to(self.rope_cos.device), sin.to(
                self.rope_sin.device)
        return self

    @staticmethod
    def _init_weights(module):
        """normal(0, 0.02) for every matrix; norms start at 1 (their default)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, MoEGate):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, active: bool = False) -> int:
        """Parameters counted once (the tied embedding too). active=True counts what one
        token uses: k of the E routed experts."""
        total = sum(p.numel() for p in self.parameters())
        if active and self.config.use_moe:
            c = self.config
            per_expert = sum(p.numel() for p in self.layers[0].feed_forward.experts[0].parameters())
            total -= c.n_layers * per_expert * (c.n_routed_experts - c.num_experts_per_tok)
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6N for the matmuls (forward 2N, backward 4N) plus
        12 * layers * heads * head_dim * seq_len for attention scores and values
        (PaLM, appendix B; nanoGPT's estimate_mfu). N counts active parameters."""
        c = self.config
        return 6 * self.num_params(active=True) + 12 * c.n_layers * c.dim * seq_len

    def _positions(self, input_ids, attention_mask, past_len):
        """Position of every new token: the count of real tokens before it in its row, so a
        left-padded prompt starts at 0 just as it would alone."""
        T = input_ids.shape[1]
        if attention_mask is None:
            return torch.arange(past_len, past_len + T, device=input_ids.device)[None]
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]

    def _attention_mask(self, attention_mask, T, past_len, device):
        """Boolean (B or 1, 1, T, S) mask, or None where Attention needs none (no padding, and
        no cached tokens or a single new token).

        A query attends to keys at or before it (causal) that are real tokens. A padding
        query would then have no key at all, and softmax over an empty row is 0/0 = NaN,
        in the forward pass and in the gradient. So every query may always attend to
        itself: padding rows get a finite, unused output and real rows are unchanged.
        """
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
        """input_ids (B, T); attention_mask (B, S) with 1 for real tokens and 0 for padding,
        covering cached and new tokens; past_key_values from an earlier call with use_cache.
        logits_to_keep > 0: logits of the last that many positions only (generate needs one;
        the output layer over a 512-token prompt is ~1/8 of the prefill's work)."""
        B, T = input_ids.shape
        if use_cache and past_key_values is None:
            past_key_values = [KVCache() for _ in self.layers]

        if past_key_values is not None and isinstance(past_key_values[0], StaticKVCache):
            # positions and mask from the position tensor, with no host sync (GraphedDecoder
            # keeps its position within the capacity, itself within max_seq_len)
            cache = past_key_values[0]
            positions = (cache.pos + torch.arange(T, device=input_ids.device))[None]  # (1, T)
            slots = torch.arange(cache.capacity, device=input_ids.device)
            mask = (slots <= positions[0, :, None])[None, None]  # (1, 1, T, capacity)
        else:
            past_len = past_key_values[0].length if past_key_values is not None else 0
            positions = self._positions(input_ids, attention_mask, past_len)  # (B or 1, T)
            if attention_mask is None:  # known on the host: no wait for the device
                last = past_len + T - 1
            else:
                last = int(positions.max()) if positions.numel() else -1
            if last >= self.config.max_seq_len:
                raise ValueError(
                    f"position {last} asked for, but max_seq_len is "
                    f"{self.config.max_seq_len}; shorten the input or raise max_seq_len")
            mask = self._attention_mask(attention_mask, T, past_len, input_ids.device)
        cos, sin = self.rope_cos[positions], self.rope_sin[positions]  # (B or 1, T, hd/2)

        h = self.dropout(self.tok_embeddings(input_ids))
        for i, layer in enumerate(self.layers):
            cache = past_key_values[i] if past_key_values is not None else None
            h = layer(h, cos, sin, mask, cache)
        if logits_to_keep > 0:
            h = h[:, -logits_to_keep:]
        logits = self.output(self.norm(h))

        aux_loss = logits.new_zeros((), dtype=torch.float32)
        if self.config.use_moe:
            aux_loss = sum(layer.feed_forward.aux_loss for layer in self.layers)
        return CausalLMOutput(logits, aux_loss, past_key_values if use_cache else None)

    def _static_decoder(self, batch_size: int, length: int,
                        compile_step: bool = False) -> "GraphedDecoder":
        """A GraphedDecoder for batch_size rows of up to `length` tokens, kept for the next
        call while the batch size, the capacity (length rounded up to 256, so nearby prompt
        lengths share one), the mode, the autocast dtype and the parameters' memory stay the
        same. A decoder still in use by an unfinished stream is not shared: the caller gets a
        fresh one, kept by nobody."""
        capacity = min(256 * math.ceil(length / 256), self.config.max_seq_len)
        device = self.tok_embeddings.weight.device
        # MoE routing reads its expert counts on the host, which a CUDA graph cannot record
        record = device.type == "cuda" and not self.config.use_moe
        autocast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(
            device.type)
        key = (batch_size, capacity, record, compile_step, self.training, autocast,
               self.tok_embeddings.weight.dtype,
               tuple(p.data_ptr() for p in self.parameters()))
        cached = getattr(self, "_decoder_cache", None)
        if cached is not None and cached[0] == key and not cached[1].in_use:
            return cached[1]
        if cached is not None and cached[1].in_use:
            return GraphedDecoder(self, batch_size, capacity, record, compile_step)
        self.clear_decode_cache()  # free the old graph's memory before recording anew
        self._decoder_cache = (key, GraphedDecoder(self, batch_size, capacity, record,
                                                   compile_step))
        return self._decoder_cache[1]

    def clear_decode_cache(self):
        """Drop the kept GraphedDecoder and the GPU memory its caches and graph hold."""
        self._decoder_cache = None

    def __getstate__(self):
        # copy.deepcopy and pickle: a recorded CUDA graph can be neither; it is rebuilt
        state = self.__dict__.copy()
        state["_decoder_cache"] = None
        return state

    def generate(self, input_ids, attention_mask=None, max_new_tokens=256, temperature=1.0,
                 top_k=0, top_p=1.0, repetition_penalty=1.0, eos_token_id=None,
                 use_cache=True, stream=False, generator=None, static_cache=None,
                 compile_decode=False):
        """Continue each prompt of input_ids (B, T), left-padded where attention_mask is 0.

        temperature 0 is greedy; top_k 0 and top_p 1 disable those filters. Rows that
        produce eos_token_id keep emitting it until every row is done. Returns (B, T + new)
        ids, or with stream=True an iterator of (B,) tensors, one per step.
        static_cache: decode with StaticKVCache and, on a GPU, a CUDA graph (GraphedDecoder);
        None: where it pays off, a dense model on CUDA. Batches with padding never use it.
        compile_decode: torch.compile its step as well (see GraphedDecoder).
        """
        steps = self._generate_steps(input_ids, attention_mask, max_new_tokens, temperature,
                                     top_k, top_p, repetition_penalty, eos_token_id,
                                     use_cache, generator, static_cache, compile_decode)
        if stream:
            return steps
        new = list(steps)
        return torch.cat([input_ids] + [t[:, None] for t in new], dim=1)

    def _generate_steps(self, ids, attention_mask, max_new_tokens, temperature, top_k, top_p,
                        repetition_penalty, eos_token_id, use_cache, generator,
                        static_cache, compile_decode) -> Iterator:
        B, T = ids.shape
        # without padding, attention_mask stays None: no mask to build or extend per step
        prompt_len = T if attention_mask is None else int(attention_mask.sum(-1).max())
        longest = prompt_len + max_new_tokens
        if longest > self.config.max_seq_len:
            raise ValueError(
                f"prompt plus max_new_tokens is {longest} tokens but max_seq_len is "
                f"{self.config.max_seq_len}; shorten the prompt or lower max_new_tokens")
        if static_cache is None:  # a CUDA graph pays off on a GPU; MoE routing syncs the host
            static_cache = ids.device.type == "cuda" and not self.config.use_moe
        decoder = None
        if use_cache and static_cache and attention_mask is None:
            decoder = self._static_decoder(B, T + max_new_tokens, compile_decode)
            decoder.in_use = True  # until this generator ends (or is closed / collected)
        try:
            yield from self._decode_loop(ids, attention_mask, max_new_tokens, temperature,
                                         top_k, top_p, repetition_penalty, eos_token_id,
                                         use_cache, generator, decoder)
        finally:
            if decoder is not None:
                decoder.in_use = False

    def _decode_loop(self, ids, attention_mask, max_new_tokens, temperature, top_k, top_p,
                     repetition_penalty, eos_token_id, use_cache, generator, decoder):
        B, T = ids.shape
        caches = None  # the growing caches, when the static decoder is not used
        if use_cache and decoder is None:
            caches = [KVCache(T + max_new_tokens) for _ in self.layers]
        done = torch.zeros(B, dtype=torch.bool, device=ids.device)
        step_input = ids
        for i in range(max_new_tokens):
            if decoder is not None:
                logits = decoder.prefill(ids) if i == 0 else decoder.step(step_input)
            else:
                with torch.inference_mode():
                    logits = self(step_input if use_cache else ids, attention_mask,
                                  past_key_values=caches, use_cache=use_cache,
                                  logits_to_keep=1).logits[:, -1]
            logits = logits.float()  # (B, vocab)
            if repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, ids, attention_mask, repetition_penalty)
            token = sample_next_token(logits, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done = done | (token == eos_token_id)
            ids = torch.cat([ids, token[:, None]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], 1)
            step_input = token[:, None]
            yield token
            if eos_token_id is not None and bool(done.all()):
                return


class GraphedDecoder:
    """Decoding with static caches, each new token's step replayed from a CUDA graph.

    At batch 1 a decoding step of a small model is a few hundred tiny kernels, and on a GPU
    launching them one by one from Python takes far longer than running them. A CUDA graph
    records the kernels of one step once; `replay` then launches all of them in one call.
    Replaying reuses the recorded memory, so everything a step reads must stay in place: the
    input token buffer, the position tensor and the StaticKVCache buffers.

    An eager step is still ~50 small kernels per layer, each a few microseconds even inside
    a graph; compile_step=True has torch.compile fuse them first (tens of seconds, once per
    batch size and capacity), so each step launches a fraction as many.
    With record=False (on a CPU, or for MoE) the same steps run eagerly: the tests check
    them there. Parameters are read in place, so the graph sees weights updated in place by
    training; if they move (.to(), a new device) Transformer._static_decoder records anew.
    Everything runs under inference_mode: no autograd state is recorded or kept.
    """

    def __init__(self, model, batch_size: int, capacity: int, record: bool,
                 compile_step: bool = False):
        device = model.tok_embeddings.weight.device
        self.model, self.capacity = model, capacity
        self.step_model = torch.compile(model, dynamic=False) if compile_step else model
        self.length = 0  # slots filled; self.pos is set from it before every forward
        self.pos = torch.zeros((), dtype=torch.long, device=device)
        self.caches = [StaticKVCache(capacity, self.pos) for _ in model.layers]
        self.token = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
        self.in_use = False
        self.graph = None
        if record:
            self._record()

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
                self._forward(self.token, self.step_model)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            # refilled by every replay: read it before the next step
            self.logits = self._forward(self.token, self.step_model)

    def _forward(self, ids, model=None):
        model = self.model if model is None else model
        return model(ids, past_key_values=self.caches, logits_to_keep=1).logits[:, -1]

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
            logits = self._forward(token, self.step_model)
        else:
            self.token.copy_(token)
            self.graph.replay()
            logits = self.logits
        self.length += 1
        return logits


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
