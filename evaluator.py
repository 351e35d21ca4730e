"""How good is a model? The evaluator that training (at every --eval_interval) and
eval_model.py (--eval, --probe) share.

- Loss, perplexity and bits per byte over windows of text. Loss and perplexity depend on the
  tokenizer: one that cuts text into more, smaller tokens gets a lower loss per token for
  the same model. Bits per byte divides the total loss by the UTF-8 bytes of the text
  instead, so models with different tokenizers can be compared.
- Probes: a prompt and a few choices, one right; the model scores each choice by its
  log-probability given the prompt.
- The sample prompts a run continues at every evaluation, in the corpus language.

validate() is what a training run does at every --eval_interval: all three, and the
benchmarks of --bench (benchmarks.py).
"""

import contextlib
import io
import itertools
import json
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from benchmarks import format_result, score_batch
from dataset import ShardedSampler
from fsdp import is_sharded
from decode import complete
from tokenizer import BOS_ID, PAD_ID, frame_document, token_bytes

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
SAMPLE_TOKENS = 32  # of each greedy sample that training logs
PROBE_EXAMPLE = '{"prompt": "...", "choices": ["...", "..."], "answer": 0}'  # one line


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


def val_metrics(model, val_ds, byte_counts, args, rank, world_size, device, autocast):
    """Loss, perplexity and bits per byte (summarize) over up to eval_iters
    validation batches per rank, summed over all ranks, every target token weighted alike;
    None when the validation split has no batch."""
    sampler = ShardedSampler(len(val_ds), rank, world_size, seed=args.seed, epoch=0)
    batches = DataLoader(val_ds, batch_size=args.batch_size, sampler=sampler,
                         pin_memory=device.type == "cuda")
    model.eval()
    sums = loss_sums(model, itertools.islice(batches, args.eval_iters), byte_counts, autocast)
    model.train()
    if world_size > 1:
        dist.all_reduce(sums)
    return summarize(sums) if sums[1] > 0 else None


def validate(run, state):
    """What training logs at every --eval_interval (a train_pretrain.Run at RunState state):
    the validation loss and the benchmarks on every rank; then, on rank 0, the probes and
    greedy samples."""
    result = val_metrics(run.raw_model, run.val_ds, run.byte_counts, run.args, run.rank,
                         run.world_size, run.device, run.autocast)
    at = {"step": state.step, "tokens": state.tokens_seen}
    if result is not None:
        run.log.write({"kind": "val", **at, "val_loss": result["loss"],
                       "val_ppl": result["perplexity"], "val_bpb": result["bits_per_byte"]})
        run.log.say(f"step {state.step}: val loss {result['loss']:.4f}, ppl "
                    f"{result['perplexity']:.2f}, {result['bits_per_byte']:.4f} bits per byte")
    def eager():  # a compiled model would compile a new graph for every new length
        return torch.compiler.set_stance("force_eager") if run.args.compile else \
            contextlib.nullcontext()

    # a sharded model's forward pass is collective: every rank runs every one (fsdp.py)
    sharded = is_sharded(run.raw_model)
    if run.bench is not None:  # every rank scores its share of the items, or all of them
        with eager():
            results, notes = run.bench.score(run.raw_model, run.rank, run.world_size,
                                             run.autocast, share=not sharded)
            for note in notes:
                run.log.say(f"benchmarks: {note}")
            for r in results:
                run.log.write({"kind": "bench", **at, **r})
                run.log.say(f"step {state.step}: {format_result(r).splitlines()[0]}")
    if run.rank == 0 or sharded:  # the others wait for it at the next step's all-reduce
        model = run.raw_model.eval()
        with eager():
            if run.probes:  # the numbers eval_model.py --probe gives for these weights
                summary = probe_summary(run.probes, run_probes(model, run.tok, run.probes))
                run.log.write({"kind": "probe", **at, **summary})
            samples = [{"prompt": prompt, "text": complete(
                model, run.tok, prompt, io.StringIO(), SAMPLE_TOKENS, temperature=0).text}
                for prompt in run.prompts]
        run.log.write({"kind": "sample", **at, "samples": samples})
        model.train()


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


def continuation_logprob(model, context_ids, continuation_ids):
    """log p(continuation | context) in nats: the sum over the continuation's tokens (the
    benchmarks' scorer, for one row)."""
    return score_batch(model, [(context_ids, continuation_ids)])[0]


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
