"""Train a quality scorer (data_quality.py) for dataset.py --quality_model.

    python scripts/train_quality.py --reference trusted.jsonl --raw dataset/pretrain_hq.jsonl \
        --tokenizer out/tokenizer.json --kind encoder --out out/quality.pt

--reference: text you trust (a curated set: books, encyclopaedia pages, your best sources);
--raw: the corpus to be filtered, of which a sample of the same size is drawn. A classifier
(--kind encoder or ngrams) learns to tell the two apart; the perplexity scorer reads the
reference alone. The scorer keeps the tokenizer's fingerprint: preparation refuses it with
another tokenizer.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data_quality import KINDS, save_scorer, train_scorer  # noqa: E402
from tokenizer import load_tokenizer, read_sample  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", nargs="+", required=True, help=".jsonl/.txt files")
    parser.add_argument("--raw", nargs="+", default=None,
                        help="the corpus (not needed by --kind perplexity)")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--tokenizer", default="out/tokenizer.json")
    parser.add_argument("--kind", choices=KINDS, default="encoder")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--max_bytes", type=int, default=20_000_000,
                        help="of each of reference and raw, an evenly spread sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="out/quality.pt")
    args = parser.parse_args(argv)
    if args.kind != "perplexity" and not args.raw:
        parser.error(f"--kind {args.kind} learns reference against raw: give --raw")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        tok = load_tokenizer(args.tokenizer)
        reference, _ = read_sample(args.reference, text_field=args.text_field,
                                   max_bytes=args.max_bytes, verbose=False)
        raw = []
        if args.raw:
            raw, _ = read_sample(args.raw, text_field=args.text_field,
                                 max_bytes=args.max_bytes, verbose=False)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"{len(reference):,} reference and {len(raw):,} raw documents; training "
          f"{args.kind} for {args.steps} steps")
    model = train_scorer(args.kind, tok, reference, raw, steps=args.steps, seed=args.seed,
                         log=print)
    print(f"saved {save_scorer(model, args.kind, tok, args.out)}")


if __name__ == "__main__":
    main()
