"""Export a MyLLM checkpoint as a transformers model directory.

    python scripts/export_hf.py --dim 512 --n_layers 8 --out out/hf-512

writes config.json, model.safetensors and the tokenizer files, which
AutoModelForCausalLM.from_pretrained and AutoTokenizer.from_pretrained load offline, and
which give the same logits as MyLLM. A dense model becomes a LlamaForCausalLM.

An MoE model becomes a GraniteMoeSharedForCausalLM: the one architecture in transformers
that computes MyLLM's MoE exactly. Its router takes the top k logits and softmaxes over
those k, which equals MyLLM's top-k probabilities divided by their sum, and it adds an
ungated shared expert (Mixtral has none; Qwen2-MoE gates its shared expert with a sigmoid).
Granite's extra multipliers are set so that they change nothing.

Two things differ between the layouts besides the names (tensor_map lists every tensor):
- RoPE pairs. MyLLM rotates channel pairs (2i, 2i+1) of each head, transformers rotates
  (i, i + hd/2). An attention score is a sum over channels, so reordering the channels of
  q and k the same way changes no score: permuting the rows of wq and wk is enough.
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

from checkpoint import (checkpoint_paths, check_state_dict, missing_checkpoint,  # noqa: E402
                        read_state_dict)
from files import write_atomic, write_text_atomic  # noqa: E402
from flags import add_model_flags, add_out_dir_flag, add_tokenizer_flag  # noqa: E402
from model import LMConfig  # noqa: E402
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


# Names inside layer i: MyLLM's "layers.{i}." + key is transformers' "model.layers.{i}." + value.
ATTENTION_NAMES = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
SWIGLU_NAMES = {  # w2(silu(w1 x) * w3 x) = down(silu(gate x) * up x)
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}


def tensor_map(config: LMConfig):
    """[(transformers key, [MyLLM keys], how they combine)], for Llama or GraniteMoeShared.

    "copy": one tensor as it is; "q" / "k": the rows permuted (see to_half_split); "cat":
    the tensors one on top of the other; "stack": stacked along a new first axis;
    "stack_pairs": pairs concatenated, then stacked. Granite stores each SwiGLU's w1 and w3
    as one matrix, w1 on top, and the routed experts stacked: input_linear
    (E, 2 * hidden, D), output_linear (E, D, hidden). lm_head.weight is not listed: it is
    the embedding matrix, declared tied in the config."""
    rows = [("model.embed_tokens.weight", ["tok_embeddings.weight"], "copy")]
    for i in range(config.n_layers):
        ours, theirs = f"layers.{i}.", f"model.layers.{i}."
        for key, hf_key in ATTENTION_NAMES.items():
            kind = {"attention.wq.weight": "q", "attention.wk.weight": "k"}.get(key, "copy")
            rows.append((theirs + hf_key, [ours + key], kind))
        if not config.use_moe:
            rows += [(theirs + hf_key, [ours + key], "copy")
                     for key, hf_key in SWIGLU_NAMES.items()]
            continue
        ffn, moe = ours + "feed_forward.", theirs + "block_sparse_moe."
        experts = [f"{ffn}experts.{e}." for e in range(config.n_routed_experts)]
        rows += [(moe + "router.layer.weight", [ffn + "gate.weight"], "copy"),
                 (moe + "input_linear.weight",
                  [e + w for e in experts for w in ("w1.weight", "w3.weight")], "stack_pairs"),
                 (moe + "output_linear.weight", [e + "w2.weight" for e in experts], "stack")]
        if config.n_shared_experts:
            shared = ffn + "shared_experts."
            rows += [(theirs + "shared_mlp.input_linear.weight",
                      [shared + "w1.weight", shared + "w3.weight"], "cat"),
                     (theirs + "shared_mlp.output_linear.weight", [shared + "w2.weight"], "copy")]
    return rows + [("model.norm.weight", ["norm.weight"], "copy")]


def combine(kind, tensors, config: LMConfig):
    """One transformers tensor from MyLLM's tensors (see tensor_map)."""
    if kind in ("q", "k"):
        return to_half_split(tensors[0], config.n_heads if kind == "q" else config.n_kv_heads)
    if kind == "stack_pairs":
        return torch.stack([torch.cat(tensors[i:i + 2]) for i in range(0, len(tensors), 2)])
    return {"copy": lambda: tensors[0], "cat": lambda: torch.cat(tensors),
            "stack": lambda: torch.stack(tensors)}[kind]()


def split(kind, tensor, config: LMConfig):
    """The inverse of combine: MyLLM's tensors from one transformers tensor."""
    if kind in ("q", "k"):
        return [to_interleaved(tensor, config.n_heads if kind == "q" else config.n_kv_heads)]
    if kind == "stack_pairs":
        return [half for pair in tensor.unbind(0) for half in pair.chunk(2)]
    return {"copy": lambda: [tensor], "cat": lambda: list(tensor.chunk(2)),
            "stack": lambda: list(tensor.unbind(0))}[kind]()


def to_hf_state_dict(state_dict, config: LMConfig):
    """MyLLM's state dict -> transformers' (Llama, or GraniteMoeShared for MoE)."""
    return {hf_key: combine(kind, [state_dict[k] for k in keys], config)
            for hf_key, keys, kind in tensor_map(config)}


def from_hf_state_dict(hf, config: LMConfig):
    """The inverse of to_hf_state_dict: a state dict that Transformer(config) loads strictly,
    with output.weight being the embedding matrix, as in model.state_dict()."""
    state_dict = {}
    for hf_key, keys, kind in tensor_map(config):
        state_dict.update(zip(keys, split(kind, hf[hf_key], config)))
    state_dict["output.weight"] = state_dict["tok_embeddings.weight"]
    return state_dict


def hf_config(config: LMConfig, dtype: torch.dtype):
    """The contents of config.json for an exported model of this shape."""
    head_dim = config.dim // config.n_heads
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_theta": config.rope_theta,  # where transformers 4 and other tools look for it
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "use_cache": True,
    }
    if not config.use_moe:
        return hf
    if config.num_experts_per_tok < 2 or not config.norm_topk_prob:
        raise ValueError(
            "MoE export needs num_experts_per_tok >= 2 and norm_topk_prob: GraniteMoeShared "
            "always renormalises the top-k weights, which MyLLM does only in that case")
    del hf["mlp_bias"]
    hf.update({
        "architectures": ["GraniteMoeSharedForCausalLM"],
        "model_type": "granitemoeshared",
        "num_local_experts": config.n_routed_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        # MyLLM's n shared experts are one SwiGLU n times as wide
        "shared_intermediate_size": config.hidden_dim * config.n_shared_experts,
        # Granite scales embeddings, residual branches, logits and attention scores;
        # these values make it compute what Llama (and MyLLM) compute
        "embedding_multiplier": 1.0,
        "residual_multiplier": 1.0,
        "logits_scaling": 1.0,
        "attention_multiplier": head_dim ** -0.5,
    })
    return hf


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
                                            "directory (Llama, or GraniteMoeShared for MoE).")
    add_model_flags(p)
    add_out_dir_flag(p)
    p.add_argument("--ckpt", help="weights file; default {out_dir}/pretrain_{dim}{_moe}.pth")
    add_tokenizer_flag(p)
    p.add_argument("--out", help="directory to write; default {out_dir}/hf-{dim}{_moe}")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    suffix = f"{args.dim}{'_moe' if args.use_moe else ''}"
    ckpt = Path(args.ckpt) if args.ckpt else checkpoint_paths(args.out_dir, args.dim,
                                                              args.use_moe)[0]
    tokenizer_path = Path(args.tokenizer or Path(args.out_dir) / "tokenizer.json")
    out = Path(args.out or Path(args.out_dir) / f"hf-{suffix}")
    try:
        if not ckpt.is_file():
            raise FileNotFoundError(missing_checkpoint(ckpt, args.dim, args.n_layers,
                                                       args.use_moe))
        tokenizer = load_tokenizer(tokenizer_path)
        state_dict = read_state_dict(ckpt)
        vocab_size = state_dict["tok_embeddings.weight"].shape[0]
        config = LMConfig(dim=args.dim, n_layers=args.n_layers, vocab_size=vocab_size,
                          use_moe=args.use_moe)
        flags = f"--dim {args.dim} --n_layers {args.n_layers}" + " --use_moe" * args.use_moe
        check_state_dict(state_dict, config, str(ckpt), flags)
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
