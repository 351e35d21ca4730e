"""The MyLLM decoder, read top to bottom: LMConfig -> RMSNorm -> RoPE -> KVCache -> attention
(GQA, or DeepSeek's latent attention) -> FeedForward (SwiGLU) -> MoE (MiniMind's, or
DeepSeek's fine-grained one) -> Block -> Transformer (forward, generate) -> sampling. It
imports nothing from the project; decode.py builds fast decoding on it. Names follow
MiniMind (2025), so its `.pth` files load strictly. Shapes: B batch, T new tokens, S tokens
attended to (cached + new), D model dim, H query heads, Hkv key/value heads, hd head dim,
r latent width (MLA), E routed experts, k experts per token, N tokens."""

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
    head_dim: Optional[int] = None  # None -> dim // n_heads
    qk_norm: bool = False  # RMSNorm on each head's queries and keys before RoPE (Qwen3)
    # Multi-head latent attention (DeepSeek-V2) with attention="mla"; None -> from head_dim
    attention: str = "gqa"  # "gqa" or "mla"
    q_lora_rank: int = 0  # 0: a plain query projection; else through a bottleneck this wide
    kv_lora_rank: Optional[int] = None  # r, the latent cached per token; None -> 2 * hd
    qk_nope_head_dim: Optional[int] = None  # a head's query/key channels without RoPE: hd / 2
    qk_rope_head_dim: Optional[int] = None  # with RoPE, the key part shared by heads: hd / 2
    v_head_dim: Optional[int] = None  # None -> hd
    # Mixture of experts (MoE) in place of the FeedForward of every layer from first_k_dense
    use_moe: bool = False
    num_experts_per_tok: int = 2  # k
    n_routed_experts: int = 4  # E
    n_shared_experts: int = 1  # always-on experts added to the routed output
    moe_inter_dim: Optional[int] = None  # one expert's SwiGLU width; None -> hidden_dim
    first_k_dense: int = 0  # the first layers keep a dense FeedForward (DeepSeek-V3: 3 of 61)
    score_func: str = "softmax"  # the router's: softmax (MiniMind, Qwen3), sigmoid (DeepSeek)
    routed_scaling: float = 1.0  # the routed experts' output multiplier (DeepSeek-V3)
    bias_update_speed: float = 0.0  # sigmoid: the balancing bias's step per step (V3: 0.001)
    aux_loss_alpha: float = 0.1
    seq_aux: bool = True  # load-balancing loss per sequence (True) or over all tokens (False)
    norm_topk_prob: bool = True  # the k weights of a token scaled to sum to 1 (k = 1 too)

    def __post_init__(self):
        if self.hidden_dim is None:
            # ceil((8 * dim / 3) / multiple_of) * multiple_of, in integers: 1408 for dim 512
            self.hidden_dim = -(-8 * self.dim // (3 * self.multiple_of)) * self.multiple_of
        if (self.head_dim is None and self.dim % self.n_heads) or self.n_heads % self.n_kv_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) "
                             f"and n_heads by n_kv_heads ({self.n_kv_heads})")
        self.head_dim = hd = self.head_dim or self.dim // self.n_heads
        self.moe_inter_dim = self.moe_inter_dim or self.hidden_dim
        if self.attention == "mla":  # every head its own keys and values, from the latent
            self.kv_lora_rank = self.kv_lora_rank or 2 * hd
            self.qk_nope_head_dim = self.qk_nope_head_dim or hd // 2
            self.qk_rope_head_dim = self.qk_rope_head_dim or hd // 2
            self.n_kv_heads, self.v_head_dim = self.n_heads, self.v_head_dim or hd
        check_config(self)

    @property
    def rope_dim(self) -> int:  # the channels RoPE turns: a head's, or MLA's rotated key part
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 so bf16 activations don't lose the mean."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) \
            * self.weight


def precompute_rope(config: LMConfig):
    """cos, sin tables (max_seq_len, d / 2). Pair i of d channels turns theta^(-2i/d) radians
    per position (RoFormer): the first pairs tell near positions apart, the last far."""
    d = config.rope_dim
    freqs = config.rope_theta ** -(torch.arange(0, d, 2, dtype=torch.float64) / d)
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
    """Keys and values of one layer for every token so far (MLA: latents and RoPE keys), in
    buffers for `capacity` tokens (doubled if more come): no step recomputes the history."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0  # slots to allocate first, slots filled
        self.k = self.v = None  # (B, Hkv, slots, hd), allocated by the first update

    def update(self, k, v):  # append k, v (B, Hkv, T, hd); return all so far (B, Hkv, S, hd)
        n, end = self.length, self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:  # empty: slots past `length` are never read
            size = max(end, self.capacity, 2 * n)
            grown = [x.new_empty(*x.shape[:2], size, x.shape[3]) for x in (k, v)]
            if n:
                grown[0][:, :, :n], grown[1][:, :, :n] = self.k[:, :, :n], self.v[:, :, :n]
            self.k, self.v = grown
        self.k[:, :, n:end], self.v[:, :, n:end], self.length = k, v, end
        return self.k[:, :, :end], self.v[:, :, :end]


def attend(q, k, v, mask, scale: float, dropout: float = 0.0, fused: bool = True):
    """softmax(q k^T * scale) v over the keys the mask allows: q (B, H, T, e), k (B, Hkv, S,
    e), v (B, Hkv, S, ev) -> (B, H, T, ev). mask: boolean (B or 1, 1, T, S), True where a query
    may attend to a key; None where each query attends to every key up to itself."""
    T, n_rep = q.shape[2], q.shape[1] // k.shape[1]
    if fused:
        # enable_gqa: no repeat_kv copy, where a fused kernel takes it (CPU; FlashAttention
        # in float16 and bfloat16)
        gqa = mask is None and (q.device.type == "cpu" or q.dtype.itemsize == 2)
        if not gqa:
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, e / ev)
        # is_causal's triangle is top-left: right when T == S (no cache); 1 new token needs none
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              is_causal=mask is None and T > 1, scale=scale,
                                              enable_gqa=gqa)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # the same computation, spelled out
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    if mask is None:  # causal, with the new tokens at the end of the S keys
        S = k.shape[2]
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    probs = F.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1, dtype=torch.float32)
    return F.dropout(probs.type_as(q), dropout, dropout > 0) @ v  # (B, H, T, ev)


class Attention(nn.Module):
    """Grouped-query attention (GQA, Ainslie et al. 2023). qk_norm (Qwen3): queries and keys
    RMS-normalised per head before RoPE, so no score grows without bound with the weights."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
        self.head_dim = config.head_dim
        self.wq = nn.Linear(config.dim, config.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, config.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(config.n_heads * self.head_dim, config.dim, bias=False)
        if config.qk_norm:  # one gain per channel, shared by the heads
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps)
        self.qk_norm, self.dropout, self.flash = config.qk_norm, config.dropout, config.flash_attn
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask=None, cache: Optional[KVCache] = None):
        B, T, _ = x.shape  # mask: as attend() takes it (Transformer._attention_mask)
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.qk_norm:  # in their own dtype: under autocast the fp32 gains would promote them
            q, k = self.q_norm(q).type_as(v), self.k_norm(k).type_as(v)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, S, hd)
        out = attend(q, k, v, mask, self.head_dim**-0.5, self.dropout * self.training, self.flash)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.resid_dropout(self.wo(out))


class LatentAttention(nn.Module):
    """Multi-head latent attention (MLA; DeepSeek-V2, 2024). wkv_b expands each token's keys
    and values from one latent (r = kv_lora_rank wide), and its RoPE key part is shared by
    the heads: a cache holds r + qk_rope_head_dim numbers per token and layer, GQA 2 * Hkv *
    hd. RoPE stays out of the latent: its position-dependent turn could not fold into wkv_b."""

    def __init__(self, config: LMConfig):
        super().__init__()
        c = config
        self.n_heads, self.q_lora_rank, self.rank = c.n_heads, c.q_lora_rank, c.kv_lora_rank
        self.nope_dim, self.rope_dim = c.qk_nope_head_dim, c.qk_rope_head_dim
        q_width = c.n_heads * (self.nope_dim + self.rope_dim)
        if c.q_lora_rank:  # queries through a bottleneck: fewer weights, the same cache
            self.wq_a = nn.Linear(c.dim, c.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(c.q_lora_rank, 1e-6)  # DeepSeek's name and eps; not QK-norm
            self.wq_b = nn.Linear(c.q_lora_rank, q_width, bias=False)
        else:
            self.wq = nn.Linear(c.dim, q_width, bias=False)
        self.wkv_a = nn.Linear(c.dim, self.rank + self.rope_dim, bias=False)  # latent, RoPE k
        self.kv_norm = RMSNorm(self.rank, 1e-6)
        self.wkv_b = nn.Linear(self.rank, c.n_heads * (self.nope_dim + c.v_head_dim), bias=False)
        self.wo = nn.Linear(c.n_heads * c.v_head_dim, c.dim, bias=False)
        self.v_dim, self.dropout, self.flash = c.v_head_dim, c.dropout, c.flash_attn
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(self, x, cos, sin, mask=None, cache: Optional[KVCache] = None):
        B, T, _ = x.shape
        H, scale = self.n_heads, (self.nope_dim + self.rope_dim) ** -0.5
        q = self.wq_b(self.q_norm(self.wq_a(x))) if self.q_lora_rank else self.wq(x)
        q_nope, q_rope = q.view(B, T, H, -1).split([self.nope_dim, self.rope_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin)  # (B, T, H, rope)
        latent, k_rope = self.wkv_a(x).split([self.rank, self.rope_dim], dim=-1)
        latent = self.kv_norm(latent).type_as(k_rope)[:, None]  # (B, 1, T, r), cached as is
        k_rope = apply_rope(k_rope[:, :, None], cos, sin).transpose(1, 2)  # (B, 1, T, rope)
        if cache is not None:  # a KVCache holds the latents as k, the RoPE keys as v
            latent, k_rope = cache.update(latent, k_rope)  # (B, 1, S, r), (B, 1, S, rope)
        if T > 1 or cache is None:  # every head's keys and values expanded from the latents
            kv = self.wkv_b(latent[:, 0]).unflatten(-1, (H, -1)).transpose(1, 2)
            k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)  # (B, H, S, nope / v)
            k = torch.cat([k_nope, k_rope.expand(-1, H, -1, -1)], dim=-1)
            q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)  # (B, H, T, nope + rope)
            out = attend(q, k, v, mask, scale, self.dropout * self.training, self.flash)
        else:
            # One new token reads the cached latents c as they are, wkv_b absorbed (DeepSeek-V2
            # 2.1.3): q_nope . (W_uk c) = (W_uk^T q_nope) . c, and W_uv follows the weighted sum:
            # H queries of one head over r + rope channels, the c its keys and values.
            w_uk, w_uv = self.wkv_b.weight.view(H, -1, self.rank).split(
                [self.nope_dim, self.v_dim], dim=1)  # (H, nope, r), (H, v, r)
            q = torch.cat([torch.einsum("bthn,hnr->bthr", q_nope, w_uk), q_rope], dim=-1)
            if mask is None:  # all S keys: H query rows must not read as a causal triangle
                mask = torch.ones(1, 1, 1, latent.shape[2], dtype=torch.bool, device=x.device)
            context = attend(q, torch.cat([latent, k_rope], dim=-1), latent, mask, scale,
                             fused=self.flash)  # (B, 1, H, r)
            out = torch.einsum("bthr,hvr->bhtv", context, w_uv)  # (B, H, 1, v)
        out = out.transpose(1, 2).reshape(B, T, H * self.v_dim)
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


def count_slots(experts, n_experts: int):
    """(E,) slots per expert; unlike bincount, no host sync to learn the output's size."""
    flat = experts.reshape(-1)
    return flat.new_zeros(n_experts).scatter_add_(0, flat, torch.ones_like(flat))


def grouped_linear(rows, weight, ends):
    """A Linear per expert: rows (M, in) of block e (blocks ending at ends (E,)) through
    weight[e] (E, out, in), in autocast's type where it is on, as a Linear computes."""
    if torch.is_autocast_enabled(rows.device.type):
        rows, weight = (t.to(torch.get_autocast_dtype(rows.device.type)) for t in (rows, weight))
    # F.grouped_mm has kernels (torch 2.13) on the CPU, and on CUDA in bf16 from Hopper
    # (sm90) on, for widths of whole 16 bytes; elsewhere a loop over the blocks (a host sync)
    if all(n * rows.element_size() % 16 == 0 for n in weight.shape[1:]) and (
            rows.device.type == "cpu" or rows.is_cuda and rows.dtype == torch.bfloat16
            and torch.cuda.get_device_capability(rows.device) >= (9, 0)):
        return F.grouped_mm(rows, weight.transpose(1, 2), offs=ends)
    return torch.cat([r @ w.T for r, w in zip(rows.tensor_split(ends[:-1].tolist()), weight)])


class MoEGate(nn.Module):
    """Picks each token's top k routed experts by softmax probability (MiniMind, Qwen3) or by
    sigmoid affinity plus a balancing bias (DeepSeek-V3). The load-balancing loss (Switch,
    DeepSeekMoE): per expert, its share of the slots (1 when uniform) times its mean
    probability, summed: alpha for a uniform router, more as the load concentrates."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.top_k, self.n_experts = config.num_experts_per_tok, config.n_routed_experts
        self.norm_topk_prob, self.seq_aux = config.norm_topk_prob, config.seq_aux
        self.alpha, self.scaling = config.aux_loss_alpha, config.routed_scaling
        self.sigmoid, self.bias_speed = config.score_func == "sigmoid", config.bias_update_speed
        # (E, D): a bias-free Linear's weight, held bare to keep MiniMind's key
        self.weight = nn.Parameter(torch.empty(config.n_routed_experts, config.dim))
        if self.sigmoid:  # learned by counting, not by gradients: a buffer, saved and resumed
            self.register_buffer("expert_bias", torch.zeros(config.n_routed_experts))
        self.load = None  # (E,) slots routed to each expert in training since the last read

    def forward(self, x):  # x: (B, T, D)
        logits = F.linear(x, self.weight).float()  # (B, T, E): small gaps decide, so float32
        scores = logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)
        choice = (scores + self.expert_bias) if self.sigmoid else scores  # for choosing only
        experts = torch.topk(choice, self.top_k, dim=-1).indices  # (B, T, k)
        weights = scores.gather(-1, experts)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        aux_loss = scores.new_zeros(())
        if self.training:  # with --grad_checkpoint counted twice: only the shares matter
            self.load = count_slots(experts, self.n_experts).float() + (
                0 if self.load is None else self.load)
        if self.training and self.alpha > 0:
            # per sequence, then averaged; or (seq_aux False) the whole batch as one sequence
            groups = x.shape[0] if self.seq_aux else 1
            # DeepSeek-V3's loss takes each token's sigmoid affinities scaled to sum to 1
            probs = (scores / scores.sum(dim=-1, keepdim=True) if self.sigmoid else scores)
            probs, routed = probs.reshape(groups, -1, self.n_experts), experts.reshape(groups, -1)
            load = probs.new_zeros(groups, self.n_experts).scatter_add_(
                1, routed, torch.ones_like(routed, dtype=probs.dtype))
            load = load / (probs.shape[1] * self.top_k / self.n_experts)  # uniform -> 1
            aux_loss = self.alpha * (load * probs.mean(dim=1)).sum(dim=1).mean()
        return experts, (weights * self.scaling).type_as(x), aux_loss

    @torch.no_grad()
    def update_bias(self, load):
        """Auxiliary-loss-free balancing (DeepSeek-V3 2.1.2): after a step, experts below the
        mean load (E,) get bias_update_speed more bias, the others less; no gradient changes."""
        self.expert_bias += self.bias_speed * torch.sign(load.mean() - load)


class MoEFeedForward(nn.Module):
    """Routed experts (k of E per token) plus always-on shared experts, SwiGLUs moe_inter_dim
    wide. Many narrow experts beside shared ones (DeepSeekMoE, Dai et al. 2024) give more
    combinations of specialists, while the shared ones hold what every token needs."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.experts = nn.ModuleList(FeedForward(config, config.moe_inter_dim)
                                     for _ in range(config.n_routed_experts))
        self.gate = MoEGate(config)
        # n shared SwiGLU experts summed equal one SwiGLU n times as wide (MiniMind's keys)
        self.shared_experts = (FeedForward(config, config.moe_inter_dim * config.n_shared_experts)
                               if config.n_shared_experts > 0 else None)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):  # x: (B, T, D)
        experts, weights, self.aux_loss = self.gate(x)  # (B, T, k) each
        out = torch.zeros_like(x) if self.shared_experts is None else self.shared_experts(x)
        # torch.compile does not trace grouped_mm in every dtype, and a CUDA graph cannot
        # record the loop's host sync: there every expert runs
        static = torch.compiler.is_compiling() or (
            x.is_cuda and torch.cuda.is_current_stream_capturing())
        return out + (self.every_expert if static else self.routed)(x, experts, weights)

    def routed(self, x, experts, weights):
        """The (token, expert) pairs sorted by expert, so that expert e multiplies one block
        of rows: k / E of every_expert's work, in a grouped matrix product (block ends on the
        device: no host sync) over the experts' stacked weights (a copy; the keys stay)."""
        flat, k, E = x.reshape(-1, x.shape[-1]), experts.shape[-1], len(self.experts)  # (N, D)
        pair_expert = experts.reshape(-1)  # (N * k,)
        order = pair_expert.argsort(stable=True)
        token = order // k  # the token of each sorted pair
        ends = count_slots(pair_expert, E).cumsum(0).int()
        w1, w2, w3 = (torch.stack([getattr(e, name).weight for e in self.experts])
                      for name in ("w1", "w2", "w3"))  # (E, out, in) each
        rows = flat[token]  # (N * k, D)
        hidden = F.silu(grouped_linear(rows, w1, ends)) * grouped_linear(rows, w3, ends)
        out = self.dropout(grouped_linear(hidden, w2, ends)) * weights.reshape(-1)[order, None]
        return torch.zeros_like(flat).index_add_(0, token, out.type_as(flat)).view_as(x)

    def every_expert(self, x, experts, weights):
        """Every expert on every token, weighted by the gate (0 where not routed): E / k times
        the work, no shape that depends on the routing (CUDA graphs, torch.compile)."""
        combine = weights.new_zeros(*x.shape[:2], len(self.experts)).scatter(2, experts, weights)
        return sum(expert(x) * combine[..., e, None] for e, expert in enumerate(self.experts))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then h + feed_forward(norm(h))."""

    def __init__(self, config: LMConfig, layer_id: int):
        super().__init__()
        self.attention = (LatentAttention if config.attention == "mla" else Attention)(config)
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.is_moe = config.use_moe and layer_id >= config.first_k_dense
        self.feed_forward = MoEFeedForward(config) if self.is_moe else FeedForward(config)

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
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
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
        """.to(), .half() and the like: the RoPE tables are rebuilt in float32 (bf16's 8 bits
        would put angles at long positions far off)."""
        super()._apply(fn, *args, **kwargs)
        if self.rope_cos.dtype != torch.float32:
            device = self.rope_cos.device
            self.rope_cos, self.rope_sin = (t.to(device) for t in precompute_rope(self.config))
        return self

    def num_params(self, active: bool = False) -> int:
        """Parameters, the tied embedding once; active: what one token uses (k of E experts)."""
        c, total = self.config, sum(p.numel() for p in self.parameters())
        if active:  # less w1, w2 and w3 of each MoE layer's idle experts
            idle = (c.n_routed_experts - c.num_experts_per_tok) * 3 * c.dim * c.moe_inter_dim
            total -= sum(layer.is_moe for layer in self.layers) * idle
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
        aux = [layer.feed_forward.aux_loss for layer in self.layers if layer.is_moe]
        return logits, sum(aux) if aux else logits.new_zeros((), dtype=torch.float32)

    def generate(self, input_ids, attention_mask=None, max_new_tokens=256, temperature=1.0,
                 top_k=0, top_p=1.0, repetition_penalty=1.0, eos_token_id=None,
                 use_cache=True, stream=False, generator=None, decoder=None):
        """Continue each prompt of input_ids (B, T), left-padded where attention_mask is 0.
        temperature 0 is greedy; top_k 0 and top_p 1 are off; rows that end (eos_token_id)
        repeat it until all have. Returns (B, T + new) ids, or with stream=True an iterator of
        (B,) tensors. use_cache=False recomputes all each step; decoder: a StaticDecoder."""
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


def check_config(c: LMConfig):
    """ValueError for a shape or a combination the model cannot take."""
    if c.rope_dim % 2:
        raise ValueError(f"the RoPE head dim {c.rope_dim} must be even")
    for name, choices in (("attention", ("gqa", "mla")), ("score_func", ("softmax", "sigmoid"))):
        if getattr(c, name) not in choices:
            raise ValueError(f"{name} is {getattr(c, name)!r}; pass {' or '.join(choices)}")
    if c.attention == "mla" and c.qk_norm:
        raise ValueError("qk_norm is for GQA attention; MLA normalises its latents instead")
    if c.use_moe and not (1 <= c.num_experts_per_tok <= c.n_routed_experts
                          and c.first_k_dense < c.n_layers):
        raise ValueError("an MoE needs 1 <= num_experts_per_tok <= n_routed_experts, and "
                         "first_k_dense below n_layers")
