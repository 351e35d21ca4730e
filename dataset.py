"""What a training run reads: a prepared split of token ids, cut into training samples.

    python dataset.py --data_path dataset/pretrain_hq.jsonl --tokenizer out/tokenizer.json

prints the report of the preparation (prepare.py: cleaning, dedup, train/val split,
tokenizing) and the directory it made. Below: open_split memory-maps a split's token file,
PretrainDataset cuts it into (X, Y, loss_mask) samples, and ShardedSampler gives each DDP
rank its share of a shuffled epoch, resumable in the middle.
"""

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from corpus import MIN_CHARS
from dedup import DEDUP_THRESHOLD
from flags import DEFAULT_TOKENIZER, add_prepare_flags, add_source_flags
from prepare import (check_source_flags, damaged, format_report, load_meta, padding_share,
                     prepare, prepare_options)
from tokenizer import PAD_ID


def open_split(prepared_dir, split):
    """Memory-map one split: (tokens, doc_starts); document i is
    tokens[doc_starts[i]:doc_starts[i + 1]]."""
    meta = load_meta(prepared_dir)
    if split not in meta["splits"]:
        raise ValueError(f"no split '{split}' in {prepared_dir}; use one of "
                         f"{list(meta['splits'])}")
    n_tokens, n_docs = meta["splits"][split]["tokens"], meta["splits"][split]["documents"]
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    # the files must be as long as meta.json says: a short file would fail deep in numpy
    bin_path = Path(prepared_dir) / f"{split}.bin"
    idx_path = Path(prepared_dir) / f"{split}.idx.npy"
    if not bin_path.is_file():
        raise ValueError(f"{bin_path} is missing: {damaged(prepared_dir)}")
    if bin_path.stat().st_size != n_tokens * dtype.itemsize:
        raise ValueError(f"{bin_path} has {bin_path.stat().st_size} bytes, but meta.json says "
                         f"{n_tokens} tokens of {dtype.itemsize} bytes: {damaged(prepared_dir)}")
    try:
        doc_starts = np.load(idx_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ValueError(f"{idx_path} cannot be read ({e}): {damaged(prepared_dir)}") from None
    if doc_starts.shape != (n_docs + 1,) or (n_docs and doc_starts[-1] != n_tokens):
        raise ValueError(f"{idx_path} does not index the {n_docs} documents of {n_tokens} tokens "
                         f"that meta.json lists: {damaged(prepared_dir)}")
    if n_tokens == 0:  # an empty file cannot be memory-mapped
        return np.zeros(0, dtype), doc_starts
    return np.memmap(bin_path, dtype, mode="r", shape=(n_tokens,)), doc_starts


class PretrainDataset(Dataset):
    """(X, Y, loss_mask) samples of max_seq_len tokens from a prepared split.

    The split is one stream of documents, <s> a </s><s> b </s> ..., cut into windows of
    max_seq_len + 1 tokens (packing): window i starts at token i * max_seq_len, so each
    token is a target exactly once and no position is wasted on padding (MiniMind pads one
    document per sample instead; prepare.padding_share says what that costs). X is the
    window without its last token and Y without its first, so Y[t] is the token after X[t];
    loss_mask is 1 where Y is a real token, 0 on the padding that only the last window can
    hold. The token file is memory-mapped on first use in each process, so the dataset
    pickles cheaply to DataLoader workers.
    """

    def __init__(self, prepared_dir, split="train", max_seq_len=512):
        self.prepared_dir, self.split = Path(prepared_dir), split
        self.max_seq_len = max_seq_len
        meta = load_meta(prepared_dir)
        self.vocab_size, self.fingerprint = meta["vocab_size"], meta.get("fingerprint")
        # a curriculum (data_order.py) is read as it lies; in-context order only needs related
        # documents inside a window, so its windows are shuffled like any others
        self.ordered = split == "train" and meta["options"].get("order") == "curriculum"
        self.n_tokens = len(open_split(prepared_dir, split)[0])
        targets = max(self.n_tokens - 1, 0)  # every token but the first is predicted
        self.n_samples = math.ceil(targets / max_seq_len)
        positions = self.n_samples * max_seq_len
        self.padding_share = 1 - targets / positions if positions else 0.0
        self._tokens = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokens"] = None  # the memory map is reopened in the worker
        return state

    def __len__(self):
        return self.n_samples

    def check_enough(self, world_size):
        """ValueError unless every rank gets at least one sequence."""
        if self.n_samples < world_size:
            raise ValueError(f"{self.prepared_dir} has {self.n_samples} {self.split} sequences "
                             f"of {self.max_seq_len} tokens, fewer than the {world_size} ranks; "
                             "add data or lower --max_seq_len")

    def window(self, i):
        """The tokens of sample i: up to max_seq_len + 1."""
        start = i * self.max_seq_len
        return self._tokens[start:start + self.max_seq_len + 1]

    def __getitem__(self, i):
        if not 0 <= i < self.n_samples:
            raise IndexError(f"sample {i} out of range for {self.n_samples} samples")
        if self._tokens is None:
            self._tokens = open_split(self.prepared_dir, self.split)[0]
        window = self.window(i)
        tokens = np.full(self.max_seq_len + 1, PAD_ID, np.int64)
        tokens[:len(window)] = window
        loss_mask = torch.zeros(self.max_seq_len, dtype=torch.float32)
        loss_mask[:len(window) - 1] = 1.0
        x = torch.from_numpy(tokens[:-1].copy())
        y = torch.from_numpy(tokens[1:].copy())
        return x, y, loss_mask


class ShardedSampler(Sampler):
    """This rank's share of a shuffled epoch, resumable in the middle.

    An epoch is a permutation of range(num_samples) fixed by (seed, epoch), or with
    shuffle=False the samples in order, every epoch (data prepared in an order). Rank r of
    world_size takes the permutation's positions start + r, start + r + world_size, ..., so
    ranks are disjoint and together cover the epoch. `start` counts the samples all ranks
    together have consumed: a run resumed at start = steps * batch_size * accumulation_steps
    * world_size continues exactly where it stopped, even with another world size. The last
    (num_samples - start) % world_size samples are left out so every rank gets the same
    count and DDP ranks step in lockstep.
    """

    def __init__(self, num_samples, rank=0, world_size=1, seed=0, epoch=0, start=0,
                 shuffle=True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range(world_size={world_size})")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.start = start
        self.shuffle = shuffle

    def __len__(self):
        return max(self.num_samples - self.start, 0) // self.world_size

    def __iter__(self):
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
                 if self.shuffle else np.arange(self.num_samples))
        first = self.start + self.rank
        yield from order[first:first + len(self) * self.world_size:self.world_size].tolist()


def build_parser(description="Clean, deduplicate and tokenize pretraining text into "
                              "--data_dir."):
    """The preparation flags (scripts/prepare_cluster.py adds its own to them)."""
    parser = argparse.ArgumentParser(description=description)
    add_source_flags(parser, data_path_default=["builtin"])
    add_prepare_flags(parser)
    parser.add_argument("--data_dir", default="out/data",
                        help="where prepared directories are kept (train_pretrain.py keeps "
                             "them in OUT_DIR/data)")
    parser.add_argument("--val_fraction", type=float, default=0.01)
    parser.add_argument("--no_near_dedup", action="store_true", help="skip MinHash dedup")
    parser.add_argument("--dedup_threshold", type=float, default=DEDUP_THRESHOLD,
                        help="Jaccard similarity of character shingles from which texts are "
                             "near duplicates (see dedup.py)")
    parser.add_argument("--num_perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--min_chars", type=int, default=MIN_CHARS,
                        help="drop documents shorter than this")
    parser.add_argument("--max_seq_len", type=int, default=512,
                        help="tokens per training sequence, for the padding figure of the report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_source_flags(parser, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        prepared = prepare(args.data_path, args.tokenizer or DEFAULT_TOKENIZER, args.data_dir,
                           val_fraction=args.val_fraction, near_dedup=not args.no_near_dedup,
                           dedup_threshold=args.dedup_threshold, num_perm=args.num_perm,
                           min_chars=args.min_chars, verbose=not args.quiet,
                           **prepare_options(args))
        padding = padding_share(np.diff(open_split(prepared, "train")[1]), args.max_seq_len)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if args.quiet:  # prepare() printed the report unless quiet
        print(format_report(load_meta(prepared)))
    print(f"padding             {padding:>12.1%}   of the positions a padded batch would "
          f"hold at least (one document per sample, max_seq_len {args.max_seq_len}); "
          f"packing trains on all of them")
    print(f"prepared data: {prepared}")


if __name__ == "__main__":
    main()
