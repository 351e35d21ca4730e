"""The costs docs/architectures.md reports, measured: the KV cache's bytes per token and the
decoding speed of GQA against MLA at equal parameters, and an MoE training step's time
against what its active FLOPs predict, with the routed dispatch and with every expert on
every token (the dispatch before it).

    python scripts/bench_arch.py --repeats 3

Timings alternate the variants, repeat, and report the median; run it on a quiet machine.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model import LMConfig, MoEFeedForward, Transformer  # noqa: E402
from runlog import flops_per_token  # noqa: E402


def equal_mla_rank(dim: int, n_layers: int) -> int:
    """The kv_lora_rank (a multiple of 8) whose MLA model is closest in parameters to the
    GQA model of the same shape."""
    def count(**fields):
        with torch.device("meta"):
            return Transformer(LMConfig(dim=dim, n_layers=n_layers, **fields)).num_params()
    target = count()
    return min(range(8, 4 * dim, 8), key=lambda r: abs(count(attention="mla", kv_lora_rank=r)
                                                       - target))


def cache_numbers(model, length=16):
    """Numbers the KV cache holds per token and layer, read off the cache itself."""
    cache = model(torch.zeros(1, length, dtype=torch.long), use_cache=True).past_key_values[0]
    return (cache.k[:, :, :length].numel() + cache.v[:, :, :length].numel()) // length


def decode_rate(model, batch: int, prompt: int, new: int) -> float:
    """Tokens per second of greedy decoding with the KV cache (batch rows x new tokens)."""
    ids = torch.randint(3, model.config.vocab_size, (batch, prompt),
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=new, temperature=0)
    return batch * new / (time.perf_counter() - start)


def step_seconds(model, optimizer, batch, seq_len) -> float:
    """One training step's seconds: forward, backward, AdamW."""
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len + 1),
                        generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    out = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten())
    (loss + out.aux_loss).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def timed(variants, measure, repeats):
    """{name: median of measure(name)} over repeats, the variants alternating."""
    results = {name: [] for name in variants}
    for _ in range(repeats):
        for name in variants:
            results[name].append(measure(name))
    return {name: statistics.median(values) for name, values in results.items()}


def attention_rows(args):
    rank = equal_mla_rank(args.dim, args.n_layers)
    models = {"GQA": Transformer(LMConfig(dim=args.dim, n_layers=args.n_layers)).eval(),
              f"MLA, kv_lora_rank {rank}": Transformer(LMConfig(
                  dim=args.dim, n_layers=args.n_layers, attention="mla", kv_lora_rank=rank)).eval()}
    print(f"\n| dim {args.dim} x {args.n_layers} | parameters | cache numbers per token and "
          f"layer | bf16 bytes | " + " | ".join(f"decode tok/s, batch {b}" for b in (1, 8))
          + " |\n|---|---|---|---|---|---|")
    with torch.inference_mode():
        rates = {b: timed(models, lambda name: decode_rate(models[name], b, args.prompt,
                                                          args.new_tokens), args.repeats)
                 for b in (1, 8)}
        for name, model in models.items():
            numbers = cache_numbers(model)
            print(f"| {name} | {model.num_params() / 1e6:.2f}M | {numbers} | {2 * numbers} | "
                  + " | ".join(f"{rates[b][name]:.1f}" for b in (1, 8)) + " |")


def moe_rows(args):
    dim, layers = args.moe_dim, args.moe_layers
    hidden = LMConfig(dim=dim).hidden_dim
    deepseek = dict(use_moe=True, score_func="sigmoid", n_routed_experts=16,
                    num_experts_per_tok=3, n_shared_experts=1, first_k_dense=1,
                    moe_inter_dim=hidden // 4, bias_update_speed=1e-3, aux_loss_alpha=1e-4)
    configs = {"dense": {}, "DeepSeek MoE, routed": deepseek,
               "DeepSeek MoE, every expert": deepseek}
    models, optimizers = {}, {}
    for name, fields in configs.items():
        torch.manual_seed(0)
        models[name] = Transformer(LMConfig(dim=dim, n_layers=layers, **fields)).train()
        optimizers[name] = torch.optim.AdamW(models[name].parameters(), lr=1e-4)
    routed = MoEFeedForward.routed

    def measure(name):
        MoEFeedForward.routed = MoEFeedForward.every_expert if "every" in name else routed
        try:
            return step_seconds(models[name], optimizers[name], args.batch, args.seq_len)
        finally:
            MoEFeedForward.routed = routed

    for name in configs:  # warm-up
        measure(name)
    seconds = timed(configs, measure, args.repeats)
    base = seconds["dense"] / flops_per_token(models["dense"], args.seq_len)
    print(f"\n| dim {dim} x {layers}, {args.batch} x {args.seq_len} tokens a step | parameters "
          "| active | FLOPs per token | step seconds | seconds / what the FLOPs predict |"
          "\n|---|---|---|---|---|---|")
    for name, model in models.items():
        flops = flops_per_token(model, args.seq_len)
        if "every" in name:  # every expert's work is done: all of them count as active
            c = model.config
            flops += 6 * (c.n_layers - c.first_k_dense) * 3 * c.dim * c.moe_inter_dim * (
                c.n_routed_experts - c.num_experts_per_tok)
        print(f"| {name} | {model.num_params() / 1e6:.2f}M | "
              f"{model.num_params(active=True) / 1e6:.2f}M | {flops / 1e6:.1f}M | "
              f"{seconds[name]:.3f} | {seconds[name] / (base * flops):.2f} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n_layers", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens before decoding")
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--moe_dim", type=int, default=256)
    p.add_argument("--moe_layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32")
    attention_rows(args)
    moe_rows(args)


if __name__ == "__main__":
    main()
