"""Talk to a pretrained MyLLM model, measure it, and probe what it knows.

    python eval_model.py --dim 512 --n_layers 8            # sample prompts, then interactive
    echo "The for statement" | python eval_model.py --dim 512 --n_layers 8 --temperature 0
    python eval_model.py --dim 512 --n_layers 8 --eval     # loss, perplexity, bits per byte
    python eval_model.py --dim 512 --n_layers 8 --probe probes/builtin_en.jsonl

A pretrained model only continues text: every prompt starts a new document (<s> prompt) and
the model writes what it expects to come next, until </s> or --max_new_tokens.

Loss and perplexity depend on the tokenizer: a tokenizer that cuts text into more, smaller
tokens gets a lower loss per token for the same model quality. Bits per byte divides the
total loss by the UTF-8 bytes of the text instead, so models with different tokenizers can
be compared.
"""

import argparse
import contextlib
import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import dataset
from checkpoint import checkpoint_paths, load_model
from device import device_error, pick_device
from flags import add_device_flags, add_model_flags, add_out_dir_flag, add_tokenizer_flag
from corpus import iter_texts
from decode import StaticDecoder, fast_decoding
from tokenizer import (BOS_ID, EOS_ID, PAD_ID, frame_document, load_tokenizer, token_byte_counts,
                       token_bytes)

# Pretraining-only prompts, in the style of each corpus: the built-in corpus is Python's
# own documentation; MiniMind's pretrain_hq.jsonl is general Chinese text.
SAMPLE_PROMPTS_EN = [
    'The "for" statement is used to',
    "Return a new list containing",
    "If the file does not exist,",
    "This module provides functions for",
    "Raise ValueError if",
]
SAMPLE_PROMPTS_ZH = [
    "地球是太阳系中",
    "长城是中国古代",
    "水在标准大气压下",
    "学习一门新的语言",
    "光合作用是指",
]
PROBE_EXAMPLE = '{"prompt": "...", "choices": ["...", "..."], "answer": 0}'  # one line
MINIMIND_MODES = {0: "pretrain", 1: "full_sft", 2: "rlhf", 3: "reason", 4: "ppo_actor",
                  5: "grpo"}


def looks_chinese(tok):
    """True when at least a tenth of the vocabulary holds Chinese characters."""
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in piece.decode("utf-8", "ignore"))
                  for piece in token_bytes(tok))
    return chinese >= tok.get_vocab_size() / 10


def sample_prompts(tok):
    """The sample prompts in the tokenizer's language."""
    return SAMPLE_PROMPTS_ZH if looks_chinese(tok) else SAMPLE_PROMPTS_EN


def default_probes(tok):
    """The shipped probe set in the tokenizer's language."""
    return "probes/zh_basic.jsonl" if looks_chinese(tok) else "probes/builtin_en.jsonl"


class TextStream:
    """Turns token ids, pushed one at a time, into text that is safe to print at once.

    Byte-level BPE splits most Chinese characters across tokens, and the bytes of half a
    character decode to U+FFFD. So tokens wait in `pending` until their text no longer ends
    in U+FFFD. Decoding byte-level tokens joins their bytes, so once a piece ends on a whole
    character, what follows decodes on its own: the pieces add up to decode(all ids).
    """

    def __init__(self, tok):
        self.tok = tok
        self.pending = []

    def push(self, token_id):
        """The new printable text, or "" while a character is incomplete."""
        self.pending.append(token_id)
        text = self.tok.decode(self.pending)
        if text.endswith("\ufffd"):
            return ""
        self.pending = []
        return text

    def flush(self):
        """What still waits at the end (bytes that never became a whole character)."""
        text, self.pending = self.tok.decode(self.pending), []
        return text


def prompt_ids(tok, prompt, context):
    """<s> prompt, as a new document starts in the training data; checked against context."""
    ids = [BOS_ID] + tok.encode(prompt, add_special_tokens=False).ids
    if len(ids) >= context:
        raise ValueError(f"the prompt is {len(ids)} tokens but the model's context is {context} "
                         "(max_seq_len); shorten the prompt")
    return ids


@dataclass
class Completion:
    text: str
    n_tokens: int
    first_token_s: float  # time to first token: the prompt's forward pass and one step
    total_s: float


def complete(model, tok, prompt, out, max_new_tokens=256, temperature=0.85, top_k=0,
             top_p=0.85, repetition_penalty=1.0, use_cache=True, generator=None, decoder=None):
    """Write the model's continuation of prompt to out as it is generated. decoder: a
    decode.StaticDecoder to use where the prompt and its continuation fit it."""
    context = model.config.max_seq_len
    ids = prompt_ids(tok, prompt, context)
    device = model.tok_embeddings.weight.device
    max_new_tokens = min(max_new_tokens, context - len(ids))
    steps = model.generate(
        torch.tensor([ids], device=device), max_new_tokens=max_new_tokens,
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
        eos_token_id=EOS_ID, use_cache=use_cache, stream=True, generator=generator,
        decoder=decoder if use_cache and decoder and decoder.fits(1, len(ids) + max_new_tokens)
        else None)
    stream, pieces = TextStream(tok), []
    n_tokens, first_token_s = 0, 0.0
    start = time.perf_counter()
    for step in steps:
        token = int(step[0])  # waits for the device
        n_tokens += 1
        if n_tokens == 1:
            first_token_s = time.perf_counter() - start
        if token == EOS_ID:
            break
        pieces.append(stream.push(token))
        out.write(pieces[-1])
        out.flush()
    pieces.append(stream.flush())
    out.write(pieces[-1])
    return Completion("".join(pieces), n_tokens, first_token_s, time.perf_counter() - start)


def text_windows(tok, texts, max_seq_len):
    """Windows of up to max_seq_len + 1 tokens over the stream of framed documents.

    Consecutive windows share one token (the last input of one is the first of the next),
    so every token but the very first is predicted exactly once.
    """
    stream = []
    for text in texts:
        stream += frame_document(tok.encode(text, add_special_tokens=False).ids)
        while len(stream) > max_seq_len:
            yield stream[:max_seq_len + 1]
            stream = stream[max_seq_len:]
    if len(stream) > 1:
        yield stream


def collate(windows):
    """(X, Y, loss_mask) from token windows; short windows are padded and masked out."""
    width = max(len(w) for w in windows) - 1
    X = torch.full((len(windows), width), PAD_ID, dtype=torch.long)
    Y = torch.full((len(windows), width), PAD_ID, dtype=torch.long)
    loss_mask = torch.zeros(len(windows), width)
    for row, w in enumerate(windows):
        X[row, :len(w) - 1] = torch.tensor(w[:-1])
        Y[row, :len(w) - 1] = torch.tensor(w[1:])
        loss_mask[row, :len(w) - 1] = 1
    return X, Y, loss_mask


def batches_of(windows, batch_size):
    """Collated batches of batch_size windows (the last one may be smaller)."""
    batch = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch:
        yield collate(batch)


@torch.no_grad()  # not inference_mode: training all-reduces the sums across ranks
def loss_sums(model, batches, byte_counts, autocast=None, progress=None):
    """(summed NLL in nats, target tokens, their UTF-8 bytes) over (X, Y, loss_mask) batches,
    as one float64 tensor on the model's device: sums, so that batches (and DDP ranks) add
    up exactly and every target token weighs the same. byte_counts[id] is the number of
    bytes token id stands for (tokenizer.token_bytes; special tokens 0). progress: a bar
    on stderr, {"total": batches or None}."""
    device = model.tok_embeddings.weight.device
    sum_device = torch.device("cpu") if device.type == "mps" else device  # mps has no float64
    byte_counts = torch.as_tensor(byte_counts, dtype=torch.float64, device=sum_device)
    sums = torch.zeros(3, dtype=torch.float64, device=sum_device)
    for X, Y, loss_mask in tqdm(batches, desc="evaluating", unit="batch", file=sys.stderr,
                                disable=progress is None, **(progress or {})):
        X, Y = X.to(device), Y.to(device)
        with autocast or contextlib.nullcontext():
            logits = model(X).logits  # (B, T, vocab)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), Y.flatten(), reduction="none")
        nll, targets = nll.to(sum_device).double(), Y.flatten().to(sum_device)
        mask = loss_mask.flatten().to(sum_device).double()
        sums += torch.stack([(nll * mask).sum(), mask.sum(), (byte_counts[targets] * mask).sum()])
    return sums


def summarize(sums):
    """Loss (nats per target token), perplexity and bits per byte from loss_sums:
    bits per byte = total NLL / ln 2 / UTF-8 bytes of the target tokens."""
    nll, n_tokens, n_bytes = sums.tolist()
    loss = nll / n_tokens
    return dict(loss=loss, perplexity=math.exp(min(loss, 700)), tokens=int(n_tokens),
                bytes=int(n_bytes),
                bits_per_byte=nll / math.log(2) / n_bytes if n_bytes else float("nan"))


def evaluate(model, batches, byte_counts, progress=None):
    """summarize(loss_sums(...)) for one process; ValueError when nothing is predicted."""
    sums = loss_sums(model, batches, byte_counts, progress=progress)
    if sums[1] == 0:
        raise ValueError("the evaluation data has no tokens to predict (no document of 2 "
                         "tokens or more); pass --eval_data with text in it")
    return summarize(sums)


def load_probes(path):
    """Read a probe file: one {"prompt": str, "choices": [str, ...], "answer": int} per line."""
    path = Path(path)
    shipped = Path(__file__).resolve().parent / path
    if not path.is_file() and not path.is_absolute() and shipped.is_file():
        path = shipped  # probes/… that ship with MyLLM work from any directory
    if not path.is_file():
        raise FileNotFoundError(f"probe file {path} not found; pass a .jsonl file such as "
                                "probes/builtin_en.jsonl")
    probes = []
    with open(path, "rb") as f:  # bytes, so that a line that is not UTF-8 can be named
        for line_no, line in enumerate(f, 1):
            if line.strip():
                probes.append(check_probe(line, f"{path}:{line_no}"))
    if not probes:
        raise ValueError(f"{path} holds no probes; write one per line, like {PROBE_EXAMPLE}")
    return probes


@torch.inference_mode()
def continuation_logprob(model, context_ids, continuation_ids):
    """log p(continuation | context) in nats: the sum over the continuation's tokens."""
    device = model.tok_embeddings.weight.device
    ids = torch.tensor([context_ids + continuation_ids], device=device)
    logprobs = model(ids[:, :-1]).logits.float().log_softmax(dim=-1)[0]  # (T - 1, vocab)
    per_token = logprobs.gather(1, ids[0, 1:, None]).squeeze(1)  # log p(ids[t + 1] | ids[:t + 1])
    return per_token[len(context_ids) - 1:].sum().item()


def run_probes(model, tok, probes):
    """Score every choice of every probe: for each probe a list of (total log-prob in nats,
    log-prob per UTF-8 byte), one per choice."""
    results = []
    for n, probe in enumerate(probes, 1):
        context = [BOS_ID] + tok.encode(probe["prompt"], add_special_tokens=False).ids
        scores = []
        for choice in probe["choices"]:
            continuation = tok.encode(choice, add_special_tokens=False).ids
            if len(context) + len(continuation) > model.config.max_seq_len:
                raise ValueError(f"probe {n} is longer than the model's context "
                                 f"({model.config.max_seq_len} tokens); shorten it")
            logprob = continuation_logprob(model, context, continuation)
            scores.append((logprob, logprob / len(choice.encode("utf-8"))))
        results.append(scores)
    return results


def probe_summary(probes, results):
    """What run_probes' results say: how many probes' answers have the highest total log-prob
    (right, and its share: accuracy) or log-prob per byte (right_per_byte,
    accuracy_per_byte), and each probe's answer log-prob in nats. Training logs this at every
    evaluation (kind "probe")."""
    def right(by):  # by 0: total log-prob, 1: per byte
        return [max(range(len(scores)), key=lambda i: scores[i][by]) == probe["answer"]
                for probe, scores in zip(probes, results)]
    return {"right": sum(right(0)), "right_per_byte": sum(right(1)), "probes": len(probes),
            "accuracy": sum(right(0)) / len(probes),
            "accuracy_per_byte": sum(right(1)) / len(probes),
            "answer_logprob": [scores[probe["answer"]][0]
                               for probe, scores in zip(probes, results)]}


def print_probe_report(probes, results, out):
    """Every choice with its log-probabilities, '*' marking the answer, then the accuracy."""
    for n, (probe, scores) in enumerate(zip(probes, results), 1):
        out.write(f"{n}. {probe['prompt']}\n")
        for i, (choice, (total, per_byte)) in enumerate(zip(probe["choices"], scores)):
            mark = "*" if i == probe["answer"] else " "
            out.write(f"   {mark} log p {total:8.3f}  per byte {per_byte:7.3f}  {choice!r}\n")
    s = probe_summary(probes, results)
    out.write(f"accuracy: {s['right']}/{s['probes']} = {s['accuracy']:.1%} by total "
              f"log-prob, {s['right_per_byte']}/{s['probes']} = "
              f"{s['accuracy_per_byte']:.1%} by log-prob per byte\n")
    return s["accuracy"], s["accuracy_per_byte"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Generate text with a pretrained MyLLM model, evaluate it, probe it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = add_model_flags(parser, None, None, None,  # the "model" group of flags
                            " (default 512, 8, off; with --ckpt read from the file)")
    model.add_argument("--hidden_size", dest="dim", type=int, help=argparse.SUPPRESS)
    model.add_argument("--num_hidden_layers", dest="n_layers", type=int, help=argparse.SUPPRESS)
    add_out_dir_flag(model)
    model.add_argument("--n_heads", type=int, default=8)
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
    args = parser.parse_args(argv)
    args.device = args.device or str(pick_device())  # a name, checked below
    check_flag_values(parser, args)
    return args


def find_prepared_data(data_dir, tok):
    """The most recently prepared dataset under data_dir that was made with tok."""
    candidates = []
    for folder in Path(data_dir).glob("*/"):
        try:
            dataset.check_tokenizer(folder, tok)
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
        dataset.check_tokenizer(path, tok)
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
    if args.ckpt:
        path = Path(args.ckpt)
        dim, n_layers = args.dim, args.n_layers
    else:
        dim, n_layers = args.dim or 512, args.n_layers or 8
        path = checkpoint_paths(args.out_dir, dim, bool(args.use_moe))[0]
    model = load_model(path, tok.get_vocab_size(), args.device, dim, n_layers, args.use_moe,
                       args.n_heads, args.n_kv_heads)
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
    if (args.eval or args.eval_data or args.probe) and args.prompt is None:
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
                   eval_iters=0, dim=1, n_layers=1, n_kv_heads=1)
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


def check_probe(line: bytes, where: str):
    """The probe on one line of a probe file, or ValueError naming the file and line."""
    try:
        probe = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text; save the file as UTF-8") from None
    except json.JSONDecodeError:
        probe = None
    try:
        prompt, choices, answer = probe["prompt"], probe["choices"], probe["answer"]
        ok = (isinstance(prompt, str) and isinstance(choices, list) and len(choices) >= 2
              and all(isinstance(c, str) and c for c in choices)
              and isinstance(answer, int) and 0 <= answer < len(choices))
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise ValueError(f"{where} is not a probe; each line must be like {PROBE_EXAMPLE}, "
                         "with 2+ non-empty choices and answer an index")
    return probe


if __name__ == "__main__":
    sys.exit(main())
