"""How fast is MyLLM? Training throughput and decoding speed, measured through the same
train_step and generate() that users run.

    python scripts/bench.py                                  # the 512 x 8 default shape
    python scripts/bench.py --device cuda --dtype bfloat16 --compile --batch_size 32
    python scripts/bench_hf.py                       # the same, beside transformers' Llama
    python scripts/bench_data.py                     # data pipeline; packed vs padded

Every figure is the median over --repeats timed windows; things compared take turns
(timed_rounds), so a busy machine slows each alike. FLOPs: runlog.flops_per_token; GPU
peaks: device.PEAK_BF16_FLOPS, as in the training log. Every decode run also checks the
static-cache decoder's logits against a full forward. Decoding runs in the weights' dtype
(float32), without autocast.
"""

import argparse
import contextlib
import itertools
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the core, from any directory
from decode import StaticDecoder, decoder_error, fast_decoding  # noqa: E402
from device import (allow_tf32, mixed_precision, peak_flops_per_second, pick_device,  # noqa: E402
                    sync)
from flags import add_device_flags, add_model_flags  # noqa: E402
from model import LMConfig, Transformer  # noqa: E402
from runlog import flops_per_token  # noqa: E402
from train_pretrain import (default_optimizer, make_optimizer, masked_lm_loss,  # noqa: E402
                            train_step)


# Measuring: a GPU runs queued kernels after the Python call returns, so the clock waits
# for them (sync); things compared take turns (timed_rounds), so that a busy machine slows
# each of them alike.


def machine_name(device):
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
             if line.startswith("model name")] or [platform.machine()]
    return f"{names[0]}, {torch.get_num_threads()} threads"


def peak_memory_mib(device, reset=False):
    """CUDA: peak bytes held by tensors. CPU (Linux): the process's peak resident memory,
    everything in the process included (writing 5 to clear_refs resets it). None where
    neither can be read."""
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return None


def timed_rounds(tasks, repeats, device):
    """Run every task of {name: fn} once per round, for `repeats` rounds, so a busy machine
    slows all of them alike. Returns {name: (seconds of each run, peak memory MiB)}."""
    seconds, peak = {name: [] for name in tasks}, dict.fromkeys(tasks)
    for _ in range(repeats):
        for name, task in tasks.items():
            peak_memory_mib(device, reset=True)
            sync(device)
            start = time.perf_counter()
            task()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
            memory = peak_memory_mib(device)
            if memory is not None:
                peak[name] = max(peak[name] or 0.0, memory)
    return {name: (seconds[name], peak[name]) for name in tasks}


def format_rows(rows, names):
    """A plain-text table: one row per (label, values, higher_is_better, format), one column
    per name, and where there are two names their ratio, >1 when the first is better (for a
    time, the second's over the first's). higher_is_better None: no ratio."""
    lines = [["", *names] + (["ratio"] if len(names) == 2 else [])]
    for label, values, higher_is_better, fmt in rows:
        cells = [label] + ["-" if v is None else fmt.format(v) for v in values]
        if len(values) == 2:
            a, b = values
            ratio = (a / b if higher_is_better else b / a) if a and b else None
            cells.append("" if higher_is_better is None else
                         "-" if ratio is None else f"{ratio:.2f}x")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(line, widths))) for line in lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Measure MyLLM's training and decoding speed.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["train", "decode"], choices=["train", "decode"])
    add_device_flags(p)
    add_model_flags(p)
    p.add_argument("--vocab_size", type=int, default=6400)
    p.add_argument("--batch_size", type=int, default=None,
                   help="training sequences per step; default 32 on CUDA, 4 on CPU")
    p.add_argument("--max_seq_len", type=int, default=512, help="tokens per training sequence")
    p.add_argument("--compile", action="store_true", help="torch.compile the model and the "
                   "loss for training, and the CUDA-graph decoder's step")
    p.add_argument("--compile_mode", default="default", help="of the training step; "
                   "reduce-overhead replays it from CUDA graphs",
                   choices=["default", "reduce-overhead", "max-autotune"])
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per timed window")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--repeats", type=int, default=3, help="timed windows per figure")
    p.add_argument("--new_tokens", type=int, default=64, help="tokens generated per decode")
    p.add_argument("--prompt_len", type=int, default=16, help="prompt length for decode speed")
    p.add_argument("--ttft_prompt_len", type=int, default=512,
                   help="prompt length for the time to the first token")
    p.add_argument("--seed", type=int, default=0, help="initial weights and random tokens")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def build_model(args, device):
    # the RoPE tables keep their default length unless the prompts need more
    longest = max(args.max_seq_len, args.ttft_prompt_len + 1, args.prompt_len + args.new_tokens)
    config = LMConfig(dim=args.dim, n_layers=args.n_layers, vocab_size=args.vocab_size,
                      use_moe=args.use_moe, max_seq_len=max(longest, LMConfig.max_seq_len))
    torch.manual_seed(args.seed)
    return Transformer(config).to(device)


def make_step(model, device, dtype_name, compile_model=False, compile_mode="default",
              optimizer_name="adamw"):
    """step(batches): one optimizer step of train_pretrain.train_step with one micro-step;
    compile_model: the model and the loss compiled as --compile does (the model wrapped
    rather than in place, so that decoding after it stays eager)."""
    step_model = torch.compile(model, mode=compile_mode) if compile_model else model
    loss_fn = torch.compile(masked_lm_loss) if compile_model else masked_lm_loss
    dtype_name, autocast, scaler = mixed_precision(device, dtype_name)  # scaler: float16 only
    optimizer = make_optimizer(model, 1e-4, 0.1, device, optimizer_name, dtype_name=dtype_name)
    model.train()
    return lambda batches: train_step(step_model, optimizer, scaler, batches, 1, loss_fn,
                                      autocast, device, 1.0)


def measure_training(models, args, device, dtype_name):
    """{name: figures} for optimizer steps on a random batch of batch_size x max_seq_len."""
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, args.vocab_size, (args.batch_size, args.max_seq_len + 1),
                           generator=g)
    batch = [t.to(device) for t in (tokens[:, :-1], tokens[:, 1:],
                                     torch.ones(args.batch_size, args.max_seq_len))]
    steps = {name: make_step(m, device, dtype_name, args.compile, args.compile_mode,
                             default_optimizer(args.dim)) for name, m in models.items()}
    for step in steps.values():
        for _ in range(args.warmup):  # the first steps allocate state (and compile)
            step(itertools.repeat(batch))
    windows = {name: (lambda s=s: [s(itertools.repeat(batch)) for _ in range(args.steps)])
               for name, s in steps.items()}
    runs = timed_rounds(windows, args.repeats, device)
    # one architecture, one FLOP count (runlog.flops_per_token)
    token_flops = flops_per_token(next(iter(models.values())), args.max_seq_len)
    peak_flops = peak_flops_per_second(device)
    figures = {}
    for name, (seconds, memory) in runs.items():
        step_seconds = statistics.median(seconds) / args.steps
        tokens_per_sec = args.batch_size * args.max_seq_len / step_seconds
        flops = token_flops * tokens_per_sec
        figures[name] = {"tokens_per_sec": tokens_per_sec, "ms_per_step": 1e3 * step_seconds,
                         "gflops_per_sec": flops / 1e9, "peak_memory_mib": memory,
                         "mfu": flops / peak_flops if peak_flops else None}
    for m in models.values():
        m.zero_grad(set_to_none=True)
    return figures


def myllm_generate(model, compile_decode):
    """generate(prompt, new_tokens, cache) as a user calls it. cache "default": on CUDA a
    StaticDecoder made once per prompt shape and kept, elsewhere the KVCache; "kv": the
    KVCache; None: no cache."""
    decoders = {}

    def generate(prompt, new_tokens, cache):
        decoder = None
        if cache == "default" and fast_decoding(model):
            key = (*prompt.shape, new_tokens)
            if key not in decoders:
                decoders[key] = StaticDecoder(model, prompt.shape[0],
                                              prompt.shape[1] + new_tokens,
                                              compile_step=compile_decode)
            decoder = decoders[key]
        return model.generate(prompt, max_new_tokens=new_tokens, temperature=0.0,
                              use_cache=cache is not None, decoder=decoder)
    return generate


def static_decode_error(model, args, device, steps=32):
    """decode.decoder_error on random tokens: a prompt of prompt_len and `steps` more."""
    g = torch.Generator().manual_seed(args.seed + 1)
    ids = torch.randint(3, args.vocab_size, (1, args.prompt_len + steps), generator=g)
    return decoder_error(model, ids.to(device), args.prompt_len, args.compile)


DECODE_CASES = {  # key: (batch, long prompt?, new tokens (None: --new_tokens), cache)
    "decode_b1": (1, False, None, "default"), "decode_b8": (8, False, None, "default"),
    "decode_b1_kv": (1, False, None, "kv"), "decode_b1_no_cache": (1, False, None, None),
    "ttft": (1, True, 1, "default")}


def inference(generate, *args):
    """A task that runs generate(*args) under inference_mode, as a user decodes."""
    return lambda: torch.inference_mode()(generate)(*args)


def measure_decode(models, generators, args, device):
    """{name: figures}: greedy decoding tokens/s (batch x new tokens / seconds, prefill of a
    short prompt included) for each of DECODE_CASES, and the time to the first token after
    a ttft_prompt_len prompt. A generator returns None for a case it does not have."""
    for m in models.values():
        m.eval()
    g = torch.Generator().manual_seed(args.seed)
    figures = {name: {} for name in generators}
    for key, (batch, long_prompt, new_tokens, cache) in DECODE_CASES.items():
        prompt_len = args.ttft_prompt_len if long_prompt else args.prompt_len
        new_tokens = new_tokens or args.new_tokens
        prompt = torch.randint(3, args.vocab_size, (batch, prompt_len), generator=g).to(device)
        tasks = {}
        for name, generate in generators.items():
            task = inference(generate, prompt, new_tokens, cache)
            if task() is None:  # warm-up (records the CUDA graphs)
                figures[name][key] = None
            else:
                tasks[name] = task
        for name, (seconds, _) in timed_rounds(tasks, args.repeats, device).items():
            median = statistics.median(seconds)
            figures[name][key] = 1e3 * median if key == "ttft" else batch * new_tokens / median
    for m in models.values():
        m.train()
    return figures


ROWS = [  # (figure, label, higher is better, format); rows without a figure are left out
    ("tokens_per_sec", "train tokens/s", True, "{:,.0f}"),
    ("ms_per_step", "train ms/step", False, "{:,.0f}"),
    ("mfu", "train MFU", True, "{:.1%}"),
    ("gflops_per_sec", "train GFLOP/s", True, "{:,.1f}"),
    ("peak_memory_mib", "train peak memory MiB{rss}", False, "{:,.0f}"),
    ("decode_b1", "decode tokens/s, batch 1", True, "{:,.0f}"),
    ("decode_b8", "decode tokens/s, batch 8", True, "{:,.0f}"),
    ("decode_b1_kv", "decode tokens/s, batch 1, KV cache", True, "{:,.0f}"),
    ("decode_b1_no_cache", "decode tokens/s, batch 1, no cache", True, "{:,.0f}"),
    ("ttft", "first token ms, {ttft}-token prompt", False, "{:,.0f}")]


def rows_of(figures, names, args, device):
    """The table rows of measure_training's and measure_decode's figures (GFLOP/s only
    where there is no MFU: a CPU, or a GPU without a known peak)."""
    rows = []
    for key, label, higher_is_better, fmt in ROWS:
        values = [figures[n].get(key) for n in names]
        if values[0] is None or key == "gflops_per_sec" and figures[names[0]].get("mfu"):
            continue
        label = label.format(ttft=args.ttft_prompt_len,
                             rss="" if device.type == "cuda" else " (process RSS)")
        rows.append((label, values, higher_is_better, fmt))
    return rows


def run(args, models, generators):
    """Measure what args.tasks asks for; print the header and the table."""
    device = pick_device(args.device)
    if device.type == "cuda":
        allow_tf32()  # as train_pretrain.py runs
    dtype_name = mixed_precision(device, args.dtype)[0]  # as train_pretrain.py chooses it
    model = models["MyLLM"]
    print(f"{machine_name(device)}; torch {torch.__version__}; {device.type} {dtype_name}"
          f"{', compiled' if args.compile else ''}")
    print(f"model: dim {args.dim}, {args.n_layers} layers, {'MoE, ' if args.use_moe else ''}"
          f"{model.num_params() / 1e6:.1f}M parameters; training batch {args.batch_size} x "
          f"{args.max_seq_len}; median of {args.repeats} windows of {args.steps} steps")
    figures = {name: {} for name in models}
    if "train" in args.tasks:
        for name, f in measure_training(models, args, device, dtype_name).items():
            figures[name].update(f)
    if "decode" in args.tasks:
        for name, f in measure_decode(models, generators, args, device).items():
            figures[name].update(f)
        error = static_decode_error(model.eval(), args, device)
        model.train()
        print(f"static-cache decoder (a CUDA graph on a GPU), max |logit difference| against "
              f"a full forward: {error:.2e}")
    print(format_rows(rows_of(figures, list(models), args, device), list(models)))


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args, pick_device(args.device))
    run(args, {"MyLLM": model}, {"MyLLM": myllm_generate(model, args.compile)})


def check_args(p, args):
    for name in ("steps", "repeats", "new_tokens", "prompt_len", "ttft_prompt_len"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    device = pick_device(args.device)
    if args.compile and device.type == "cpu" and not (shutil.which("g++") or
                                                      shutil.which("clang++")):
        p.error("--compile on CPU needs a C++ compiler (g++ or clang++); install one or drop "
                "--compile")
    if args.batch_size is None:
        args.batch_size = 32 if device.type == "cuda" else 4


if __name__ == "__main__":
    main()
