"""The report of a training run: is it healthy, is its loss normal, what has it learned.

    python report.py out/logs/pretrain_192_20261202-101500.jsonl
    python report.py out/logs/a.jsonl out/logs/b.jsonl --out out/reports/a_vs_b

train_pretrain.py writes one at the end of every run (a run stopped by a signal too) into
OUT_DIR/reports/<log name>/report.md, with PNG pictures beside it. Everything in it is read
from the run's JSONL log (runlog.py lists its records), so any log can be reported again, and
several logs make one report that overlays their runs. The pictures, against tokens seen:
    loss.png        training loss (line), validation loss (dots), learning rate (dotted);
                    for the quick-start shape on the built-in corpus also the reference
                    curve (reference/*.json): where a healthy run of that shape lands
    bpb.png         validation bits per byte: the loss per byte of text, comparable across
                    tokenizers
    grad_norm.png   the gradient norm before clipping (log scale)
    probes.png      probe accuracy, and each probe's log p(answer) (eval_model.py --probe)
    bench.png       benchmark accuracy with its 95% interval and the chance line, one panel
                    per task (train_pretrain.py --bench; benchmarks.py)
    throughput.png  training tokens/s (evaluation and saving excluded)
    mfu.png         model FLOPs utilisation, where the GPU's peak is known
Then tables: the validation figures, the health verdicts of health.py with their evidence,
greedy samples at each evaluation, the data report, the model and the flags.

matplotlib is an optional extra (pip install matplotlib); without it the report has its
tables, and a line on how to get the pictures.
"""

import argparse
import itertools
import json
import math
import shlex
from pathlib import Path

from files import write_atomic
from health import CHECKS, RECENT, VAL_RISES
from prepare import format_report

ROOT = Path(__file__).resolve().parent

REFERENCES = ROOT / "reference"
# the fields a record must have to be drawn; "warning" and "sample" records are shown as text
REQUIRED = {"train": ("step", "tokens", "loss"), "val": ("step", "tokens", "val_loss"),
            "probe": ("step", "tokens", "accuracy"), "sample": ("step", "samples")}
# flags that change a run's loss curve: a reference is drawn only for runs that share them
CURVE_FLAGS = ("max_seq_len", "learning_rate", "min_lr", "warmup_iters", "lr_schedule",
               "decay_frac", "optimizer", "muon_lr", "epochs", "max_steps", "max_tokens",
               "weight_decay", "grad_clip")
SHOWN_EVALUATIONS = 6  # samples: the first, the last, and evenly spaced ones between


def read_log(path, strict=True):
    """One log as {"name", "starts": [its "run"/"resume" records], "end": the last start's
    "end" record or None, "train", "val", "probe", "sample": [records sorted by step],
    "warning": [records], "wall_s", "gpu_hours" (None where not known), "skipped"}.

    A resumed run logs again the steps after its last checkpoint; the later record of a step
    is the one that the run continued from, so it replaces the earlier one. Wall time is the
    sum over the log's segments (one per start): the time between runs does not count.
    strict=False (the report): a line that is not a whole record, as a crash in the middle
    of a write leaves, is listed in "skipped" instead of being an error.
    """
    by_step = {kind: {} for kind in REQUIRED}
    log = {"name": Path(path).stem, "starts": [], "end": None, "warning": {}, "skipped": [],
           "bench": {}}
    segments = []  # [first time, last time, GPUs] of each start
    for where, record in read_records(path, None if strict else log["skipped"]):
        kind = record.get("kind")
        if kind in ("run", "resume"):
            log["starts"].append(record)
            log["end"] = None  # not ended (yet) since this start
            gpus = record.get("world_size", 1) if record.get("device") == "cuda" else 0
            segments.append([None, None, gpus])
        elif kind in REQUIRED:
            missing = [key for key in REQUIRED[kind] if key not in record]
            if missing:
                problem = f"{where}: a {kind} record without {', '.join(missing)}"
                if strict:
                    raise ValueError(problem)
                log["skipped"].append(problem)
                continue
            by_step[kind][record["step"]] = record
        elif kind == "end":
            log["end"] = record
        elif kind == "warning":
            log["warning"][record.get("step"), record.get("check")] = record
        elif kind == "bench" and {"step", "tokens", "task"} <= record.keys():
            log["bench"][record["step"], record["task"]] = record
        time = record.get("time")
        if segments and isinstance(time, (int, float)):
            segment = segments[-1]
            segment[0] = time if segment[0] is None else segment[0]
            segment[1] = time
    if not by_step["train"] and not by_step["val"]:
        raise ValueError(f"{path} has no train or val records; pass a log that "
                         f"train_pretrain.py has written to for at least one log interval")
    timed = [(last - first, gpus) for first, last, gpus in segments if first is not None]
    log["wall_s"] = sum(s for s, _ in timed) if timed else None
    log["gpu_hours"] = (sum(s * gpus for s, gpus in timed) / 3600
                        if any(gpus for _, gpus in timed) else None)
    log["warning"] = list(log["warning"].values())
    log["bench"] = [log["bench"][key] for key in sorted(log["bench"])]
    return {**log, **{kind: [rs[s] for s in sorted(rs)] for kind, rs in by_step.items()}}


def read_records(path, skipped=None):
    """(path:line, record) for every JSON object of a log file; a line that is not JSON is
    an error, or, with a list `skipped`, noted there."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                problem = (f"{path}:{line_number}: not valid JSON ({e.msg}); is it a log "
                           "written by train_pretrain.py?")
                if skipped is None:
                    raise ValueError(problem) from None
                skipped.append(problem)
                continue
            if isinstance(record, dict):
                yield f"{path}:{line_number}", record


def first_start(log):
    """The record of a log's first start: the run's flags, config, data and device."""
    return log["starts"][0] if log["starts"] else {}


def run_shape(log):
    """What a reference curve must share with a run: the model's shape, the data, and the
    flags that shape the curve (the schedule's length and peak, the batch)."""
    start = first_start(log)
    config, args, data = start.get("config", {}), start.get("args", {}), start.get("data") or {}
    return {**{key: config.get(key) for key in ("dim", "n_layers", "vocab_size")},
            **{key: args.get(key) for key in CURVE_FLAGS},
            "tokens_per_step": start.get("plan", {}).get("tokens_per_step"),
            "data": [source.get("path") for source in data.get("sources", [])]}


def find_reference(log):
    """The reference curve (reference/*.json) for this run's shape and data, or None."""
    shape = run_shape(log)
    for path in sorted(REFERENCES.glob("*.json")):
        reference = json.loads(path.read_text(encoding="utf-8"))
        if all(shape[key] == value for key, value in reference["match"].items()):
            return reference
    return None


def make_reference(paths, command, out):
    """Write a reference curve: the validation records of runs of one shape (other seeds),
    with the command that made them."""
    logs = [read_log(p) for p in paths]
    shapes = {json.dumps(run_shape(log)) for log in logs}
    if len(shapes) > 1:
        raise ValueError(f"the logs are of different runs ({' / '.join(shapes)}); a reference "
                         "is made of runs that differ only by --seed")
    runs = [{"seed": first_start(log)["args"].get("seed"),
             "val": [{k: r[k] for k in ("step", "tokens", "val_loss", "val_bpb")}
                     for r in log["val"]]} for log in logs]
    Path(out).write_text(json.dumps({"command": command, "match": run_shape(logs[0]),
                                     "runs": runs}, indent=1) + "\n", encoding="utf-8")


def reference_band(reference, field):
    """(tokens, mean, lowest, highest) of a reference's runs: one point per evaluation."""
    rows = zip(*[[(p["tokens"], p[field]) for p in run["val"]] for run in reference["runs"]])
    points = [(r[0][0], [v for _, v in r]) for r in rows]
    return ([t for t, _ in points], [sum(v) / len(v) for _, v in points],
            [min(v) for _, v in points], [max(v) for _, v in points])


def series(records, field):
    """(tokens, values) of the records that have field; null (not measured) drawn as a gap."""
    kept = [r for r in records if field in r]
    return ([r["tokens"] for r in kept],
            [math.nan if r[field] is None else r[field] for r in kept])


def loss_figure(runs, logx=False, reference=None):
    """Training and validation loss and the learning rate of runs [(name, log)], with the
    reference's mean validation loss and its range over seeds (shaded) when given."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    fig, loss_ax = plt.subplots(figsize=(9, 5))
    lr_ax = loss_ax.twinx()
    for color, (name, log) in zip(colors(), runs):
        if log["train"]:
            loss_ax.plot(*series(log["train"], "loss"), color=color, linewidth=1.2,
                         label=f"{name} train")
        if log["val"]:
            loss_ax.plot(*series(log["val"], "val_loss"), "o--", color=color,
                         markerfacecolor="white", markersize=5, zorder=3, label=f"{name} val")
        if any("lr" in r for r in log["train"]):
            lr_ax.plot(*series(log["train"], "lr"), ":", color=color, alpha=0.6,
                       label=f"{name} lr")
    if reference:
        draw_reference(loss_ax, reference, "val_loss")
    if logx:
        loss_ax.set_xscale("log")
    lr_ax.set_ylim(bottom=0)
    lr_ax.set_ylabel("learning rate")
    loss_ax.set_zorder(lr_ax.get_zorder() + 1)  # loss in front of the learning rate
    loss_ax.patch.set_visible(False)  # ... without hiding it
    loss_ax.xaxis.set_major_formatter(EngFormatter())  # 20M rather than 2.0 x 1e7
    finish(loss_ax, "loss (nats per token)", extra=lr_ax)
    return fig


def draw_reference(ax, reference, field):
    tokens, mean, low, high = reference_band(reference, field)
    ax.plot(tokens, mean, color="grey", linestyle="--", linewidth=1,
            label=f"reference val ({len(reference['runs'])} seeds)")
    ax.fill_between(tokens, low, high, color="grey", alpha=0.25, linewidth=0)


def figure_of(runs, reference, field, kind, ylabel, logy=False):
    """One line per run of records `kind`'s field against tokens (None: nothing to draw)."""
    import matplotlib.pyplot as plt

    if not any(r.get(field) is not None for _, log in runs for r in log[kind]):
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for color, (name, log) in zip(colors(), runs):
        ax.plot(*series(log[kind], field), "o-" if kind != "train" else "-", markersize=3,
                color=color, label=name)
    if reference and field == "val_bpb":
        draw_reference(ax, reference, field)
    if logy:
        ax.set_yscale("log")
    finish(ax, ylabel)
    return fig


def probes_figure(runs):
    """Accuracy (left) and log p(answer) of every probe (right; one thin line per probe of
    a single run, the mean over the probes for several runs)."""
    import matplotlib.pyplot as plt

    if not any(log["probe"] for _, log in runs):
        return None
    fig, (acc_ax, logp_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for color, (name, log) in zip(colors(), runs):
        acc_ax.plot(*series(log["probe"], "accuracy"), "o-", markersize=3, color=color,
                    label=name)
        tokens = [r["tokens"] for r in log["probe"]]
        per_probe = list(zip(*[r["answer_logprob"] for r in log["probe"]]))
        if len(runs) == 1:
            for values in per_probe:
                logp_ax.plot(tokens, values, color=color, alpha=0.35, linewidth=0.8)
        logp_ax.plot(tokens, [sum(v) / len(v) for v in zip(*per_probe)], color=color,
                     linewidth=2, label=f"{name} mean")
    acc_ax.set_ylim(0, 1)
    finish(acc_ax, "probe accuracy (total log-prob)")
    finish(logp_ax, "log p(answer), nats")
    return fig


def bench_figure(runs):
    """Accuracy against tokens seen for every accuracy task, one panel each: the 95%
    interval shaded, chance dashed, the fewest-tokens baseline dotted."""
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for _, log in runs for r in log["bench"]
                               if "accuracy" in r))
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for color, (name, log) in zip(colors(), runs):
            rs = [r for r in log["bench"] if r["task"] == task]
            tokens = [r["tokens"] for r in rs]
            ax.plot(tokens, [r["accuracy"] for r in rs], "o-", markersize=3, color=color,
                    label=name)
            ax.fill_between(tokens, [r["low"] for r in rs], [r["high"] for r in rs],
                            color=color, alpha=0.2)
            ax.plot(tokens, [r.get("fewest_tokens") for r in rs], ":", color=color)
            chance = rs[-1]["chance"]
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
        ax.set_title(task, fontsize="medium")
        ax.set_ylim(0, 1)
        finish(ax, "accuracy")
    return fig


def bench_rows(runs):
    """The last evaluation's benchmarks of each run (benchmarks.py explains the columns)."""
    rows = ["| run | task | step | accuracy (95% interval) | chance | fewest tokens | p above "
            "the higher | contamination |", "|---|---|---|---|---|---|---|---|"]
    for name, log in runs:
        last = {r["task"]: r for r in log["bench"]}
        for task, r in last.items():
            if "accuracy" not in r:  # hsk_bpb: bits per byte by level
                levels = ", ".join(f"{k}: {v:.3f}" for k, v in r.get("bpb", {}).items())
                rows.append(f"| {name} | {task} | {r['step']} | bits per byte {levels} "
                            "| | | | |")
                continue
            rows.append(f"| {name} | {task} | {r['step']} | {r['accuracy']:.1%} "
                        f"({r['low']:.1%}–{r['high']:.1%}) | {r['chance']:.1%} | "
                        f"{fmt(r.get('fewest_tokens'), '.1%')} | {fmt(r.get('p_value'), '.2g')} "
                        f"| {fmt(r.get('contamination'), '.1%')} |")
    return rows if len(rows) > 2 else []


def expert_rows(runs):
    """Per run and MoE layer, the experts' shares of the last log interval's tokens."""
    rows = []
    for name, log in runs:
        last = next((r for r in reversed(log["train"]) if r.get("expert_share")), None)
        if last is None:
            continue
        rows += [f"- {name}, step {last['step']}, spread {last['expert_spread']:.2f}:"]
        rows += [f"  - MoE layer {i}: " + " ".join(f"{s:.0%}" for s in shares)
                 for i, shares in enumerate(last["expert_share"])]
    return rows


def colors():
    import matplotlib.pyplot as plt
    return itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])


def finish(ax, ylabel, extra=None):
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if extra is not None:  # one legend for both axes
        more = extra.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="best", fontsize="small")
    ax.figure.tight_layout()


def pictures(runs, reference, out_dir):
    """Write the PNGs into out_dir; [(file name, what it shows)], or None without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    figures = [
        ("loss.png", "training loss (line), validation loss (dots), learning rate (dotted)",
         loss_figure(runs, reference=reference)),
        ("bpb.png", "validation bits per byte",
         figure_of(runs, reference, "val_bpb", "val", "bits per byte")),
        ("grad_norm.png", "gradient norm before clipping",
         figure_of(runs, None, "grad_norm", "train", "gradient norm", logy=True)),
        ("probes.png", "probe accuracy and log p(answer)", probes_figure(runs)),
        ("bench.png", "benchmark accuracy, its 95% interval (shaded), chance (dashed), "
         "fewest tokens (dotted)", bench_figure(runs)),
        ("throughput.png", "training tokens/s",
         figure_of(runs, None, "tokens_per_sec", "train", "tokens/s")),
        ("mfu.png", "model FLOPs utilisation", figure_of(runs, None, "mfu", "train", "MFU")),
        ("experts.png", "MoE load spread: the std / mean of the experts' shares of tokens "
         "(0: even)", figure_of(runs, None, "expert_spread", "train", "load spread")),
    ]
    written = []
    for name, caption, fig in figures:
        if fig is not None:
            fig.savefig(out_dir / name, dpi=80)
            plt.close(fig)
            written.append((name, caption))
    return written


def fmt(value, spec=".4f"):
    return "—" if value is None else format(value, spec)


def duration(seconds):
    if seconds is None:
        return "—"  # a log without times
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {s:02d} s"


def middle(values):
    values = sorted(v for v in values if v is not None)
    return values[len(values) // 2] if values else None


def summary_rows(runs):
    """The summary table: one row per run, where it ended (or its last record)."""
    rows = ["| run | steps | tokens | wall time | GPU-hours | val loss | val ppl | bits per byte "
            "| train loss | probe accuracy | tokens/s (median) | MFU (median) | steps skipped "
            "(non-finite) | ended |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, log in runs:
        val = log["val"][-1] if log["val"] else {}
        last = log["train"][-1] if log["train"] else {}
        end = log["end"] or last or val
        probe = log["probe"][-1] if log["probe"] else {}
        rows.append(
            f"| {name} | {end['step']:,} | {end['tokens']:,} | {duration(log['wall_s'])} | "
            f"{fmt(log['gpu_hours'], '.2f')} | {fmt(val.get('val_loss'))} | "
            f"{fmt(val.get('val_ppl'), '.2f')} | {fmt(val.get('val_bpb'))} | "
            f"{fmt(last.get('loss'))} | {fmt(probe.get('accuracy'), '.1%')} | "
            f"{fmt(middle(r.get('tokens_per_sec') for r in log['train']), ',.0f')} | "
            f"{fmt(middle(r.get('mfu') for r in log['train']), '.1%')} | "
            f"{fmt(last.get('bad_steps'), ',')} | {ended(log)} |")
    return rows


def ended(log):
    end = log["end"]
    if end is None:
        return "no end record: still running, or crashed"
    return f"stopped by {end['stopped_by']}" if end["stopped_by"] else "finished"


def validation_rows(runs):
    """Every evaluation: validation loss, perplexity, bits per byte and probe accuracy."""
    rows = ["| run | step | tokens | val loss | val ppl | bits per byte | probe accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, log in runs:
        probes = {r["step"]: r["accuracy"] for r in log["probe"]}
        for r in log["val"]:
            rows.append(f"| {name} | {r['step']:,} | {r['tokens']:,} | {fmt(r['val_loss'])} | "
                        f"{fmt(r.get('val_ppl'), '.2f')} | {fmt(r.get('val_bpb'))} | "
                        f"{fmt(probes.get(r['step']), '.1%')} |")
    return rows


def health_lines(log, reference):
    """Each check of health.py: ok with its evidence, not checked (too short a log), or the
    warnings it gave (their messages hold the evidence); then the last validation loss
    beside the reference's at the same tokens."""
    fired = {}
    for w in log["warning"]:
        fired.setdefault(w["check"], []).append(w)
    lines = []
    for check in list(CHECKS) + sorted(set(fired) - set(CHECKS)):
        what = CHECKS.get(check, check)
        lines += [f"- **{what}: warning** at step {w['step']}: {w['message']}"
                  for w in fired.get(check, [])] or [f"- {what}: {verdict(log, check)}"]
    if reference and log["val"]:
        last = log["val"][-1]
        tokens, mean, low, high = reference_band(reference, "val_loss")
        i = min(range(len(tokens)), key=lambda i: abs(tokens[i] - last["tokens"]))
        lines.append(f"- validation loss {fmt(last['val_loss'])} at {last['tokens']:,} tokens; "
                     f"the reference at {tokens[i]:,} tokens: {mean[i]:.4f} (seeds "
                     f"{low[i]:.4f} to {high[i]:.4f}), measured by `{reference['command']}`")
    return lines


def verdict(log, check):
    """"ok (evidence)" for a check that did not fire, or "not checked (why)" where the log is
    too short for it (health.py needs RECENT records before it judges)."""
    train, vals = log["train"], log["val"]
    warmup = first_start(log).get("plan", {}).get("warmup", 0)  # 0 in logs before "plan"
    if check == "first_loss":
        vocab = first_start(log).get("config", {}).get("vocab_size")
        first = train[0] if train else {}
        if first.get("step") != 1 or first.get("loss") is None or not vocab:
            return "not checked (no step-1 record: a resumed or an older log)"
        return (f"ok (the first loss {first['loss']:.3f}; ln({vocab}) = {math.log(vocab):.3f} "
                "is the loss of a uniform guess)")
    if check == "plateau":
        after = sum(r["step"] >= warmup for r in train)
        if after < 2 * RECENT:
            return (f"not checked ({after} train records after warmup; the check compares "
                    f"the last {RECENT} with the {RECENT} before)")
        return f"ok ({after} train records after warmup)"
    if check == "overfitting":
        if len(vals) < VAL_RISES + 1:
            return f"not checked ({len(vals)} evaluations; it needs {VAL_RISES + 1})"
        return f"ok (over {len(vals)} evaluations)"
    if len(train) < 2:
        return "not checked (fewer than 2 train records)"
    return f"ok (over {len(train)} train records)"


def sample_lines(log):
    """The greedy continuation of each fixed prompt at a few evaluations, oldest first."""
    samples = log["sample"]
    if not samples:
        return ["No samples in this log."]
    n, m = len(samples), min(len(samples), SHOWN_EVALUATIONS)
    shown = sorted({round(i * (n - 1) / max(m - 1, 1)) for i in range(m)})
    lines = []
    for k, prompt in enumerate(s["prompt"] for s in samples[-1]["samples"]):
        lines += [f"Prompt: `{prompt}`", "", "```"]
        for i in shown:
            record = samples[i]
            if k < len(record["samples"]):
                text = printable(record["samples"][k]["text"])
                lines.append(f"step {record['step']:>7,} | {text}")
        lines += ["```", ""]
    return lines


def printable(text):
    """text on one line of a code block: control characters (newlines, form feeds) shown as
    their escapes, and no ``` that would end the block."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text).replace(
        "```", "`\\``")


def command_line(args):
    """The flags of a run as a command that repeats it (store_true flags bare, lists spaced)."""
    words = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        words.append(f"--{key}")
        if value is not True:
            words += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return "python train_pretrain.py " + " ".join(shlex.quote(w) for w in words)


def setup_lines(log):
    """The data report, the model's configuration and the flags of the run's first start."""
    start = first_start(log)
    lines = ["Data:", ""]
    data = start.get("data")
    lines += ["```", format_report(data), "```"] if data and "report" in data else \
        ["This log does not hold the data report (written by an older train_pretrain.py)."]
    config = ", ".join(f"{k}={v}" for k, v in start.get("config", {}).items())
    lines += ["", f"Model: {config or 'not in this log'}", "",
              f"Device: {start.get('device', '?')} {start.get('dtype', '')}, world size "
              f"{start.get('world_size', 1)}; started {len(log['starts'])} time(s)", "",
              "Flags (every flag, defaults included):", "", "```",
              command_line(start.get("args", {})), "```"]
    return lines


def write_report(paths, out_dir):
    """Write out_dir/report.md (and its PNGs) for the logs at paths; returns its path."""
    runs = [(Path(p).stem, read_log(p, strict=False)) for p in paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    references = [find_reference(log) for _, log in runs]
    reference = references[0] if len(runs) == 1 else None
    drawn = pictures(runs, reference, out_dir)
    lines = [f"# Run report: {', '.join(name for name, _ in runs)}", "",
             "Final figures (validation loss in nats per token, and bits per byte: the same "
             "loss per UTF-8 byte of text, comparable across tokenizers):", ""]
    lines += summary_rows(runs) + [""]
    if drawn is None:
        lines += ["No pictures: matplotlib is not installed. `pip install matplotlib`, then "
                  f"`python report.py {' '.join(str(p) for p in paths)} --out "
                  f"{out_dir}`.", ""]
    else:
        lines += [f"![{caption}]({name})\n\n{caption}\n" for name, caption in drawn]
    lines += [f"Skipped, not whole records: {problem}" for _, log in runs
              for problem in log["skipped"]]
    lines += ["## Validation", ""] + validation_rows(runs) + [""]
    if bench := bench_rows(runs):
        lines += ["## Benchmarks (last evaluation; docs/benchmarks.md)", ""] + bench + [""]
    if experts := expert_rows(runs):
        lines += ["## MoE load (last log interval; each expert's share of the routed "
                  "tokens, even = 1 / experts)", ""] + experts + [""]
    for (name, log), ref in zip(runs, references):
        lines += [f"## {name}", "", "### Health", ""] + health_lines(log, ref) + [""]
        lines += ["### Samples (greedy, at evaluations)", ""] + sample_lines(log) + [""]
        lines += ["### Set-up", ""] + setup_lines(log) + [""]
    path = out_dir / "report.md"
    write_atomic(path, lambda f: f.write("\n".join(lines).encode("utf-8")))
    return path


def default_out(paths):
    """OUT_DIR/reports/<stem> for OUT_DIR/logs/<stem>.jsonl; <stem>_vs_<stem>... for several."""
    first = Path(paths[0])
    name = "_vs_".join(Path(p).stem for p in paths[:3]) + (
        f"_and_{len(paths) - 3}_more" if len(paths) > 3 else "")
    return first.parent.parent / "reports" / name


def main(argv=None):
    p = argparse.ArgumentParser(description="Write the report (report.md and PNGs) of one or "
                                            "more train_pretrain.py logs.")
    p.add_argument("logs", nargs="+", help="JSONL logs, e.g. out/logs/pretrain_192_*.jsonl")
    p.add_argument("--out", default=None,
                   help="folder for report.md; default OUT_DIR/reports/<log name>")
    p.add_argument("--make_reference", metavar="JSON", default=None,
                   help="instead, write a reference curve (reference/*.json) from the logs, "
                        "runs that differ only by seed, made by --command")
    p.add_argument("--command", default="", help="with --make_reference: the runs' command")
    args = p.parse_args(argv)
    for path in args.logs:
        if not Path(path).is_file():
            raise SystemExit(f"{path} not found; train_pretrain.py writes its logs to "
                             f"out/logs/*.jsonl")
    try:
        if args.make_reference:
            make_reference(args.logs, args.command, args.make_reference)
            print(f"wrote {args.make_reference}")
        else:
            print(f"wrote {write_report(args.logs, args.out or default_out(args.logs))}")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
