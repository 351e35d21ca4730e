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
    """--dim, --n_layers, --use_moe: MiniMind's names for the model's shape. from_file: no
    defaults (None), for a script that reads the shape from a checkpoint (eval_model.py)."""
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
    return group


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
