"""Talk to a pretrained MyLLM model, measure it, and probe what it knows.

    python eval_model.py --dim 512 --n_layers 8            # sample prompts, then interactive
    echo "The for statement" | python eval_model.py --dim 512 --n_layers 8 --temperature 0
    python eval_model.py --dim 512 --n_layers 8 --eval     # loss, perplexity, bits per byte
    python eval_model.py --dim 512 --n_layers 8 --probe probes/builtin_en.jsonl
    python eval_model.py --dim 512 --n_layers 8 --bench all   # benchmarks.py

A pretrained model only continues text: every prompt starts a new document (<s> prompt) and
the model writes what it expects to come next, until </s> or --max_new_tokens. What --eval
and --probe measure, and why bits per byte, is explained in evaluator.py.
"""

import argparse
import itertools
import sys
from pathlib import Path

import torch

import dataset
from benchmarks import add_bench_flags, bench_cli, check_tasks
from checkpoint import arch_tag, checkpoint_paths, load_model
from corpus import iter_texts
from decode import StaticDecoder, complete, fast_decoding
from device import device_error, pick_device
from evaluator import (batches_of, evaluate, load_probes, print_probe_report, run_probes,
                       sample_prompts, text_windows)
from flags import (add_device_flags, add_model_flags, add_out_dir_flag, add_tokenizer_flag,
                   model_fields)
from model import LMConfig
from prepare import check_tokenizer
from tokenizer import load_tokenizer, token_byte_counts

MINIMIND_MODES = {0: "pretrain", 1: "full_sft", 2: "rlhf", 3: "reason", 4: "ppo_actor",
                  5: "grpo"}


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """--help with each flag's default, where it has one (None: set by the file or the run)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Generate text with a pretrained MyLLM model, evaluate it, probe it.",
        formatter_class=DefaultsHelp)
    model = add_model_flags(parser, from_file=True)  # the "model" group of flags
    model.add_argument("--hidden_size", dest="dim", type=int, help=argparse.SUPPRESS)
    model.add_argument("--num_hidden_layers", dest="n_layers", type=int, help=argparse.SUPPRESS)
    add_out_dir_flag(model)
    model.add_argument("--n_heads", type=int, default=None,
                       help="default: the config file's, else 8")
    model.add_argument("--n_kv_heads", type=int, default=None, help="default: read from the file")
    model.add_argument("--ckpt", default=None, help="load this .pth instead of "
                       "{out_dir}/pretrain_{dim}{_moe}.pth")
    add_tokenizer_flag(model)
    add_device_flags(model, dtype=False)
    model.add_argument("--model_mode", type=int, default=0,
                       help="MiniMind's weights kind; MyLLM has 0 = pretrained only")
    model.add_argument("--load", type=int, default=0,
                       help="MiniMind's loader: 0 = native .pth (the only one here)")

    gen = parser.add_argument_group("generation")
    gen.add_argument("--prompt", default=None, help="one prompt (default: sample prompts, "
                     "then interactive; or one prompt per line of piped stdin)")
    gen.add_argument("--max_new_tokens", type=int, default=256)
    gen.add_argument("--temperature", type=float, default=0.85, help="0 = greedy")
    gen.add_argument("--top_p", type=float, default=0.85, help="1 = off")
    gen.add_argument("--top_k", type=int, default=0, help="0 = off")
    gen.add_argument("--repetition_penalty", type=float, default=1.0, help="1 = off")
    gen.add_argument("--sample_seed", type=int, default=None, help="for repeatable sampling")
    gen.add_argument("--no_cache", action="store_true",
                     help="recompute every step without the KV cache (same output, slower)")
    gen.add_argument("--show_speed", action="store_true",
                     help="print tokens/s and time to first token")

    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--eval", action="store_true",
                    help="print loss, perplexity and bits per byte on --eval_data")
    ev.add_argument("--eval_data", default=None,
                    help=".jsonl/.txt file (optionally .gz) or a prepared folder; implies --eval "
                         "(default: the validation split of the prepared data in {out_dir}/data)")
    ev.add_argument("--text_field", default="text", help="JSON field holding the text")
    ev.add_argument("--eval_seq_len", "--max_seq_len", type=int, default=512,
                    help="evaluation window in tokens (--max_seq_len: MiniMind's name)")
    ev.add_argument("--batch_size", type=int, default=8)
    ev.add_argument("--eval_iters", type=int, default=0, help="stop after this many batches "
                    "(0 = all)")
    ev.add_argument("--probe", default=None,
                    help='.jsonl of {"prompt", "choices", "answer"} lines, e.g. probes/*.jsonl')
    bench = add_bench_flags(parser)
    bench.add_argument("--bench_data", default=None,
                       help="held-out text for heldout_cloze: a prepared folder (its validation "
                            "split; its training split is searched for contamination) or a "
                            ".jsonl/.txt file")
    bench.add_argument("--bench_out", default=None, help="FILE.jsonl: one record per item")
    args = parser.parse_args(argv)
    args.device = args.device or str(pick_device())  # a name, checked below
    check_flag_values(parser, args)
    return args


def find_prepared_data(data_dir, tok):
    """The most recently prepared dataset under data_dir that was made with tok."""
    candidates = []
    for folder in Path(data_dir).glob("*/"):
        try:
            check_tokenizer(folder, tok)
        except (ValueError, FileNotFoundError, OSError):
            continue  # another tokenizer's data, or not a prepared folder
        candidates.append(((folder / "meta.json").stat().st_mtime, folder))
    if not candidates:
        raise FileNotFoundError(f"no data prepared with this tokenizer in {data_dir}; pass "
                                "--eval_data FILE (.jsonl/.txt), or train first")
    return max(candidates)[1]


def eval_batches(args, tok):
    """(X, Y, loss_mask) batches of --eval_data, or of the default validation split."""
    path = Path(args.eval_data) if args.eval_data else find_prepared_data(
        Path(args.out_dir) / "data", tok)
    if path.is_dir():
        check_tokenizer(path, tok)
        val = dataset.PretrainDataset(path, split="val", max_seq_len=args.eval_seq_len)
        print(f"evaluating on the validation split of {path}", file=sys.stderr)
        return torch.utils.data.DataLoader(val, batch_size=args.batch_size)
    if not path.is_file():
        raise FileNotFoundError(f"--eval_data {path} not found; pass a .jsonl/.txt file or a "
                                "prepared folder")
    texts = iter_texts([path], args.text_field)  # a Path: a name with [ or * is no glob
    return batches_of(text_windows(tok, texts, args.eval_seq_len), args.batch_size)


def prompts_to_run(args, tok, stdin):
    """--prompt; else prompts piped on stdin, one per line; else samples, then interactive."""
    if args.prompt is not None:
        yield args.prompt
        return
    if not stdin.isatty():
        for line in stdin:
            if line.strip():
                yield line.rstrip("\r\n")
        return
    for prompt in sample_prompts(tok):
        print(f"> {prompt}")
        yield prompt
    print("Type a prompt for the model to continue (an empty line or Ctrl-D quits).")
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            return
        if not prompt.strip():
            return
        yield prompt


def run(args):
    check_minimind_flags(args)
    tok = load_tokenizer(args.tokenizer or Path(args.out_dir))
    fields = model_fields(args, False)  # the architecture flags given, to check the file by
    if args.ckpt:
        path = Path(args.ckpt)
        dim, n_layers = args.dim, args.n_layers
    else:
        dim, n_layers = args.dim or LMConfig.dim, args.n_layers or LMConfig.n_layers
        path = checkpoint_paths(args.out_dir, dim, arch_tag(fields))[0]
    model = load_model(path, tok.get_vocab_size(), args.device, n_heads=args.n_heads,
                       n_kv_heads=args.n_kv_heads, **{**fields, "dim": dim, "n_layers": n_layers})
    c = model.config
    print(f"{path}: {model.num_params() / 1e6:.2f}M parameters (dim {c.dim}, n_layers "
          f"{c.n_layers}{', MoE' if c.use_moe else ''}), vocabulary {c.vocab_size}, "
          f"on {args.device}", file=sys.stderr)

    if args.eval or args.eval_data:
        check_eval_window(args, c)
        batches = eval_batches(args, tok)
        total = len(batches) if hasattr(batches, "__len__") else None  # a prepared split
        if args.eval_iters:
            batches = itertools.islice(batches, args.eval_iters)
            total = min(total or args.eval_iters, args.eval_iters)
        result = evaluate(model, batches, token_byte_counts(tok), {"total": total})
        print(f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f} | "
              f"bits per byte {result['bits_per_byte']:.4f} | {result['tokens']:,} tokens, "
              f"{result['bytes']:,} bytes")
    if args.probe:
        probes = load_probes(args.probe)
        print_probe_report(probes, run_probes(model, tok, probes), sys.stdout)
    if args.bench:
        bench_cli(model, tok, check_tasks(args.bench), args.bench_items, args.bench_data,
                  args.text_field, args.bench_out, args.eval_seq_len)
    if (args.eval or args.eval_data or args.probe or args.bench) and args.prompt is None:
        return

    generator = None
    if args.sample_seed is not None:
        generator = torch.Generator(device=args.device).manual_seed(args.sample_seed)
    decoder = None  # on a GPU, one CUDA-graph decoder for every prompt of up to 256 tokens
    if fast_decoding(model) and not args.no_cache:
        decoder = StaticDecoder(model, 1, min(256 + args.max_new_tokens, c.max_seq_len))
    for prompt in prompts_to_run(args, tok, sys.stdin):
        sys.stdout.write(prompt)
        done = complete(model, tok, prompt, sys.stdout, args.max_new_tokens, args.temperature,
                        args.top_k, args.top_p, args.repetition_penalty,
                        use_cache=not args.no_cache, generator=generator, decoder=decoder)
        print("\n")
        if args.show_speed and done.n_tokens:
            # decoding speed: the tokens after the first, over the time after the first
            rate = (done.n_tokens - 1) / max(done.total_s - done.first_token_s, 1e-9)
            print(f"[{done.n_tokens} tokens in {done.total_s:.2f} s: {rate:.1f} tokens/s, "
                  f"first token after {done.first_token_s * 1000:.0f} ms]\n")


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def check_flag_values(parser, args):
    """Stop with a usage error on a flag value that cannot work (comparisons written so that
    nan fails them too)."""
    minimum = dict(n_heads=1, eval_seq_len=1, batch_size=1, max_new_tokens=0, top_k=0,
                   eval_iters=0, dim=1, n_layers=1, n_kv_heads=1, bench_items=1)
    for name, low in minimum.items():
        value = getattr(args, name)
        if value is not None and value < low:  # dim, n_layers and n_kv_heads may be unset
            parser.error(f"--{name} must be at least {low}, not {value}")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top_p must be above 0 and at most 1 (1 = off), not {args.top_p}")
    if not args.temperature >= 0:
        parser.error(f"--temperature must be at least 0 (0 = greedy), not {args.temperature}")
    if not args.repetition_penalty > 0:
        parser.error(f"--repetition_penalty must be above 0 (1 = off), not "
                     f"{args.repetition_penalty}")
    if problem := device_error(args.device):
        parser.error(problem)


def check_minimind_flags(args):
    """MiniMind's eval_model.py flags that name weights MyLLM never makes."""
    if args.model_mode != 0:
        kind = MINIMIND_MODES.get(args.model_mode, "unknown")
        raise ValueError(f"--model_mode {args.model_mode} asks for MiniMind's {kind} weights; "
                         "MyLLM trains only pretrained weights: use --model_mode 0")
    if args.load != 0:
        raise ValueError(f"--load {args.load} asks for a transformers model folder; MyLLM loads "
                         "native .pth files (--load 0): convert the folder with `python "
                         "scripts/import_hf.py --hf_dir FOLDER --out out/pretrain_512.pth`, "
                         "which prints the command that loads it")


def check_eval_window(args, config):
    if args.eval_seq_len > config.max_seq_len:
        raise ValueError(f"--eval_seq_len {args.eval_seq_len} is longer than the model's "
                         f"context ({config.max_seq_len} tokens); pass --eval_seq_len "
                         f"{config.max_seq_len} or less")


if __name__ == "__main__":
    sys.exit(main())
