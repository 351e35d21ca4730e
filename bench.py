"""How fast is MyLLM? Training throughput, decoding, and packed against padded samples.

    python bench.py                                  # the 512 x 8 default shape
    python bench.py --vs-hf                          # the same, beside transformers' Llama
    python bench.py --device cuda --dtype bfloat16 --compile --batch_size 32
    python bench.py --tasks data --data dataset/pretrain_hq.jsonl \
        --tokenizer out/tokenizer.json --cache_dir out/data --seed 1337   # training's data

Every figure is the median over --repeats timed windows. The windows of the things compared
(MyLLM and transformers; packed and padded) take turns, so that a busy machine slows each of
them alike. The FLOP count comes from Transformer.flops_per_token and the GPU peaks from
train_pretrain.py, so the figures here and in the training log are computed the same way.
"""

import argparse
import contextlib
import json
import math
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from decode import StaticDecoder
from model import LMConfig, Transformer
from common import allow_tf32, mixed_precision, peak_flops_per_second, str_to_bool
from train_pretrain import make_optimizer, masked_lm_loss

PEER = "transformers"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Measure MyLLM's training and decoding speed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["train", "decode", "data"],
                   choices=["train", "decode", "data"])
    p.add_argument("--device", default=None, help="cuda, cpu; default: cuda if available")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="autocast dtype; default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--n_layers", type=int, default=8)
    p.add_argument("--use_moe", type=str_to_bool, nargs="?", const=True, default=False,
                   help="mixture-of-experts feed-forward (also --use_moe 1 / 0)")
    p.add_argument("--vocab_size", type=int, default=6400)
    p.add_argument("--batch_size", type=int, default=None,
                   help="training sequences per step; default 32 on CUDA, 4 on CPU")
    p.add_argument("--max_seq_len", type=int, default=512, help="training sequence length")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the models and the loss for the training steps, "
                        "and MyLLM's decoding step")
    p.add_argument("--compile_mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode of the training step; reduce-overhead replays "
                        "it from CUDA graphs")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per timed window")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per figure")
    p.add_argument("--new_tokens", type=int, default=64, help="tokens generated per decode")
    p.add_argument("--prompt_len", type=int, default=16, help="prompt length for decode speed")
    p.add_argument("--ttft_prompt_len", type=int, default=512,
                   help="prompt length for the time to the first token")
    p.add_argument("--data", nargs="+", default=None,
                   help="MiniMind-format .jsonl for packed vs padded; default: a synthetic one")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json for --data; default: one trained on the data")
    p.add_argument("--cache_dir", default=None,
                   help="where prepared data is kept and reused; default: a temporary directory")
    p.add_argument("--vs-hf", dest="vs_hf", action="store_true",
                   help="also measure transformers' LlamaForCausalLM with the same weights")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("steps", "repeats", "new_tokens", "prompt_len", "ttft_prompt_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def setup_device(device_arg):
    """The device, with TF32 matmuls on for CUDA, as train_pretrain.py runs."""
    if device_arg:
        device = torch.device(device_arg)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        allow_tf32()
    return device


def machine_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model_name = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return f"{model_name}, {torch.get_num_threads()} threads"


def sync(device):
    """Wait for queued GPU work: CUDA kernels run asynchronously, a clock must not."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:  # Linux: writing 5 to clear_refs resets the process's peak resident set size
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mib(device):
    """CUDA: peak bytes held by tensors. CPU (Linux): the process's peak resident memory,
    everything in the process included. None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return None


def timed_rounds(tasks, repeats, device):
    """Run every task of {name: fn} once per round, for `repeats` rounds, so a busy machine
    slows all of them alike. Returns {name: (seconds of each run, peak memory MiB)}."""
    seconds = {name: [] for name in tasks}
    peak = dict.fromkeys(tasks)
    for _ in range(repeats):
        for name, task in tasks.items():
            reset_peak_memory(device)
            sync(device)
            start = time.perf_counter()
            task()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
            memory = peak_memory_mib(device)
            if memory is not None:
                peak[name] = max(peak[name] or 0.0, memory)
    return {name: (seconds[name], peak[name]) for name in tasks}


def build_model(args, device):
    # the RoPE tables keep their default length unless the prompts need more
    longest = max(args.max_seq_len, args.ttft_prompt_len + 1, args.prompt_len + args.new_tokens)
    config = LMConfig(dim=args.dim, n_layers=args.n_layers, vocab_size=args.vocab_size,
                      use_moe=args.use_moe, max_seq_len=max(longest, LMConfig.max_seq_len))
    torch.manual_seed(args.seed)
    return Transformer(config).to(device)


def build_peer(model):
    """transformers' model of the same architecture holding the same weights: LlamaForCausalLM,
    or GraniteMoeSharedForCausalLM for MoE (scripts/export_hf.py says why)."""
    try:
        import transformers
    except ImportError:
        raise SystemExit("--vs-hf needs transformers: pip install -r requirements-dev.txt")
    from scripts.export_hf import hf_config, to_hf_state_dict

    fields = hf_config(model.config, torch.float32)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    # "sdpa" is transformers' default attention and the fused kernel MyLLM uses too
    peer = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    state_dict = to_hf_state_dict(model.state_dict(), model.config)
    missing, unexpected = peer.load_state_dict(state_dict, strict=False)
    if unexpected or any(k != "lm_head.weight" and "rotary" not in k for k in missing):
        raise RuntimeError(f"weights did not map onto {type(peer).__name__}: missing "
                           f"{missing}, unexpected {unexpected}")
    peer.tie_weights()
    peer.generation_config.eos_token_id = None  # generate exactly new_tokens, as MyLLM does
    peer.generation_config.pad_token_id = fields["pad_token_id"]
    return peer.float().to(next(model.parameters()).device)


class Trainer:
    """One model with its optimizer, taking optimizer steps exactly as train_pretrain.py does
    with one micro-step: forward under autocast, masked loss (+ MoE loss), backward, unscale,
    clip, step. Nothing here waits for the device; the caller syncs around the timed window."""

    def __init__(self, model, device, dtype_name, compile_model, compile_mode="default"):
        self.model = model.train()
        self.step_model = torch.compile(model, mode=compile_mode) if compile_model else model
        self.loss_fn = torch.compile(masked_lm_loss) if compile_model else masked_lm_loss
        self.optimizer = make_optimizer(model, 1e-4, 0.1, device)
        # weights stay fp32, matmuls in dtype_name; a loss scaler for float16 only
        _, self.autocast, self.scaler = mixed_precision(device, dtype_name)

    def step(self, X, Y, loss_mask):
        with self.autocast:
            out = self.step_model(X)
            loss = self.loss_fn(out.logits, Y, loss_mask)
        aux_loss = getattr(out, "aux_loss", None)  # transformers' Llama has none
        if aux_loss is not None:
            loss = loss + aux_loss
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def random_batch(batch_size, seq_len, vocab_size, device, seed):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g)
    loss_mask = torch.ones(batch_size, seq_len)
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device), loss_mask.to(device)


def measure_training(models, args, device, dtype_name):
    """{name: figures} for optimizer steps on a random batch of batch_size x max_seq_len."""
    batch = random_batch(args.batch_size, args.max_seq_len, args.vocab_size, device, args.seed)
    trainers = {name: Trainer(m, device, dtype_name, args.compile, args.compile_mode)
                for name, m in models.items()}
    for trainer in trainers.values():
        for _ in range(args.warmup):  # the first steps allocate state (and compile)
            trainer.step(*batch)

    def window(trainer):
        return lambda: [trainer.step(*batch) for _ in range(args.steps)]

    runs = timed_rounds({n: window(t) for n, t in trainers.items()}, args.repeats, device)
    # the same architecture, so one FLOP count serves both (see Transformer.flops_per_token)
    flops_per_token = models["MyLLM"].flops_per_token(args.max_seq_len)
    peak_flops = peak_flops_per_second(device)
    tokens_per_step = args.batch_size * args.max_seq_len
    figures = {}
    for name, (seconds, memory) in runs.items():
        step_seconds = statistics.median(seconds) / args.steps
        tokens_per_sec = tokens_per_step / step_seconds
        flops = flops_per_token * tokens_per_sec
        figures[name] = {"tokens_per_sec": tokens_per_sec, "ms_per_step": 1e3 * step_seconds,
                         "gflops_per_sec": flops / 1e9,
                         "mfu": flops / peak_flops if peak_flops else None,
                         "peak_memory_mib": memory}
    for m in models.values():
        m.zero_grad(set_to_none=True)
    return figures


# How a decode case uses the KV cache: "default" as generate() chooses (MyLLM: static
# caches replayed from a CUDA graph on a GPU); "growing": MyLLM's KVCache run step by step
# (the peer has no such case); None: no cache, the whole sequence again at every step.
def myllm_generate(model, compile_decode):
    decoders = {}  # one StaticDecoder per prompt shape, made once and kept, as a caller would

    def generate(prompt, new_tokens, cache):
        decoder = None
        if cache == "default" and prompt.device.type == "cuda" and not model.config.use_moe:
            key = (prompt.shape, new_tokens)
            if key not in decoders:
                decoders[key] = StaticDecoder(model, prompt.shape[0],
                                              prompt.shape[1] + new_tokens,
                                              compile_step=compile_decode)
            decoder = decoders[key]
        return model.generate(prompt, max_new_tokens=new_tokens, temperature=0.0,
                              use_cache=cache is not None, decoder=decoder)
    return generate


def peer_generate(peer):
    def generate(prompt, new_tokens, cache):
        if cache == "growing":
            return None
        return peer.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=new_tokens, use_cache=cache is not None)
    return generate


def static_decode_error(model, args, device, steps=32):
    """Largest |logit| difference between StaticDecoder (on a GPU, replaying its CUDA graph)
    and one forward pass over the whole sequence, across a prefill and `steps` new tokens:
    the speed figures are worth something only if this is at rounding level."""
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, args.vocab_size, (1, args.prompt_len + steps), generator=g).to(device)
    with torch.inference_mode():
        full = model(ids).logits[0, args.prompt_len - 1:].float()
        decoder = StaticDecoder(model, 1, ids.shape[1], compile_step=args.compile)
        # clone: on a GPU every step returns the same graph output buffer
        logits = [decoder.prefill(ids[:, :args.prompt_len]).clone()]
        logits += [decoder.step(ids[:, t:t + 1]).clone()
                   for t in range(args.prompt_len, ids.shape[1])]
    return (torch.cat(logits).float() - full).abs().max().item()


def measure_decode(models, generators, args, device):
    """{name: figures}: greedy decoding tokens/s (batch x new tokens / seconds, prefill of a
    short prompt included) at batch 1 and 8 with the KV cache, at batch 1 without it, and the
    time to the first token after a ttft_prompt_len prompt."""
    for m in models.values():
        m.eval()
    g = torch.Generator().manual_seed(args.seed)
    cases = {  # key: (batch, prompt length, new tokens, cache)
        "decode_b1": (1, args.prompt_len, args.new_tokens, "default"),
        "decode_b8": (8, args.prompt_len, args.new_tokens, "default"),
        "decode_b1_growing": (1, args.prompt_len, args.new_tokens, "growing"),
        "decode_b1_no_cache": (1, args.prompt_len, args.new_tokens, None),
        "ttft": (1, args.ttft_prompt_len, 1, "default"),
    }
    figures = {name: {} for name in generators}
    for key, (batch, prompt_len, new_tokens, cache) in cases.items():
        prompt = torch.randint(3, args.vocab_size, (batch, prompt_len), generator=g).to(device)

        def run(generate):
            def once():
                with torch.inference_mode():
                    generate(prompt, new_tokens, cache)
            return once

        tasks = {name: run(generate) for name, generate in generators.items()
                 if name == "MyLLM" or cache != "growing"}
        for name in generators.keys() - tasks.keys():
            figures[name][key] = None
        for task in tasks.values():
            task()  # warm-up (records the CUDA graph)
        for name, (seconds, memory) in timed_rounds(tasks, args.repeats, device).items():
            median = statistics.median(seconds)
            figures[name][key] = 1e3 * median if key == "ttft" else batch * new_tokens / median
    for m in models.values():
        m.train()
    return figures


# A few hundred common Chinese characters, drawn with Zipf-like weights so that BPE finds
# frequent pairs, as in real text.
HANZI = ("的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去"
         "之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又"
         "如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明"
         "其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东"
         "政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书")
PUNCTUATION = "，，，。、；：！？"


def synthetic_minimind(path, n_lines, seed):
    """Write MiniMind-format lines, {"text": "<s>...</s> <s>...</s>"}, of 30 to 510 characters
    (uniformly), each holding one to three documents: pretrain_hq.jsonl keeps lines shorter
    than 512 characters, so most of them fill only part of a 512-token sample."""
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(HANZI))]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_lines):
            line_chars = rng.randint(30, 510)
            n_docs = rng.choice((1, 1, 2, 3))
            docs = []
            for _ in range(n_docs):
                chars = rng.choices(HANZI, weights, k=max(line_chars // n_docs - 10, 5))
                for i in range(8, len(chars) - 1, rng.randint(6, 16)):
                    chars[i] = rng.choice(PUNCTUATION)
                docs.append("<s>" + "".join(chars) + "。</s>")
            f.write(json.dumps({"text": " ".join(docs)}, ensure_ascii=False) + "\n")


def prepare_samples(args, work_dir):
    """(packed dataset, padded dataset) of the data, tokenized once into --cache_dir, or
    work_dir (also where the synthetic data and its tokenizer go)."""
    from dataset import PretrainDataset, iter_texts, prepare
    from tokenizer import save_tokenizer, train_tokenizer

    sources = args.data
    if sources is None:
        sources = [str(work_dir / "minimind_synthetic.jsonl")]
        synthetic_minimind(sources[0], n_lines=4000, seed=args.seed)
    tokenizer_path = args.tokenizer
    if tokenizer_path is None:
        tokenizer_path = work_dir / "tokenizer.json"
        save_tokenizer(train_tokenizer(iter_texts(sources), args.vocab_size), tokenizer_path)
    # the seed picks the validation split; train_pretrain.py's (1337) finds its data again
    prepared = prepare(sources, tokenizer_path, args.cache_dir or work_dir / "data",
                       seed=args.seed, verbose=False)
    return (PretrainDataset(prepared, "train", args.max_seq_len, mode="packed"),
            PretrainDataset(prepared, "train", args.max_seq_len, mode="padded"))


def measure_useful_tokens(model, datasets, args, device, dtype_name):
    """{mode: figures}: training steps on each dataset, counting the tokens that carry loss
    (loss_mask 1) per second; batches are loaded inside the timed window, as in training."""
    trainer = Trainer(model, device, dtype_name, args.compile)
    g = torch.Generator().manual_seed(args.seed)
    batches = {mode: iter(torch.utils.data.DataLoader(
        ds, batch_size=args.batch_size, shuffle=True, generator=g, drop_last=True,
        pin_memory=device.type == "cuda")) for mode, ds in datasets.items()}
    counts = {mode: [] for mode in datasets}

    def window(mode):
        def run():
            useful = 0.0
            for _ in range(args.steps):
                X, Y, loss_mask = next(batches[mode])
                useful += float(loss_mask.sum())  # on the host copy: no device sync
                X, Y = X.to(device, non_blocking=True), Y.to(device, non_blocking=True)
                trainer.step(X, Y, loss_mask.to(device, non_blocking=True))
            counts[mode].append(useful)
        return run

    for mode in datasets:
        window(mode)()  # warm-up
        counts[mode].clear()
    runs = timed_rounds({mode: window(mode) for mode in datasets}, args.repeats, device)
    model.zero_grad(set_to_none=True)
    figures = {}
    for mode, (seconds, memory) in runs.items():
        figures[mode] = {
            "useful_tokens_per_step": statistics.median(counts[mode]) / args.steps,
            "useful_tokens_per_sec": statistics.median(
                c / s for c, s in zip(counts[mode], seconds)),
            "tokens_per_sec": statistics.median(
                args.steps * args.batch_size * args.max_seq_len / s for s in seconds),
            "padding_share": datasets[mode].padding_share}
    return figures


def format_rows(rows, names):
    """A plain-text table: one row per (label, values, higher_is_better, format), one column
    per name, and where there are two names their ratio, >1 when the first is better (for a
    time, the second's over the first's). higher_is_better None: no ratio."""
    header = ["", *names] + (["ratio"] if len(names) == 2 else [])
    lines = [header]
    for label, values, higher_is_better, fmt in rows:
        cells = [label] + ["-" if v is None else fmt.format(v) for v in values]
        if len(values) == 2 and higher_is_better is not None:
            a, b = values
            ratio = (a / b if higher_is_better else b / a) if a and b else None
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        elif len(values) == 2:
            cells.append("")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def training_rows(figures, names, device):
    get = lambda key: [figures[n][key] for n in names]  # noqa: E731
    rows = [("train tokens/s", get("tokens_per_sec"), True, "{:,.0f}"),
            ("train ms/step", get("ms_per_step"), False, "{:,.0f}")]
    if figures[names[0]]["mfu"] is not None:
        rows.append(("train MFU", [100 * v for v in get("mfu")], True, "{:.1f}%"))
    else:
        rows.append(("train GFLOP/s", get("gflops_per_sec"), True, "{:,.1f}"))
    memory = "train peak memory MiB" + ("" if device.type == "cuda" else " (process RSS)")
    rows.append((memory, get("peak_memory_mib"), False, "{:,.0f}"))
    return rows


def decode_rows(figures, names, args):
    get = lambda key: [figures[n][key] for n in names]  # noqa: E731
    return [("decode tokens/s, batch 1", get("decode_b1"), True, "{:,.0f}"),
            ("decode tokens/s, batch 8", get("decode_b8"), True, "{:,.0f}"),
            ("decode tokens/s, batch 1, growing cache", get("decode_b1_growing"), True,
             "{:,.0f}"),
            ("decode tokens/s, batch 1, no cache", get("decode_b1_no_cache"), True, "{:,.0f}"),
            (f"first token ms, {args.ttft_prompt_len}-token prompt", get("ttft"), False,
             "{:,.0f}")]


def main(argv=None):
    args = parse_args(argv)
    device = setup_device(args.device)
    if args.batch_size is None:
        args.batch_size = 32 if device.type == "cuda" else 4
    dtype_name = mixed_precision(device, args.dtype)[0]  # as train_pretrain.py chooses it
    if args.compile and device.type == "cpu" and not shutil.which("g++") and not shutil.which(
            "clang++"):
        raise SystemExit("--compile on CPU needs a C++ compiler (g++ or clang++); install one "
                         "or drop --compile")

    model = build_model(args, device)
    models = {"MyLLM": model}
    if args.vs_hf:
        models[PEER] = build_peer(model)
    names = list(models)
    print(f"{machine_name(device)}; torch {torch.__version__}; {device.type} {dtype_name}"
          f"{', compiled' if args.compile else ''}")
    print(f"model: dim {args.dim}, {args.n_layers} layers, {'MoE, ' if args.use_moe else ''}"
          f"{model.num_params() / 1e6:.1f}M parameters; training batch {args.batch_size} x "
          f"{args.max_seq_len}; median of {args.repeats} windows of {args.steps} steps")

    rows = []
    if "train" in args.tasks:
        rows += training_rows(measure_training(models, args, device, dtype_name), names, device)
    if "decode" in args.tasks:
        generators = {"MyLLM": myllm_generate(model, args.compile)}
        if args.vs_hf:
            generators[PEER] = peer_generate(models[PEER])
        rows += decode_rows(measure_decode(models, generators, args, device), names, args)
        if not args.use_moe:
            print(f"static-cache decode, max |logit difference| against a full forward: "
                  f"{static_decode_error(model.eval(), args, device):.2e}")
            model.train()
    if rows:
        print(format_rows(rows, names))

    if "data" in args.tasks:
        with tempfile.TemporaryDirectory(prefix="myllm-bench-") as work_dir:
            datasets = dict(zip(("packed", "padded"), prepare_samples(args, Path(work_dir))))
            figures = measure_useful_tokens(model, datasets, args, device, dtype_name)
        print(format_rows([
            ("useful tokens/s (carrying loss)",
             [figures[m]["useful_tokens_per_sec"] for m in datasets], True, "{:,.0f}"),
            ("all tokens/s", [figures[m]["tokens_per_sec"] for m in datasets], True, "{:,.0f}"),
            ("padding share", [100 * figures[m]["padding_share"] for m in datasets], None,
             "{:.1f}%")], list(datasets)))


if __name__ == "__main__":
    main()
