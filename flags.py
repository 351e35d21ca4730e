"""The flags several scripts share, declared once here so that their names, help and
defaults cannot drift apart between scripts (MiniMind's names where it has them)."""

import argparse

from model import LMConfig

DEFAULT_TOKENIZER = "out/tokenizer.json"  # where tokenizer.py writes and dataset.py reads


def str_to_bool(value) -> bool:
    """argparse type of an on/off flag: `--use_moe`, `--use_moe 1` and `--use_moe true` all
    switch it on (MiniMind passes 1/0), `--use_moe 0` / `false` / `no` / `off` off."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 1/0, true/false, yes/no or on/off, not {value!r}")


def add_model_flags(parser, from_file=False):
    """--dim, --n_layers, --use_moe (MiniMind's names for the model's shape) and the
    architecture's flags (LMConfig's names; model_fields reads them). from_file: no defaults
    (None), for a script that reads the model from a checkpoint (eval_model.py)."""
    def default(value):
        return (None, f" (default {value}; with --ckpt, read from the file)") if from_file \
            else (value, "")
    (dim, dim_note), (layers, layers_note), (moe, moe_note) = map(
        default, (LMConfig.dim, LMConfig.n_layers, LMConfig.use_moe))
    group = parser.add_argument_group("model")
    group.add_argument("--dim", type=int, default=dim, help=f"model width{dim_note}")
    group.add_argument("--n_layers", type=int, default=layers, help=f"layers{layers_note}")
    group.add_argument("--use_moe", type=str_to_bool, nargs="?", const=True, default=moe,
                       help="mixture of experts: --use_moe, or --use_moe 1/0 as MiniMind "
                            f"passes it{moe_note}")
    arch = parser.add_argument_group(
        "architecture", "beyond MiniMind's Llama-style model (docs/architectures.md); saved "
        "beside the weights (pretrain_*.json), so other scripts read them from there")
    arch.add_argument("--qk_norm", type=str_to_bool, nargs="?", const=True, default=None,
                      help="RMSNorm on each head's queries and keys (Qwen3): --qk_norm or 1/0")
    arch.add_argument("--attention", choices=["gqa", "mla"], default=None,
                      help="gqa (default) or mla: DeepSeek-V2's multi-head latent attention")
    for name, about in MLA_FLAGS.items():
        arch.add_argument(f"--{name}", type=int, default=None, help=f"mla: {about}")
    arch.add_argument("--moe", choices=["minimind", "deepseek"], default=None,
                      help="an MoE: minimind (= --use_moe) or deepseek (" + ", ".join(
                          f"{k} {v}" for k, v in DEEPSEEK_MOE.items() if k != "use_moe")
                      + ", moe_inter_dim hidden_dim / 4); the flags below change either")
    for name, (kind, about) in MOE_FLAGS.items():
        arch.add_argument(f"--{name}", type=kind, default=None, help=about)
    arch.add_argument("--score_func", choices=["softmax", "sigmoid"], default=None,
                      help="the router's scores: softmax (MiniMind, Qwen3; default) or sigmoid "
                           "(DeepSeek-V3, with the balancing bias)")
    return group


MLA_FLAGS = {"q_lora_rank": "queries' low rank; 0 (default): a plain projection",
             "kv_lora_rank": "the latent each token caches; default 2 * head dim",
             "qk_nope_head_dim": "a head's query/key channels without RoPE; default hd / 2",
             "qk_rope_head_dim": "the RoPE key part, shared by the heads; default hd / 2",
             "v_head_dim": "a head's value channels; default the head dim"}
MOE_FLAGS = {"n_routed_experts": (int, "routed experts per MoE layer (default 4)"),
             "num_experts_per_tok": (int, "routed experts per token, k (default 2)"),
             "n_shared_experts": (int, "always-on experts (default 1)"),
             "moe_inter_dim": (int, "one expert's SwiGLU width (default hidden_dim)"),
             "first_k_dense": (int, "the first layers keep a dense feed-forward (default 0)"),
             "routed_scaling": (float, "the routed experts' output multiplier (default 1)"),
             "bias_update_speed": (float, "the sigmoid router's balancing bias step per "
                                          "optimizer step; 0: off"),
             "aux_loss_alpha": (float, "the load-balancing loss's weight (default 0.1)")}
# DeepSeek-V3's MoE at MyLLM's scale: 16 experts a quarter of the SwiGLU wide, 3 routed and 1
# shared per token (as many active weights as the dense feed-forward), the first layer
# dense, sigmoid scores with the balancing bias, and only a trace of the auxiliary loss.
# The bias moves 0.01 a step, not V3's 0.001: in runs of hundreds of steps 0.001 leaves the
# load uneven (docs/architectures.md measures both)
DEEPSEEK_MOE = dict(use_moe=True, score_func="sigmoid", n_routed_experts=16,
                    num_experts_per_tok=3, n_shared_experts=1, first_k_dense=1,
                    bias_update_speed=1e-2, aux_loss_alpha=1e-4)


def model_fields(args, presets: bool = True) -> dict:
    """The LMConfig fields that add_model_flags' flags set (those given, or with defaults).
    presets False: --moe deepseek sets its kind only, not its sizes (a script that checks a
    checkpoint against the flags given)."""
    fields = {}
    if args.moe == "deepseek" and presets:
        hidden = LMConfig(dim=args.dim or LMConfig.dim).hidden_dim
        fields.update(DEEPSEEK_MOE, moe_inter_dim=hidden // 4)
    elif args.moe == "deepseek":
        fields["score_func"] = "sigmoid"
    names = ["dim", "n_layers", "use_moe", "qk_norm", "attention", *MLA_FLAGS, *MOE_FLAGS,
             "score_func"]
    fields.update({name: getattr(args, name) for name in names
                   if getattr(args, name) is not None})
    if args.moe:
        fields["use_moe"] = True
    return fields


def add_device_flags(parser, dtype=True):
    """--device and --dtype, read by pick_device and mixed_precision."""
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:1, cpu or mps; default: cuda, else mps, else cpu")
    if dtype:
        parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                            help="autocast dtype; default bfloat16 on CUDA and on CPUs with bf16 "
                                 "units (AMX or AVX512-BF16), else float32")


def add_source_flags(parser, data_path_default=None, data_path_help=None):
    """Where raw text comes from: --data_path, --text_field, --skip_bad_lines."""
    parser.add_argument("--data_path", nargs="+", default=data_path_default,
                        help=data_path_help or ".jsonl/.txt files (optionally .gz) or globs, "
                                               "or 'builtin' for the text that ships with Python")
    parser.add_argument("--text_field", default="text", help="JSON field that holds the text")
    parser.add_argument("--skip_bad_lines", action="store_true",
                        help="skip and count malformed lines instead of stopping")


def add_out_dir_flag(parser):
    parser.add_argument("--out_dir", default="out", help="where train_pretrain.py writes (and "
                        "the other scripts find) weights, resume file, tokenizer, data, logs")


def add_tokenizer_flag(parser):
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json, or a folder holding one; default "
                             "OUT_DIR/tokenizer.json (out/tokenizer.json in dataset.py)")


def add_prepare_flags(parser):
    """How prepare.prepare() turns sources into token files (dataset.py and training)."""
    add_tokenizer_flag(parser)
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one per --data_path entry: how often its documents appear in "
                             "training (2 repeats each document, 0.5 keeps half)")
    parser.add_argument("--split_seed", type=int, default=0,
                        help="seed of the train/val split of the documents")
    parser.add_argument("--prep_workers", type=int, default=None,
                        help="processes for cleaning and MinHash (default: CPU count, max 8)")
    levers = parser.add_argument_group("data levers (data_order.py; the training split only)")
    levers.add_argument("--quality_model", default=None,
                        help="a scorer from scripts/train_quality.py: every document scored")
    levers.add_argument("--quality_keep", type=float, default=None,
                        help="keep this fraction of the training documents, the best scored")
    levers.add_argument("--quality_threshold", type=float, default=None,
                        help="keep the training documents scoring at least this")
    levers.add_argument("--order", choices=("shuffle", "similar", "curriculum"),
                        default="shuffle", help="of the training documents: shuffled windows "
                        "(default), similar documents side by side, or by ascending score")
