"""Import a transformers model directory as a MyLLM checkpoint: the reverse of export_hf.py.

    python scripts/import_hf.py --hf_dir out/hf-512 --out out/pretrain_512.pth

reads config.json and model.safetensors (or its shards) and writes a weights-only state dict
that eval_model.py loads, printing the flags to load it with. It takes a Llama directory of
a shape MyLLM can hold: SwiGLU with silu, no biases, plain RoPE, and tied embeddings (or
untied ones that are equal), and the GraniteMoeShared directories that export_hf.py writes.
Anything else stops with one line that names the config field MyLLM cannot hold.

The safetensors file is read by a small function below, so importing needs neither
transformers nor the safetensors package.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # model.py and tokenizer.py live in the repository root

from checkpoint import check_state_dict, save_torch  # noqa: E402
from export_hf import from_hf_state_dict, to_hf_state_dict  # noqa: E402
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
    if model_type not in ("llama", "granitemoeshared"):
        raise unsupported("model_type", model_type, "MyLLM imports llama (and granitemoeshared "
                                                    "as export_hf.py writes it)")
    if hf.get("hidden_act", "silu") != "silu":
        raise unsupported("hidden_act", hf["hidden_act"], "MyLLM's SwiGLU uses silu")
    for field in ("attention_bias", "mlp_bias"):
        if hf.get(field, False):
            raise unsupported(field, hf[field], "MyLLM's linear layers have no bias")
    # transformers 5 writes rope_parameters; transformers 4 wrote rope_theta and rope_scaling
    rope = hf.get("rope_parameters") or dict(hf.get("rope_scaling") or {},
                                            rope_theta=hf.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise unsupported("rope_parameters.rope_type", rope_type, "MyLLM imports plain RoPE "
                                                                  "only (rope_type 'default')")
    dim, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // n_heads):
        raise unsupported("head_dim", hf["head_dim"], f"MyLLM needs hidden_size / "
                                                      f"num_attention_heads = {dim // n_heads}")
    moe = {}
    if model_type == "granitemoeshared":
        for field in ("embedding_multiplier", "residual_multiplier", "logits_scaling"):
            if hf.get(field, 1.0) != 1.0:
                raise unsupported(field, hf[field], "MyLLM has no such scaling (it must be 1)")
        if not math.isclose(hf.get("attention_multiplier", 1.0), (dim // n_heads) ** -0.5):
            raise unsupported("attention_multiplier", hf.get("attention_multiplier", 1.0),
                              "MyLLM scales attention scores by 1 / sqrt(head_dim)")
        if hf["num_experts_per_tok"] < 2:
            raise unsupported("num_experts_per_tok", hf["num_experts_per_tok"],
                              "MyLLM renormalises the top-k weights only for k >= 2")
        n_shared, rest = divmod(hf.get("shared_intermediate_size", 0), hf["intermediate_size"])
        if rest:
            raise unsupported("shared_intermediate_size", hf["shared_intermediate_size"],
                              "MyLLM needs a multiple of intermediate_size")
        moe = dict(use_moe=True, n_routed_experts=hf["num_local_experts"],
                   num_experts_per_tok=hf["num_experts_per_tok"], n_shared_experts=n_shared)
    try:
        return LMConfig(
            dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
            n_kv_heads=hf.get("num_key_value_heads") or n_heads, vocab_size=hf["vocab_size"],
            hidden_dim=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
            max_seq_len=hf.get("max_position_embeddings", 2048),
            rope_theta=float(rope.get("rope_theta", 10000.0)), **moe)
    except ValueError as e:
        raise SystemExit(f"config.json: {e}") from None


def import_hf(hf_dir):
    """(MyLLM state dict, LMConfig, config.json as a dict) of a transformers directory."""
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise SystemExit(f"{hf_dir}/config.json not found; pass --hf_dir a directory written "
                         f"by save_pretrained or export_hf.py")
    hf_json = json.loads((hf_dir / "config.json").read_text())
    config = lm_config_from_hf(hf_json)
    weights = load_hf_weights(hf_dir)
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


# What the model computes that neither the weights' shapes nor eval_model.py's flags tell
UNSTATED_FIELDS = ("norm_eps", "rope_theta", "num_experts_per_tok")


def eval_command(config: LMConfig, ckpt, tokenizer):
    """The eval_model.py command for this checkpoint, and the fields in which the model
    differs from MyLLM's defaults, which eval_model.py assumes for them."""
    flags = f"--dim {config.dim} --n_layers {config.n_layers}" + " --use_moe" * config.use_moe
    if config.n_heads != LMConfig.n_heads:  # the one head count the shapes do not tell
        flags += f" --n_heads {config.n_heads}"
    command = f"python eval_model.py {flags} --ckpt {ckpt}"
    if tokenizer:
        command += f" --tokenizer {tokenizer}"
    default = LMConfig(dim=config.dim, n_heads=config.n_heads, n_kv_heads=config.n_kv_heads)
    differ = [(name, getattr(default, name), getattr(config, name)) for name in UNSTATED_FIELDS
              if getattr(config, name) != getattr(default, name)]
    return command, differ


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Import a transformers Llama directory as a MyLLM "
                                            "checkpoint.")
    p.add_argument("--hf_dir", required=True, help="directory with config.json and "
                                                   "model.safetensors")
    p.add_argument("--out", required=True, help="weights file to write, e.g. "
                                                "out/pretrain_512.pth")
    p.add_argument("--tokenizer_out", help="also write the directory's tokenizer here, e.g. "
                                           "out/tokenizer.json")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    state_dict, config, hf_json = import_hf(args.hf_dir)
    out = save_torch(state_dict, args.out)
    n_params = sum(t.numel() for k, t in state_dict.items() if k != "output.weight")
    print(f"wrote {out} ({n_params / 1e6:.2f}M parameters)")

    tokenizer = Path(args.hf_dir) / "tokenizer.json"
    if args.tokenizer_out:
        try:
            save_tokenizer(load_tokenizer(tokenizer), args.tokenizer_out)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(str(e)) from None
        tokenizer = Path(args.tokenizer_out)
        print(f"wrote {tokenizer}")
    command, differ = eval_command(config, out, tokenizer if tokenizer.is_file() else None)
    print(f"evaluate it with: {command}")
    if differ:
        print("note: eval_model.py assumes " + ", ".join(f"{n}={d}" for n, d, _ in differ)
              + " but this model has " + ", ".join(f"{n}={v}" for n, _, v in differ)
              + "; build LMConfig with these to compute what it computes in transformers")
    for name, ours in (("bos_token_id", BOS_ID), ("eos_token_id", EOS_ID)):
        if hf_json.get(name, ours) != ours:
            print(f"note: its {name} is {hf_json[name]}, MyLLM's is {ours}")


if __name__ == "__main__":
    main()
