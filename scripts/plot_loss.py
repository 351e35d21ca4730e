"""Draw loss curves from the JSONL logs that train_pretrain.py writes into out/logs/.

    python scripts/plot_loss.py out/logs/pretrain_512_*.jsonl --out loss.png --logx

Training loss (line) and validation loss (dots) against tokens seen, and the learning rate
(dotted, right axis), one colour per run, so several runs can be compared on one picture.
Tokens, not steps, are the x axis: runs with different batch sizes then line up.

Each log line is a JSON object. The ones read here are
    {"kind": "train", "step": ..., "tokens": ..., "loss": ..., "lr": ...}
    {"kind": "val", "step": ..., "tokens": ..., "val_loss": ...}
other kinds ("run", "resume") and other fields are ignored.

matplotlib is an optional extra: pip install matplotlib.
"""

import argparse
import json
import math
from pathlib import Path

REQUIRED = {"train": ("step", "tokens", "loss"), "val": ("step", "tokens", "val_loss")}


def read_log(path):
    """{"train": [record, ...], "val": [record, ...]} of one log, each sorted by step.

    A resumed run logs again the steps after its last checkpoint; the later record of a step
    is the one that the run continued from, so it replaces the earlier one.
    """
    by_step = {"train": {}, "val": {}}
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{line_number}: not valid JSON ({e.msg}); "
                                 f"is it a log written by train_pretrain.py?") from None
            kind = record.get("kind") if isinstance(record, dict) else None
            if kind not in by_step:
                continue
            missing = [key for key in REQUIRED[kind] if key not in record]
            if missing:
                raise SystemExit(f"{path}:{line_number}: a {kind} record without "
                                 f"{', '.join(missing)}")
            by_step[kind][record["step"]] = record
    if not by_step["train"] and not by_step["val"]:
        raise SystemExit(f"{path} has no train or val records; pass a log that "
                         f"train_pretrain.py has written to for at least one log interval")
    return {kind: [records[s] for s in sorted(records)] for kind, records in by_step.items()}


def draw(runs, logx=False):
    """A matplotlib figure of runs, a list of (name, log) with log as read_log returns it."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_loss.py needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    fig, loss_ax = plt.subplots(figsize=(10, 6))
    lr_ax = loss_ax.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, log) in enumerate(runs):
        color = colors[i % len(colors)]
        train, val = log["train"], log["val"]
        if train:
            # an interval whose every step was skipped has loss null: a gap in the line
            loss_ax.plot([r["tokens"] for r in train],
                         [math.nan if r["loss"] is None else r["loss"] for r in train],
                         color=color, linewidth=1.2, label=f"{name} train")
        if val:
            loss_ax.plot([r["tokens"] for r in val], [r["val_loss"] for r in val], "o--",
                         color=color, markerfacecolor="white", markersize=6, zorder=3,
                         label=f"{name} val")
        with_lr = [r for r in train if "lr" in r]
        if with_lr:
            lr_ax.plot([r["tokens"] for r in with_lr], [r["lr"] for r in with_lr], ":",
                       color=color, alpha=0.6, label=f"{name} lr")
    if logx:
        loss_ax.set_xscale("log")
    lr_ax.set_ylim(bottom=0)
    loss_ax.set_zorder(lr_ax.get_zorder() + 1)  # loss in front of the learning rate
    loss_ax.patch.set_visible(False)  # ... without hiding it
    loss_ax.xaxis.set_major_formatter(EngFormatter())  # 20M rather than 2.0 x 1e7
    loss_ax.set_xlabel("tokens seen")
    loss_ax.set_ylabel("loss (nats per token)")
    lr_ax.set_ylabel("learning rate")
    loss_ax.grid(True, alpha=0.3)
    # one legend for both axes
    handles, labels = loss_ax.get_legend_handles_labels()
    lr_handles, lr_labels = lr_ax.get_legend_handles_labels()
    loss_ax.legend(handles + lr_handles, labels + lr_labels, loc="upper right", fontsize="small")
    fig.tight_layout()
    return fig


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Plot training and validation loss of one or "
                                            "more train_pretrain.py logs into a PNG.")
    p.add_argument("logs", nargs="+", help="JSONL logs, e.g. out/logs/pretrain_512_*.jsonl")
    p.add_argument("--out", default="loss.png", help="PNG file to write (default loss.png)")
    p.add_argument("--logx", action="store_true", help="log-scaled tokens axis")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    runs = []
    for path in args.logs:
        if not Path(path).is_file():
            raise SystemExit(f"{path} not found; train_pretrain.py writes its logs to "
                             f"out/logs/*.jsonl")
        runs.append((Path(path).name, read_log(path)))
    fig = draw(runs, args.logx)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(runs)} run{'s' * (len(runs) > 1)})")


if __name__ == "__main__":
    main()
