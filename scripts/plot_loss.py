"""Draw loss curves from the JSONL logs that train_pretrain.py writes into out/logs/.

    python scripts/plot_loss.py out/logs/pretrain_512_*.jsonl --out loss.png --logx

Training loss (line) and validation loss (dots) against tokens seen, and the learning rate
(dotted, right axis), one colour per run, so several runs can be compared on one picture.
Tokens, not steps, are the x axis: runs with different batch sizes then line up. This is the
first picture of the run report (report.py), which has the others too.

matplotlib is an optional extra: pip install matplotlib.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the core, from any directory
from report import loss_figure, read_log  # noqa: E402


def draw(runs, logx=False):
    """A matplotlib figure of runs, a list of (name, log) with log as read_log returns it."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plot_loss.py needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only: no display needed
    return loss_figure(runs, logx)


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
        try:
            runs.append((Path(path).name, read_log(path)))
        except ValueError as e:
            raise SystemExit(str(e)) from None
    fig = draw(runs, args.logx)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(runs)} run{'s' * (len(runs) > 1)})")


if __name__ == "__main__":
    main()
