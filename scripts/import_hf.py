"""Import a transformers model directory as a MyLLM checkpoint: the reverse of export_hf.py.

    python scripts/import_hf.py --hf_dir out/hf-512 --out out/pretrain_512.pth

    python scripts/import_hf.py --minimind ../minimind/out/pretrain_768.pth --out out/m3.pth

reads config.json and model.safetensors (or its shards) and writes a weights-only state dict
and its config file (pretrain_512.json) that eval_model.py loads, printing the command. It
takes Llama, Qwen3, Qwen3-MoE and DeepSeek-V3 directories of a shape MyLLM can hold: SwiGLU
with silu, no biases, plain RoPE, tied embeddings (or untied ones that are equal), one group
of experts; and the GraniteMoeShared directories that export_hf.py writes. Anything else
stops with one line that names the config field MyLLM cannot hold. --minimind reads a
checkpoint of MiniMind's trainer/ scripts (minimind-3 included) the same way.

The safetensors file is read by a small function below, so importing needs neither
transformers nor the safetensors package.
"""

import argparse
import json
import math
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # model.py and tokenizer.py live in the repository root

from checkpoint import (check_state_dict, config_path, load_torch, save_config,  # noqa: E402
                        save_torch)
from scripts.export_hf import from_hf_state_dict, to_hf_state_dict  # noqa: E402
from model import LMConfig  # noqa: E402
from tokenizer import BOS_ID, EOS_ID, load_tokenizer, save_tokenizer  # noqa: E402

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_safetensors(path):
    """Read a safetensors file into {name: tensor}; see save_safetensors in export_hf.py."""
    tensors = {}
    with open(path, "rb") as f:
        header_size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_size))
        header.pop("__metadata__", None)
        for name, info in header.items():
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise SystemExit(f"{path}: {name} has dtype {info['dtype']}; MyLLM imports "
                                 f"float32, float16 and bfloat16 weights")
            start, end = info["data_offsets"]
            f.seek(8 + header_size + start)
            data = bytearray(f.read(end - start))  # a fresh, aligned, writable buffer
            tensors[name] = torch.frombuffer(data, dtype=SAFETENSORS_DTYPES[info["dtype"]]
                                             ).reshape(info["shape"])
    return tensors


def load_hf_weights(hf_dir: Path):
    """Every tensor of model.safetensors, or of the shards its index lists."""
    if (hf_dir / "model.safetensors").is_file():
        return load_safetensors(hf_dir / "model.safetensors")
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        tensors = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_safetensors(hf_dir / shard))
        return tensors
    raise SystemExit(f"{hf_dir} has no model.safetensors; MyLLM imports safetensors weights "
                     f"(save with model.save_pretrained(dir), which writes them)")


def unsupported(field, value, why):
    return SystemExit(f"config.json: {field} is {value!r}, but {why}")


def lm_config_from_hf(hf: dict):
    """The LMConfig of a transformers config.json, or SystemExit naming the first field that
    MyLLM cannot hold."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURE_READERS:
        raise unsupported("model_type", model_type, "MyLLM imports " + ", ".join(
            ARCHITECTURE_READERS) + " (granitemoeshared as export_hf.py writes it)")
    if hf.get("hidden_act", "silu") != "silu":
        raise unsupported("hidden_act", hf["hidden_act"], "MyLLM's SwiGLU uses silu")
    for field in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if hf.get(field, False):
            raise unsupported(field, hf[field], "MyLLM has no biases and no sliding window")
    # transformers 5 writes rope_parameters; transformers 4 wrote rope_theta and rope_scaling
    rope = hf.get("rope_parameters") or dict(hf.get("rope_scaling") or {},
                                            rope_theta=hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise unsupported("rope_parameters.rope_type", rope_type, "MyLLM imports plain RoPE "
                                                                  "only (rope_type 'default')")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    fields = dict(dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
                  n_kv_heads=hf.get("num_key_value_heads") or n_heads,
                  vocab_size=hf["vocab_size"], hidden_dim=hf["intermediate_size"],
                  norm_eps=hf.get("rms_norm_eps", 1e-6),
                  max_seq_len=hf.get("max_position_embeddings", 2048),
                  rope_theta=float(rope.get("rope_theta", 10000.0)))
    fields.update(ARCHITECTURE_READERS[model_type](hf))
    try:
        return LMConfig(**fields)
    except ValueError as e:
        raise SystemExit(f"config.json: {e}") from None


def llama_fields(hf):
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // n_heads):
        raise unsupported("head_dim", hf["head_dim"], "MyLLM's Llama-style model needs "
                                                      "hidden_size / num_attention_heads")
    return {}


def granite_fields(hf):
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    for field in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
        if hf.get(field, 1.0) != 1.0:
            raise unsupported(field, hf[field], "MyLLM has no such scaling (it must be 1)")
    if not math.isclose(hf.get("attention_multiplier", 1.0), head_dim ** -0.5):
        raise unsupported("attention_multiplier", hf.get("attention_multiplier", 1.0),
                          "MyLLM scales attention scores by 1 / sqrt(head_dim)")
    n_shared, rest = divmod(hf.get("shared_intermediate_size", 0), hf["intermediate_size"])
    if rest:
        raise unsupported("shared_intermediate_size", hf["shared_intermediate_size"],
                          "MyLLM needs a multiple of intermediate_size")
    return dict(use_moe=True, n_routed_experts=hf["num_local_experts"],
                num_experts_per_tok=hf["num_experts_per_tok"], n_shared_experts=n_shared)


def qwen3_fields(hf):
    return dict(qk_norm=True, head_dim=hf.get("head_dim") or
                hf["hidden_size"] // hf["num_attention_heads"])


def qwen3_moe_fields(hf):
    n_layers, step = hf["num_hidden_layers"], hf.get("decoder_sparse_step", 1)
    dense = sorted(set(hf.get("mlp_only_layers") or []) | {
        i for i in range(n_layers) if (i + 1) % step})
    if dense != list(range(len(dense))):
        raise unsupported("mlp_only_layers", dense, "MyLLM's dense layers come first")
    n_experts = hf.get("num_experts") or hf["num_local_experts"]  # transformers 4 and 5
    return dict(qwen3_fields(hf), use_moe=True, n_routed_experts=n_experts,
                num_experts_per_tok=hf["num_experts_per_tok"], n_shared_experts=0,
                moe_inter_dim=hf["moe_intermediate_size"], first_k_dense=len(dense),
                norm_topk_prob=hf.get("norm_topk_prob", True))


def deepseek_fields(hf):
    for field, value in (("n_group", 1), ("topk_group", 1), ("rope_interleave", True)):
        if hf.get(field, value) != value:
            raise unsupported(field, hf[field], f"MyLLM imports DeepSeek-V3 with {field} "
                                                f"{value} (one group of experts; RoPE pairs "
                                                "interleaved, as V3 ships)")
    first_dense = hf.get("first_k_dense_replace", 0)
    moe = {} if first_dense >= hf["num_hidden_layers"] else dict(
        use_moe=True, score_func="sigmoid", first_k_dense=first_dense,
        n_routed_experts=hf["n_routed_experts"], num_experts_per_tok=hf["num_experts_per_tok"],
        n_shared_experts=hf.get("n_shared_experts") or 0,
        moe_inter_dim=hf["moe_intermediate_size"],
        routed_scaling=float(hf.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=hf.get("norm_topk_prob", True))
    return dict(attention="mla", n_kv_heads=hf["num_attention_heads"],
                q_lora_rank=hf.get("q_lora_rank") or 0, kv_lora_rank=hf["kv_lora_rank"],
                qk_nope_head_dim=hf["qk_nope_head_dim"],
                qk_rope_head_dim=hf["qk_rope_head_dim"], v_head_dim=hf["v_head_dim"], **moe)


ARCHITECTURE_READERS = {"llama": llama_fields, "qwen3": qwen3_fields,
                        "qwen3_moe": qwen3_moe_fields, "deepseek_v3": deepseek_fields,
                        "granitemoeshared": granite_fields}


def import_hf(hf_dir):
    """(MyLLM state dict, LMConfig, config.json as a dict) of a transformers directory."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise SystemExit(f"{hf_dir}/config.json not found; pass --hf_dir a directory written "
                         f"by save_pretrained or export_hf.py")
    hf_json = json.loads((hf_dir / "config.json").read_text())
    config = lm_config_from_hf(hf_json)
    weights = fuse_experts(load_hf_weights(hf_dir))
    embedding = weights.get("model.embed_tokens.weight")
    lm_head = weights.get("lm_head.weight")
    if embedding is None:
        raise SystemExit(f"{hf_dir} has no model.embed_tokens.weight; is it a causal LM?")
    # transformers' Llama unties unless the config says otherwise
    if not hf_json.get("tie_word_embeddings", False) and (
            lm_head is None or not torch.equal(lm_head, embedding)):
        raise SystemExit("config.json: tie_word_embeddings is false and lm_head.weight differs "
                         "from model.embed_tokens.weight, but MyLLM ties them (one matrix)")
    try:
        state_dict = from_hf_state_dict(weights, config)
    except KeyError as e:
        raise SystemExit(f"{hf_dir} has no tensor {e.args[0]}; its weights do not match its "
                         f"config.json") from None
    try:
        check_state_dict(state_dict, config, str(hf_dir), "its config.json")
    except ValueError as e:
        raise SystemExit(str(e)) from None
    # converting back names every tensor MyLLM uses: anything else would be silently lost
    unused = set(weights) - set(to_hf_state_dict(state_dict, config)) - {"lm_head.weight"}
    unused = sorted(name for name in unused if "rotary_emb" not in name)  # derived, not learned
    if unused:
        raise SystemExit(f"{hf_dir} has tensors MyLLM has no place for: {', '.join(unused[:3])}"
                         + (", ..." if len(unused) > 3 else ""))
    return state_dict, config, hf_json


def fuse_experts(weights):
    """transformers 5 holds an MoE layer's experts fused, mlp.experts.gate_up_proj (E, 2 *
    hidden, D) and down_proj (E, D, hidden); files on the hub (and MiniMind's) hold one
    module each, mlp.experts.N.gate_proj and so on. The second form becomes the first."""
    fused = {k: v for k, v in weights.items() if not re.search(r"\.experts\.\d+\.", k)}
    layers = {k.split(".experts.")[0] for k in weights if re.search(r"\.experts\.\d+\.", k)}
    for layer in sorted(layers):
        n = 1 + max(int(k.split(".experts.")[1].split(".")[0]) for k in weights
                    if k.startswith(layer + ".experts."))
        expert = [f"{layer}.experts.{e}." for e in range(n)]
        fused[layer + ".experts.gate_up_proj"] = torch.stack(
            [torch.cat([weights[e + "gate_proj.weight"], weights[e + "up_proj.weight"]])
             for e in expert])
        fused[layer + ".experts.down_proj"] = torch.stack(
            [weights[e + "down_proj.weight"] for e in expert])
    return fused


def minimind_to_myllm(state, n_heads: int = LMConfig.n_heads, num_experts_per_tok: int = 1):
    """A state dict of MiniMind's trainer/ scripts (since late 2025: transformers' names, half
    split RoPE pairs; minimind-3 adds QK-norm, rms_norm_eps 1e-6 and an MoE of top-1
    experts without a shared one) as (MyLLM state dict, LMConfig). What the file cannot
    tell: n_heads where it has no QK-norm gains, and an MoE's k (minimind-3's is 1)."""
    state = {k.removeprefix("_orig_mod."): v.float() for k, v in state.items()}
    if "model.embed_tokens.weight" not in state:
        raise SystemExit("this file has no model.embed_tokens.weight: not a MiniMind trainer/ "
                         "checkpoint (MiniMind 2025's flat files load as they are)")
    vocab_size, dim = state["model.embed_tokens.weight"].shape
    layer0 = "model.layers.0."
    qk_norm = layer0 + "self_attn.q_norm.weight" in state
    head_dim = state[layer0 + "self_attn.q_norm.weight"].shape[0] if qk_norm else dim // n_heads
    n_heads = state[layer0 + "self_attn.q_proj.weight"].shape[0] // head_dim
    layers = {int(k.split(".")[2]) for k in state if k.startswith("model.layers.")}
    moe_layers = sorted(int(k.split(".")[2]) for k in state if k.endswith("mlp.gate.weight"))
    up = state[f"model.layers.{max(layers)}.mlp." + ("experts.0." if moe_layers else "")
               + "up_proj.weight"]
    fields = dict(dim=dim, n_layers=len(layers), n_heads=n_heads, head_dim=head_dim,
                  n_kv_heads=state[layer0 + "self_attn.k_proj.weight"].shape[0] // head_dim,
                  vocab_size=vocab_size, hidden_dim=state.get(
                      layer0 + "mlp.up_proj.weight", up).shape[0], qk_norm=qk_norm,
                  norm_eps=1e-6 if qk_norm else 1e-5)
    if moe_layers:
        fields.update(use_moe=True, n_shared_experts=0, moe_inter_dim=up.shape[0],
                      n_routed_experts=state[f"model.layers.{moe_layers[0]}.mlp.gate.weight"]
                      .shape[0], num_experts_per_tok=num_experts_per_tok,
                      first_k_dense=moe_layers[0], aux_loss_alpha=5e-4, seq_aux=False)
    config = LMConfig(**fields)
    # MiniMind's trainer layout is Qwen3's, or Qwen3-MoE's (experts without shared ones);
    # without QK-norm, the same less the q_norm and k_norm gains
    layout = "qwen3_moe" if moe_layers else "qwen3"
    return from_hf_state_dict(fuse_experts(state), config, layout), config


def eval_command(ckpt, tokenizer):
    """The eval_model.py command for this checkpoint: its config file says the rest."""
    command = f"python eval_model.py --ckpt {ckpt}"
    return command + (f" --tokenizer {tokenizer}" if tokenizer else "")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Import a transformers directory (Llama, Qwen3, "
                                            "Qwen3-MoE, DeepSeek-V3) or a MiniMind trainer/ "
                                            ".pth as a MyLLM checkpoint.")
    p.add_argument("--hf_dir", help="directory with config.json and model.safetensors")
    p.add_argument("--minimind", help="a .pth saved by MiniMind's trainer/ scripts "
                                      "(transformers-style keys; minimind-3 included)")
    p.add_argument("--n_heads", type=int, default=LMConfig.n_heads,
                   help="--minimind without QK-norm: the query heads (the shapes cannot tell)")
    p.add_argument("--num_experts_per_tok", type=int, default=1,
                   help="--minimind MoE: experts per token (minimind-3's 1; not in the file)")
    p.add_argument("--out", required=True, help="weights file to write, e.g. "
                                                "out/pretrain_512.pth; its config beside it")
    p.add_argument("--tokenizer_out", help="also write the directory's tokenizer here, e.g. "
                                           "out/tokenizer.json")
    args = p.parse_args(argv)
    if (args.hf_dir is None) == (args.minimind is None):
        p.error("pass one of --hf_dir DIR and --minimind FILE")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.minimind:
        try:
            saved = load_torch(args.minimind, "weights file")
        except ValueError as e:
            raise SystemExit(str(e)) from None
        state_dict, config = minimind_to_myllm(saved, args.n_heads, args.num_experts_per_tok)
        hf_json, source = {}, Path(args.minimind).parent
    else:
        state_dict, config, hf_json = import_hf(args.hf_dir)
        source = Path(args.hf_dir)
    out = save_torch(state_dict, args.out)
    save_config(config, out)  # what the shapes do not tell, for every script that loads it
    n_params = sum(t.numel() for k, t in state_dict.items() if k != "output.weight")
    print(f"wrote {out} and {config_path(out)} ({n_params / 1e6:.2f}M parameters)")

    tokenizer = source / "tokenizer.json"
    if args.tokenizer_out:
        try:
            save_tokenizer(load_tokenizer(tokenizer), args.tokenizer_out)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
        tokenizer = Path(args.tokenizer_out)
        print(f"wrote {tokenizer}")
    print(f"evaluate it with: {eval_command(out, tokenizer if tokenizer.is_file() else None)}")
    for name, ours in (("bos_token_id", BOS_ID), ("eos_token_id", EOS_ID)):
        if hf_json.get(name, ours) != ours:
            print(f"note: its {name} is {hf_json[name]}, MyLLM's is {ours}")


if __name__ == "__main__":
    main()
