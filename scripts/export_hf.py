"""Export a MyLLM checkpoint as a transformers model directory.

    python scripts/export_hf.py --dim 512 --n_layers 8 --out out/hf-512

writes config.json, model.safetensors and the tokenizer files, which
AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load offline, and
which give the same logits as MyLLM. The architecture comes from the checkpoint's config
file (hf_architecture): a dense model becomes a LlamaForCausalLM, a QK-norm one a Qwen3 (an
MoE without shared experts: Qwen3-MoE), and MLA or DeepSeek's MoE a DeepseekV3ForCausalLM.

MiniMind's MoE becomes a GraniteMoeSharedForCausalLM: the one architecture in transformers
that computes it exactly. Its router takes the top k logits and softmaxes over those k,
which equals MyLLM's top-k probabilities divided by their sum, and it adds an ungated
shared expert (Mixtral has none; Qwen2-MoE gates its shared expert with a sigmoid).
Granite's extra multipliers are set so that they change nothing.

Two things differ between the layouts besides the names (tensor_map lists every tensor):
- RoPE pairs. MyLLM rotates channel pairs (2i, 2i+1) of each head, transformers' Llama and
  Qwen3 rotate (i, i + hd/2). An attention score is a sum over channels, so reordering the
  channels of q and k the same way changes no score: permuting the rows of wq and wk (and
  QK-norm's gains) is enough. DeepSeek-V3 rotates MyLLM's pairs (rope_interleave).
- Tied embeddings. MyLLM's output layer is its embedding matrix; the export stores it once
  and declares tie_word_embeddings.

MyLLM's RoPE is plain (no scaling), and the export declares it so. Set rope_parameters in
config.json to extend the context there.

The weights are written in the safetensors format by a small function below, so exporting
needs neither transformers nor the safetensors package. scripts/import_hf.py does the
reverse, with the same conversion functions.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # model.py and tokenizer.py live in the repository root

from checkpoint import (arch_tag, checkpoint_paths, load_model,  # noqa: E402
                        missing_checkpoint, read_state_dict)
from files import write_atomic, write_text_atomic  # noqa: E402
from flags import (add_model_flags, add_out_dir_flag, add_tokenizer_flag,  # noqa: E402
                   model_fields)
from model import LMConfig, Transformer  # noqa: E402
from tokenizer import BOS_ID, EOS_ID, PAD_ID, load_tokenizer, save_tokenizer  # noqa: E402


def to_half_split(w, n_heads: int):
    """Rows of wq or wk (n_heads * hd, D) from MyLLM's RoPE pairs (2i, 2i+1) to transformers'
    pairs (i, i + hd/2): within each head, the even rows first, then the odd rows."""
    out_dim, in_dim = w.shape
    pairs = out_dim // n_heads // 2
    return w.reshape(n_heads, pairs, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def to_interleaved(w, n_heads: int):
    """The inverse of to_half_split: transformers' row order back to MyLLM's."""
    out_dim, in_dim = w.shape
    pairs = out_dim // n_heads // 2
    return w.reshape(n_heads, 2, pairs, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_architecture(config: LMConfig) -> str:
    """The transformers model_type that computes what this MyLLM model computes, or
    ValueError naming what none of them holds."""
    if config.attention == "mla" or config.score_func == "sigmoid" and config.use_moe:
        if config.attention != "mla" or config.use_moe and config.score_func != "sigmoid":
            raise ValueError("DeepSeek-V3 pairs MLA with a sigmoid-routed MoE (or a dense "
                             "feed-forward); export MLA with --moe deepseek or no MoE")
        return "deepseek_v3"
    if config.use_moe and config.first_k_dense and not config.qk_norm:
        raise ValueError("GraniteMoeShared has no dense layers; export --first_k_dense 0")
    if config.qk_norm:
        if config.use_moe and config.n_shared_experts:
            raise ValueError("Qwen3-MoE has no shared experts; a QK-norm MoE exports with "
                             "--n_shared_experts 0 only")
        return "qwen3_moe" if config.use_moe else "qwen3"
    if config.use_moe and (config.moe_inter_dim != config.hidden_dim
                           or config.routed_scaling != 1.0):
        raise ValueError("GraniteMoeShared's experts are hidden_dim wide and unscaled")
    return "granitemoeshared" if config.use_moe else "llama"


# Names inside layer i: MyLLM's "layers.{i}." + key is transformers' "model.layers.{i}." + value.
ATTENTION_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention.q_norm.weight": "self_attn.q_norm.weight",  # Qwen3
    "attention.k_norm.weight": "self_attn.k_norm.weight",
}
ROW_KINDS = {"attention.wq.weight": "q", "attention.wk.weight": "k",
             "attention.q_norm.weight": "norm", "attention.k_norm.weight": "norm"}
# DeepSeek-V3 with rope_interleave (its default) rotates MyLLM's pairs: no permutation
LATENT_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wq_a.weight": "self_attn.q_a_proj.weight",
    "attention.q_norm.weight": "self_attn.q_a_layernorm.weight",
    "attention.wq_b.weight": "self_attn.q_b_proj.weight",
    "attention.wkv_a.weight": "self_attn.kv_a_proj_with_mqa.weight",
    "attention.kv_norm.weight": "self_attn.kv_a_layernorm.weight",
    "attention.wkv_b.weight": "self_attn.kv_b_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
}
NORM_NAMES = {"attention_norm.weight": "input_layernorm.weight",
              "ffn_norm.weight": "post_attention_layernorm.weight"}
SWIGLU_NAMES = {"w1.weight": "gate_proj.weight",  # w2(silu(w1 x) * w3 x)
                "w3.weight": "up_proj.weight",  # = down(silu(gate x) * up x)
                "w2.weight": "down_proj.weight"}


def tensor_map(config: LMConfig, keys=None, arch=None):
    """[(transformers key, [MyLLM keys], how they combine)] for arch, by default
    hf_architecture(config); keys: the MyLLM keys that exist (the attention's optional
    tensors are taken from them).

    "copy": one tensor as it is; "q" / "k": the rows permuted (see to_half_split); "norm":
    a head's gains permuted alike; "cat": one on top of the other; "stack": stacked along a
    new first axis; "stack_pairs": pairs concatenated, then stacked. transformers stores an
    MoE's routed SwiGLUs stacked, w1 on top of w3: (E, 2 * hidden, D), and w2 (E, D, hidden).
    lm_head.weight is not listed: it is the embedding matrix, declared tied in the config."""
    arch = arch or hf_architecture(config)
    if keys is None:
        with torch.device("meta"):  # names only: no memory, no initialisation
            keys = Transformer(config).state_dict()
    keys = set(keys)
    rows = [("model.embed_tokens.weight", ["tok_embeddings.weight"], "copy")]
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        names = LATENT_NAMES if config.attention == "mla" else ATTENTION_NAMES
        rows += [(theirs + hf_key, [ours + key], "copy" if config.attention == "mla" else
                  ROW_KINDS.get(key, "copy"))
                 for key, hf_key in {**names, **NORM_NAMES}.items() if ours + key in keys]
        rows += feed_forward_rows(config, arch, ours + "feed_forward.", theirs,
                                  is_moe=config.use_moe and i >= config.first_k_dense)
    return rows + [("model.norm.weight", ["norm.weight"], "copy")]


def feed_forward_rows(config, arch, ffn, theirs, is_moe):
    """tensor_map's rows for one layer's feed-forward (see tensor_map)."""
    if not is_moe:
        return [(theirs + "mlp." + hf_key, [ffn + key], "copy")
                for key, hf_key in SWIGLU_NAMES.items()]
    experts = [f"{ffn}experts.{e}." for e in range(config.n_routed_experts)]
    gate_up = [e + w for e in experts for w in ("w1.weight", "w3.weight")]
    down = [e + "w2.weight" for e in experts]
    if arch == "granitemoeshared":
        moe = theirs + "block_sparse_moe."
        rows = [(moe + "router.layer.weight", [ffn + "gate.weight"], "copy"),
                (moe + "input_linear.weight", gate_up, "stack_pairs"),
                (moe + "output_linear.weight", down, "stack")]
        if config.n_shared_experts:
            shared = ffn + "shared_experts."
            rows += [(theirs + "shared_mlp.input_linear.weight",
                      [shared + "w1.weight", shared + "w3.weight"], "cat"),
                     (theirs + "shared_mlp.output_linear.weight", [shared + "w2.weight"], "copy")]
        return rows
    mlp = theirs + "mlp."  # Qwen3-MoE and DeepSeek-V3
    rows = [(mlp + "gate.weight", [ffn + "gate.weight"], "copy"),
            (mlp + "experts.gate_up_proj", gate_up, "stack_pairs"),
            (mlp + "experts.down_proj", down, "stack")]
    if arch == "deepseek_v3":
        rows.append((mlp + "gate.e_score_correction_bias", [ffn + "gate.expert_bias"], "copy"))
        rows += [(mlp + "shared_experts." + hf_key, [ffn + "shared_experts." + key], "copy")
                 for key, hf_key in SWIGLU_NAMES.items() if config.n_shared_experts]
    return rows


def combine(kind, tensors, config: LMConfig):
    """One transformers tensor from MyLLM's tensors (see tensor_map)."""
    if kind in ("q", "k"):
        return to_half_split(tensors[0], config.n_heads if kind == "q" else config.n_kv_heads)
    if kind == "norm":
        return to_half_split(tensors[0][:, None], 1)[:, 0]
    if kind == "stack_pairs":
        return torch.stack([torch.cat(tensors[i:i + 2]) for i in range(0, len(tensors), 2)])
    return {"copy": lambda: tensors[0], "cat": lambda: torch.cat(tensors),
            "stack": lambda: torch.stack(tensors)}[kind]()


def split(kind, tensor, config: LMConfig):
    """The inverse of combine: MyLLM's tensors from one transformers tensor."""
    if kind in ("q", "k"):
        return [to_interleaved(tensor, config.n_heads if kind == "q" else config.n_kv_heads)]
    if kind == "norm":
        return [to_interleaved(tensor[:, None], 1)[:, 0]]
    if kind == "stack_pairs":
        return [half for pair in tensor.unbind(0) for half in pair.chunk(2)]
    return {"copy": lambda: [tensor], "cat": lambda: list(tensor.chunk(2)),
            "stack": lambda: list(tensor.unbind(0))}[kind]()


def to_hf_state_dict(state_dict, config: LMConfig):
    """MyLLM's state dict -> transformers' (the architecture of hf_architecture)."""
    return {hf_key: combine(kind, [state_dict[k] for k in keys], config)
            for hf_key, keys, kind in tensor_map(config, state_dict)}


def from_hf_state_dict(hf, config: LMConfig, arch=None):
    """The inverse of to_hf_state_dict: a state dict that Transformer(config) loads strictly,
    with output.weight being the embedding matrix, as in model.state_dict(). arch: the
    layout hf is in, by default hf_architecture(config)'s."""
    state_dict = {}
    for hf_key, keys, kind in tensor_map(config, arch=arch):
        state_dict.update(zip(keys, split(kind, hf[hf_key], config)))
    state_dict["output.weight"] = state_dict["tok_embeddings.weight"]
    return state_dict


ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
                 "qwen3_moe": "Qwen3MoeForCausalLM",
                 "granitemoeshared": "GraniteMoeSharedForCausalLM",
                 "deepseek_v3": "DeepseekV3ForCausalLM"}


def hf_config(config: LMConfig, dtype: torch.dtype):
    """The contents of config.json for an exported model of this shape."""
    arch = hf_architecture(config)
    hf = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,  # where transformers 4 and other tools look for it
        "attention_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }
    hf.update(ARCHITECTURE_FIELDS[arch](config))
    return hf


def granite_fields(c: LMConfig):
    if not c.norm_topk_prob:
        raise ValueError("GraniteMoeShared always renormalises the top-k weights; export "
                         "with norm_topk_prob")
    return {"num_local_experts": c.n_routed_experts, "num_experts_per_tok": c.num_experts_per_tok,
            # MyLLM's n shared experts are one SwiGLU n times as wide
            "shared_intermediate_size": c.hidden_dim * c.n_shared_experts,
            # Granite scales embeddings, residual branches, logits and attention scores;
            # these values make it compute what Llama (and MyLLM) compute
            "embedding_multiplier": 1.0, "residual_multiplier": 1.0, "logits_scaling": 1.0,
            "attention_multiplier": c.head_dim ** -0.5}


def qwen3_moe_fields(c: LMConfig):
    if c.routed_scaling != 1.0:
        raise ValueError("Qwen3-MoE does not scale the routed output; export routed_scaling 1")
    return {"num_experts": c.n_routed_experts, "num_experts_per_tok": c.num_experts_per_tok,
            "moe_intermediate_size": c.moe_inter_dim, "norm_topk_prob": c.norm_topk_prob,
            "decoder_sparse_step": 1, "mlp_only_layers": list(range(c.first_k_dense))}


def deepseek_fields(c: LMConfig):
    mla, moe = c.attention == "mla", c.use_moe
    return {"q_lora_rank": c.q_lora_rank or None, "kv_lora_rank": c.kv_lora_rank,
            "qk_nope_head_dim": c.qk_nope_head_dim, "qk_rope_head_dim": c.qk_rope_head_dim,
            "v_head_dim": c.v_head_dim, "head_dim": c.qk_rope_head_dim if mla else c.head_dim,
            "rope_interleave": True, "num_key_value_heads": c.n_heads,
            # one group, all experts eligible: V3's group-limited routing is not MyLLM's
            "n_group": 1, "topk_group": 1, "first_k_dense_replace":
                c.first_k_dense if moe else c.n_layers,
            "n_routed_experts": c.n_routed_experts if moe else 2,
            "num_experts_per_tok": c.num_experts_per_tok if moe else 1,
            "n_shared_experts": c.n_shared_experts, "moe_intermediate_size": c.moe_inter_dim,
            "routed_scaling_factor": c.routed_scaling, "norm_topk_prob": c.norm_topk_prob}


ARCHITECTURE_FIELDS = {"llama": lambda c: {"mlp_bias": False}, "qwen3": lambda c: {},
                       "granitemoeshared": granite_fields, "qwen3_moe": qwen3_moe_fields,
                       "deepseek_v3": deepseek_fields}


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def save_safetensors(tensors, path):
    """Write {name: tensor} as a safetensors file: the header's length (8 bytes, little
    endian), a JSON header with each tensor's dtype, shape and byte range in the data, then
    the raw little-endian bytes of the tensors, one after another."""
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}  # transformers refuses files without it
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the spec pads the header so the data is aligned

    def write(f):
        f.write(len(encoded).to_bytes(8, "little"))
        f.write(encoded)
        for tensor in tensors.values():
            # the bytes as they lie in memory: little endian on every platform torch supports
            f.write(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    write_atomic(path, write)


def export(state_dict, config: LMConfig, tokenizer, out_dir):
    """Write config.json, model.safetensors and the tokenizer files into out_dir."""
    if not torch.equal(state_dict["tok_embeddings.weight"], state_dict["output.weight"]):
        raise SystemExit("output.weight differs from tok_embeddings.weight; MyLLM ties them, "
                         "and so does the export")
    hf = to_hf_state_dict(state_dict, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_json = hf_config(config, hf["model.embed_tokens.weight"].dtype)
    write_text_atomic(out_dir / "config.json", json.dumps(config_json, indent=2) + "\n")
    save_safetensors(hf, out_dir / "model.safetensors")
    save_tokenizer(tokenizer, out_dir / "tokenizer.json")
    return config_json


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export a MyLLM checkpoint to a transformers "
                                            "directory (Llama, Qwen3, Qwen3-MoE, DeepSeek-V3, "
                                            "or GraniteMoeShared for MiniMind's MoE).")
    add_model_flags(p, from_file=True)
    add_out_dir_flag(p)
    p.add_argument("--ckpt", help="weights file; default {out_dir}/pretrain_{dim}{tag}.pth, "
                                  "tag as the architecture flags name it (_moe, _mla, ...)")
    add_tokenizer_flag(p)
    p.add_argument("--out", help="directory to write; default {out_dir}/hf-{dim}{tag}")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    fields = model_fields(args, presets=False)
    dim, tag = args.dim or LMConfig.dim, arch_tag(fields)
    ckpt = Path(args.ckpt) if args.ckpt else checkpoint_paths(args.out_dir, dim, tag)[0]
    tokenizer_path = Path(args.tokenizer or Path(args.out_dir) / "tokenizer.json")
    out = Path(args.out or Path(args.out_dir) / f"hf-{dim}{tag}")
    try:
        if not ckpt.is_file():
            raise FileNotFoundError(missing_checkpoint(ckpt, args.dim, args.n_layers,
                                                       args.use_moe))
        tokenizer = load_tokenizer(tokenizer_path)
        vocab_size = read_state_dict(ckpt)["tok_embeddings.weight"].shape[0]
        # the architecture from the file's config (or shapes); the flags given must agree
        model = load_model(ckpt, vocab_size, **fields)
        config, state_dict = model.config, model.state_dict()
        hf_architecture(config)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if tokenizer.get_vocab_size() > vocab_size:
        raise SystemExit(f"{tokenizer_path} has {tokenizer.get_vocab_size()} tokens but the "
                         f"model only {vocab_size}; pass the tokenizer it was trained with")

    config_json = export(state_dict, config, tokenizer, out)
    n_params = sum(t.numel() for k, t in state_dict.items() if k != "output.weight")
    print(f"wrote {out} ({config_json['architectures'][0]}, {n_params / 1e6:.2f}M parameters, "
          f"{config_json['torch_dtype']})")
    print(f"load it with: AutoModelForCausalLM.from_pretrained({str(out)!r}) and "
          f"AutoTokenizer.from_pretrained({str(out)!r})")


if __name__ == "__main__":
    main()
