"""Pretraining data: read raw text, clean it, deduplicate it, tokenize it once, pack it.

    python dataset.py --data dataset/pretrain_hq.jsonl --tokenizer out/tokenizer.json

prepare() turns the sources into a directory under cache_dir, named by a fingerprint of the
sources, the tokenizer and the options, so it is reused while all three are unchanged:

    train.bin, val.bin          token ids, little-endian uint16 (uint32 when the vocabulary
                                has more than 65536 tokens); every document is <s> ... </s>
    train.idx.npy, val.idx.npy  int64 offset of every document's first token, then the total
    meta.json                   fingerprints, counts, cleaning report, dtype, vocab_size

It is built in a temporary directory that is renamed into place at the end, so an interrupted
run never leaves a directory that looks complete. The steps, in order:

    1. read     .jsonl / .txt files (gzip too), streaming, or the text that ships with Python
    2. clean    counted rules: control characters, runs of spaces or of one symbol, documents
                that are too short or mostly symbols
    3. dedup    exact (hash, confirmed by comparing the texts), then near (MinHash-LSH)
    4. tokenize in parallel batches, split train/val by a hash of each document

PretrainDataset memory-maps one split and cuts it into (X, Y, loss_mask) windows, and
ShardedSampler gives each DDP rank its share of a shuffled epoch.
"""

import argparse
import ast
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import re
import shutil
import sys
import sysconfig
import time
import zlib
from collections import Counter, deque
from functools import partial
from glob import glob
from itertools import chain
from pathlib import Path

import numpy as np
import pydoc_data.topics
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, load_tokenizer,
                       tokenizer_fingerprint)

FORMAT_VERSION = 1  # bump when a change here changes what prepare() writes


def stdlib_docstrings(stdlib_dir):
    """One document per module of the standard library: the docstrings of the module and of
    its classes and functions, each under its qualified name. Files are read in sorted order."""
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "pydoc_data",
            "__pycache__"}
    root = Path(stdlib_dir)
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in skip]  # prune: not walked at all
        files += [(Path(folder) / n).relative_to(root).as_posix() for n in names
                  if n.endswith(".py")]
    docs = []
    for rel in sorted(files):
        try:
            tree = ast.parse((root / rel).read_bytes())
        except (SyntaxError, ValueError):  # a few files are invalid on purpose
            continue
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        sections = []
        _collect_docstrings(tree, module, sections)
        if sections:
            docs.append("\n\n".join(sections))
    return docs


def _collect_docstrings(node, name, sections):
    doc = ast.get_docstring(node)
    if doc:
        sections.append(f"{name}\n{doc}")
    for child in node.body:
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            _collect_docstrings(child, f"{name}.{child.name}", sections)


def builtin_corpus():
    """Text that ships with Python, so MyLLM trains without downloading anything: the
    language reference topics of pydoc (~0.47 M characters), then stdlib docstrings."""
    topics = pydoc_data.topics.topics
    docs = [topics[key] for key in sorted(topics)]
    return docs + stdlib_docstrings(sysconfig.get_paths()["stdlib"])


def expand_paths(sources):
    """Expand a source list (paths, globs, 'builtin') into files in sorted order per glob."""
    if sources is None:
        sources = ["builtin"]
    if isinstance(sources, (str, Path)):
        sources = [sources]
    paths = []
    for source in sources:
        if source == "builtin":
            paths.append(source)
            continue
        # a str may be a glob; a Path is taken as it is
        pattern = isinstance(source, str) and any(c in source for c in "*?[")
        matches = sorted(glob(source)) if pattern else [source]
        if not matches or not Path(matches[0]).exists():
            raise FileNotFoundError(f"{source} not found; pass existing .jsonl/.txt files "
                                    f"(optionally .gz), a glob, or 'builtin'")
        for match in matches:
            if Path(match).is_dir():
                raise ValueError(f"{match} is a directory; pass the files in it, or a glob "
                                 f"like {Path(match) / '*.jsonl'}")
        paths += [Path(m) for m in matches]
    return paths


def _bad_line(message, skip_bad_lines, counts):
    if not skip_bad_lines:
        raise ValueError(message)
    if counts is not None:
        counts["bad_lines"] += 1


def read_file(path, text_field="text", skip_bad_lines=False, counts=None):
    """Yield the documents of one file, streaming: a .jsonl file gives the text_field of every
    line, a .txt file its paragraphs (separated by blank lines); either may be gzipped."""
    path = Path(path)
    zipped = path.name.endswith(".gz")
    kind = Path(path.name[:-3] if zipped else path.name).suffix
    if kind not in (".jsonl", ".txt"):
        raise ValueError(f"{path}: unsupported file type; use .jsonl or .txt (or .jsonl.gz, "
                         f".txt.gz)")
    skip_hint = "or pass --skip_bad_lines to skip and count such lines"
    try:
        with (gzip.open if zipped else open)(path, "rb") as f:
            lines = _decoded_lines(f, path, skip_hint, skip_bad_lines, counts)
            if kind == ".txt":
                yield from _paragraphs(lines)
                return
            for lineno, line in lines:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    _bad_line(f"{path}:{lineno}: malformed JSON ({e.msg}, column {e.colno}); "
                              f"fix the line, {skip_hint}", skip_bad_lines, counts)
                    continue
                if not isinstance(record, dict) or text_field not in record:
                    keys = list(record)[:5] if isinstance(record, dict) else type(record).__name__
                    _bad_line(f"{path}:{lineno}: no '{text_field}' field (found {keys}); pass "
                              f"--text_field with the field that holds the text, {skip_hint}",
                              skip_bad_lines, counts)
                    continue
                text = record[text_field]
                if not isinstance(text, str):
                    _bad_line(f"{path}:{lineno}: field '{text_field}' is "
                              f"{type(text).__name__}, not text; {skip_hint}",
                              skip_bad_lines, counts)
                    continue
                yield text
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: damaged gzip file ({e}); recompress it or pass the "
                         f"uncompressed file") from None


def _decoded_lines(f, path, skip_hint, skip_bad_lines, counts):
    """(line number, text) of every line that is valid UTF-8."""
    for lineno, raw in enumerate(f, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            _bad_line(f"{path}:{lineno}: bytes that are not UTF-8 ({e.reason} at byte "
                      f"{e.start} of the line); convert the file to UTF-8, {skip_hint}",
                      skip_bad_lines, counts)
            continue
        yield lineno, (line.removeprefix("\ufeff") if lineno == 1 else line)


def _paragraphs(lines):
    paragraph = []
    for _, line in lines:
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph)
            paragraph = []
    if paragraph:
        yield "".join(paragraph)


def iter_texts(paths, text_field="text", skip_bad_lines=False, counts=None):
    """Stream the documents of several sources in order; counts['bad_lines'] counts skips."""
    for path in expand_paths(paths):
        if path == "builtin":
            yield from builtin_corpus()
        else:
            yield from read_file(path, text_field, skip_bad_lines, counts)


def source_bytes(path):
    """Size of a file's text without reading it; for gzip the size its trailer records
    (exact below 4 GiB). Used to spread a sample evenly over a corpus."""
    path = Path(path)
    if path.name.endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    return path.stat().st_size


def file_fingerprint(path):
    """Content hash of a file, so an edited source is noticed even when its size and
    modification time look the same."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


CLEANING_RULES = ("control_chars", "space_runs", "symbol_runs", "too_short", "mostly_symbols")
MIN_CHARS = 20  # shorter documents carry too little context to learn from
MIN_ALNUM_SHARE = 0.5  # of the non-space characters; below it, a document is mostly symbols

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every control char but \t, \n
SPACE_RUN = re.compile(r"(?<=\S)[^\S\n]{8,}")  # inside a line only: indentation is kept
BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n){2,}")
SYMBOL_RUN = re.compile(r"([^\w\s]|_)\1{5,}")  # 6 or more of one symbol: =====, ------, ....
MARKERS = re.compile("|".join(map(re.escape, SPECIAL_TOKENS[1:])))


# Character classes looked up by code point in numpy, several times faster than a regex pass
# over every document. Tables cover the first 64 K code points; the rare others (emoji, rare
# ideographs) are asked one by one.
def _bmp_table(predicate):
    return np.fromiter((predicate(chr(c)) for c in range(0x10000)), bool, 0x10000)


IS_ALNUM_BMP, IS_SPACE_BMP = _bmp_table(str.isalnum), _bmp_table(str.isspace)


def code_points(text):
    # surrogatepass: a lone surrogate (a JSON escape such as "\ud800") is a code point too
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


def char_class(cp, table, predicate):
    """predicate(chr(c)) for every code point c of cp, as a boolean array."""
    out = table[np.minimum(cp, 0xFFFF)]
    far = np.flatnonzero(cp > 0xFFFF)
    if len(far):
        out[far] = [predicate(chr(c)) for c in cp[far]]
    return out


def clean_text(text, min_chars=MIN_CHARS):
    """Apply the cleaning rules in order; returns (cleaned text, or None if the document is
    dropped, and the names of the rules that fired)."""
    fired = []
    new = CONTROL_CHARS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if new != text:
        fired.append("control_chars")
        text = new
    new = BLANK_LINES.sub("\n\n", SPACE_RUN.sub(" ", text))
    if new != text:
        fired.append("space_runs")
        text = new
    new = SYMBOL_RUN.sub(r"\1\1\1", text)
    if new != text:
        fired.append("symbol_runs")
        text = new
    text = text.strip()
    content = MARKERS.sub("", text)  # MiniMind's <s> ... </s> markers are not content
    if len(content.strip()) < min_chars:
        return None, fired + ["too_short"]
    cp = code_points(content)
    non_space = len(cp) - char_class(cp, IS_SPACE_BMP, str.isspace).sum()
    if char_class(cp, IS_ALNUM_BMP, str.isalnum).sum() < MIN_ALNUM_SHARE * non_space:
        return None, fired + ["mostly_symbols"]
    return text, fired


def normalize(text):
    """The form two texts are compared in: lower case, whitespace runs as one space."""
    return " ".join(text.lower().split())


def text_hash(normalized):
    """64-bit hash of a normalised text for exact dedup; equal hashes are confirmed by
    comparing the texts, so a collision never drops a distinct document."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(),
                          "little")


def unit_hash(normalized, salt):
    """A number in [0, 1) fixed by the text: a document's split never depends on the others."""
    digest = hashlib.blake2b(normalized.encode("utf-8"), digest_size=8, salt=salt.encode()[:16])
    return int.from_bytes(digest.digest(), "little") / 2**64


# A shingle unit is a word, or a single CJK character: Chinese has no spaces, so splitting it on
# non-word characters would make whole clauses into one "word" and near duplicates that differ
# by one character would share no shingle at all.
CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
              (0xAC00, 0xD7AF))  # kana, CJK ideographs, compatibility ideographs, hangul


def _cjk_table():
    """Boolean table indexed by code point (all the ranges lie in the first 64 K)."""
    table = np.zeros(0x10000, bool)
    for lo, hi in CJK_RANGES:
        table[lo:hi + 1] = True
    return table


IS_CJK = _cjk_table()
SHINGLE_SIZE = 5
SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd, so the polynomial hashes mix all bits
MULT_POWERS = np.cumprod(np.r_[np.uint64(1), np.full(63, SHINGLE_MULT)], dtype=np.uint64)


def shingle_units(text):
    """A 64-bit hash of every unit of the text, in order (uint64 array).

    Works on an array of code points rather than on one Python string per unit: several
    times faster on Chinese, where nearly every character is a unit. Word characters are
    those of the regex \\w: alphanumeric, or "_".
    """
    cp = code_points(text.lower())
    in_word = char_class(cp, IS_ALNUM_BMP, str.isalnum) | (cp == ord("_"))
    if not in_word.any():
        return np.zeros(0, np.uint64)
    cjk = IS_CJK[np.minimum(cp, 0xFFFF)]
    # a unit starts at a CJK character, or at a word character after a non-word or CJK one
    after_break = np.empty(len(cp), bool)
    after_break[0] = True
    np.logical_or(~in_word[:-1], cjk[:-1], out=after_break[1:])
    is_start = in_word & (cjk | after_break)
    starts = np.flatnonzero(is_start)
    # unit hash: sum of cp[j] * SHINGLE_MULT**(j - start) over its characters, mod 2**64;
    # the non-word characters after a word add 0
    # (characters before the first unit get a meaningless offset, clipped: their term is 0)
    offsets = np.arange(len(cp)) - starts[np.cumsum(is_start) - 1]
    terms = np.where(in_word, cp, 0).astype(np.uint64) * MULT_POWERS[np.clip(offsets, 0, 63)]
    return np.add.reduceat(terms, starts)


def shingles(text, size=SHINGLE_SIZE):
    """64-bit hashes of the text's shingles: runs of `size` consecutive units (uint64 array)."""
    ids = shingle_units(text)
    if len(ids) == 0:
        return ids
    n = max(len(ids) - size + 1, 1)  # a text shorter than one shingle is a single shingle
    hashes = np.zeros(n, np.uint64)
    for k in range(min(size, len(ids))):
        hashes = hashes * SHINGLE_MULT + ids[k:k + n]  # wraps mod 2**64
    return hashes


def minhash_params(num_perm):
    """The (a, b) of each of the num_perm hash functions: fixed, so signatures are too."""
    rng = np.random.default_rng(20240607)
    a = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def minhash(shingle_arrays, num_perm=128, chunk=1024):
    """MinHash signatures, (n_docs, num_perm) uint32.

    Hash function k maps a shingle x to (a_k * x + b_k) mod 2**64 >> 32 (multiply-shift
    hashing); a signature keeps the minimum over the document's shingles. Two documents agree
    at one position with probability equal to the Jaccard similarity of their shingle sets.
    Documents without shingles get all-ones signatures. Rows are hashed `chunk` at a time,
    a block small enough to stay in the CPU cache.
    """
    a, b = minhash_params(num_perm)
    sig = np.full((len(shingle_arrays), num_perm), 2**64 - 1, np.uint64)
    lengths = np.array([len(s) for s in shingle_arrays], np.int64)
    if lengths.sum() == 0:
        return (sig >> np.uint64(32)).astype(np.uint32)
    flat = np.concatenate(shingle_arrays)
    docs = np.flatnonzero(lengths)
    starts = (np.cumsum(lengths) - lengths)[docs]  # strictly increasing
    block = np.empty((chunk, num_perm), np.uint64)
    for r0 in range(0, len(flat), chunk):
        r1 = min(r0 + chunk, len(flat))
        # The documents with rows in [r0, r1): the one holding row r0, up to the last starting
        # before r1; each contributes one segment of rows.
        first = np.searchsorted(starts, r0, side="right") - 1
        last = np.searchsorted(starts, r1, side="left")
        seg_starts = np.maximum(starts[first:last], r0) - r0
        hashed = block[:r1 - r0]
        np.multiply(flat[r0:r1, None], a, out=hashed)  # (rows, num_perm), wraps mod 2**64
        hashed += b
        seg_min = np.minimum.reduceat(hashed, seg_starts, axis=0)
        seg_docs = docs[first:last]
        sig[seg_docs] = np.minimum(sig[seg_docs], seg_min)
    # The >> 32 comes after the minimum: it keeps the order, and runs on far fewer values.
    return (sig >> np.uint64(32)).astype(np.uint32)


def lsh_bands(num_perm, threshold):
    """LSH bands and rows for a similarity threshold.

    Two documents with Jaccard similarity s share all `rows` values of one band with
    probability s**rows, so they become candidates with P = 1 - (1 - s**rows)**bands. Take
    the most rows (fewest false candidates to check) that still finds a pair at the threshold
    with P >= 0.99; candidates are confirmed by their exact Jaccard similarity anyway.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
            return bands, rows
    return num_perm, 1


def band_hashes(sig, bands, rows):
    """(n_docs, bands) uint64: one hash of the rows of each band."""
    coef = np.random.default_rng(7).integers(1, 2**63, rows, dtype=np.uint64) | np.uint64(1)
    cols = sig[:, :bands * rows].astype(np.uint64).reshape(len(sig), bands, rows)
    return (cols * coef).sum(axis=2, dtype=np.uint64)  # wraps mod 2**64


def candidate_pairs(hashes, eligible):
    """Pairs (i, j), i < j, of eligible documents that agree on some band: within each bucket
    every member is paired with the bucket's first document. Returns an int64 (n, 2) array."""
    ids = np.flatnonzero(eligible)
    if len(ids) < 2:
        return np.zeros((0, 2), np.int64)
    pairs = []
    for band in range(hashes.shape[1]):
        order = np.argsort(hashes[ids, band], kind="stable")  # stable: ascending ids in a bucket
        values = hashes[ids[order], band]
        new_bucket = np.r_[True, values[1:] != values[:-1]]
        first = np.maximum.accumulate(np.where(new_bucket, np.arange(len(ids)), 0))
        members = np.flatnonzero(~new_bucket)
        pairs.append(np.stack([ids[order[first[members]]], ids[order[members]]], axis=1))
    pairs = np.concatenate(pairs).astype(np.int64)
    n = len(eligible)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])  # one code per pair drops repeats
    return np.stack([codes // n, codes % n], axis=1)


def jaccard(a, b):
    """Exact Jaccard similarity |a & b| / |a | b| of two sets given as np.unique arrays."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - common
    return common / union if union else 1.0


def _find(parent, i):
    """Union-find root of i; parent holds only the documents merged so far."""
    while parent.get(i, i) != i:
        parent[i] = parent.get(parent[i], parent[i])  # path halving
        i = parent[i]
    return i


def near_duplicates(pairs, get_shingles, threshold, progress=None):
    """Cluster candidate pairs whose exact Jaccard similarity reaches the threshold.

    Returns (ids to drop, number of clusters, pairs checked): every cluster keeps its first
    document. Pairs already in one cluster are not checked again.
    """
    parent = {}
    cache = {}
    checked = 0

    def cached_shingles(i):
        if i not in cache:
            if len(cache) > 20000:
                cache.clear()
            cache[i] = np.unique(get_shingles(i))
        return cache[i]

    for i, j in pairs.tolist():
        if progress is not None:
            progress.update(1)
        ri, rj = _find(parent, i), _find(parent, j)
        if ri == rj:
            continue
        checked += 1
        if jaccard(cached_shingles(i), cached_shingles(j)) >= threshold:
            parent[max(ri, rj)] = min(ri, rj)  # the root is the earliest document: kept
    drop = sorted(i for i in parent if _find(parent, i) != i)
    clusters = len({_find(parent, i) for i in drop})
    return drop, clusters, checked


SENTENCE_ENDS = (".", "!", "?", "\n", "。", "！", "？", "…")


def sentence_end_ids(tok):
    """Ids of the tokens that end a sentence; padded mode cuts long documents after them."""
    vocab = tok.get_vocab_size()
    texts = tok.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
    return sorted({i for i, t in enumerate(texts) if t.endswith(SENTENCE_ENDS)} | {EOS_ID})


def _clean_and_sign(item, min_chars, seed, num_perm, bands, rows, near_dedup):
    """Pass-1 work on one batch of raw documents; runs in a worker process."""
    source_id, texts = item
    cleaned, fired, exact, split, weight = [], [], [], [], []
    for text in texts:
        text, rules = clean_text(text, min_chars)
        fired.append(rules)
        if text is None:
            continue
        norm = normalize(text)
        cleaned.append(text)
        exact.append(text_hash(norm))
        split.append(unit_hash(norm, f"split{seed}"))
        weight.append(unit_hash(norm, f"weight{seed}"))
    if near_dedup:
        doc_shingles = [shingles(t) for t in cleaned]
        hashes = band_hashes(minhash(doc_shingles, num_perm), bands, rows)
        has_shingles = np.array([len(s) > 0 for s in doc_shingles], bool)
    else:
        hashes = np.zeros((len(cleaned), 0), np.uint64)
        has_shingles = np.zeros(len(cleaned), bool)
    return (source_id, cleaned, fired, np.array(exact, np.uint64), np.array(split),
            np.array(weight), hashes, has_shingles)


def _batches(entries, text_field, skip_bad_lines, counts, batch_size=1000):
    """(source index, list of raw texts); a batch never mixes two sources."""
    for source_id, paths in enumerate(entries):
        batch = []
        for text in iter_texts(paths, text_field, skip_bad_lines, counts):
            batch.append(text)
            if len(batch) == batch_size:
                yield source_id, batch
                batch = []
        if batch:
            yield source_id, batch


def _map_bounded(fn, items, pool, depth):
    """map(fn, items) in order, on a process pool if given. At most `depth` items are in
    flight, so a huge input is never read far ahead into memory (Pool.imap would)."""
    if pool is None:
        yield from map(fn, items)
        return
    pending = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= depth:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


class _DocStore:
    """The cleaned documents of pass 1, appended to one file and read back by index, so
    a corpus larger than memory never has to fit in it."""

    def __init__(self, path):
        self.file = open(path, "w+b")
        self.offsets = [0]

    def __len__(self):
        return len(self.offsets) - 1

    def append(self, texts):
        for text in texts:
            data = text.encode("utf-8")
            self.file.write(data)
            self.offsets.append(self.offsets[-1] + len(data))

    def read(self, start, stop):
        """Documents start..stop-1, with one read."""
        self.file.flush()
        self.file.seek(self.offsets[start])
        data = self.file.read(self.offsets[stop] - self.offsets[start])
        base = self.offsets[start]
        return [data[self.offsets[i] - base:self.offsets[i + 1] - base].decode("utf-8")
                for i in range(start, stop)]

    def close(self):
        self.file.close()


def _read_clean_sign(entries, options, bands, rows, num_workers, store, counts, verbose):
    """Pass 1: read every document, clean it, append it to store, and hash and sign it.

    Returns per kept document: source index, exact-dedup hash, split hash, weight hash, LSH
    band hashes and whether it has any shingle.
    """
    work = partial(_clean_and_sign, min_chars=options["min_chars"], seed=options["seed"],
                   num_perm=options["num_perm"], bands=bands, rows=rows,
                   near_dedup=options["near_dedup"])
    batches = _batches(entries, options["text_field"], options["skip_bad_lines"], counts)
    columns = [[] for _ in range(6)]
    pool = multiprocessing.Pool(num_workers) if num_workers > 0 else None
    try:
        bar = tqdm(desc="read + clean", unit=" docs", disable=not verbose)
        for source_id, cleaned, fired, *arrays in _map_bounded(work, batches, pool,
                                                              depth=2 * num_workers + 1):
            bar.update(len(fired))
            counts["documents_read"] += len(fired)
            counts.update(chain.from_iterable(fired))
            store.append(cleaned)
            for column, array in zip(columns, [np.full(len(cleaned), source_id), *arrays]):
                column.append(array)
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
    if len(store) == 0:
        raise ValueError(f"no documents left after cleaning ({counts['documents_read']} read, "
                         f"{_dropped_summary(counts)}); check the files and --text_field")
    return [np.concatenate(column) for column in columns]


def _dropped_summary(counts):
    dropped = [f"{counts[r]} {r}" for r in ("too_short", "mostly_symbols") if counts[r]]
    if counts["bad_lines"]:
        dropped.append(f"{counts['bad_lines']} bad lines")
    return ", ".join(dropped) + " dropped" if dropped else "none dropped"


def _exact_duplicates(keys, store):
    """Boolean mask of exact duplicates: documents whose hash matches an earlier one and whose
    normalised text is equal to it. Hash collisions alone never drop anything."""
    dup = np.zeros(len(keys), bool)
    order = np.argsort(keys, kind="stable")  # stable: each group lists its documents in order
    sorted_keys = keys[order]
    bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    group_starts, group_ends = np.r_[0, bounds], np.r_[bounds, len(keys)]
    for lo, hi in zip(group_starts.tolist(), group_ends.tolist()):
        if hi - lo < 2:
            continue
        seen = set()
        for i in order[lo:hi].tolist():
            text = normalize(store.read(i, i + 1)[0])
            dup[i] = text in seen  # a set compares the full texts of equal hashes
            seen.add(text)
    return dup


def _deduplicate(exact_keys, hashes, has_shingles, store, options, counts, verbose):
    """Exact, then near duplicates; returns the mask of documents to keep. The first
    document of each group of duplicates is kept."""
    dup = _exact_duplicates(exact_keys, store)
    counts["exact_duplicates"] = int(dup.sum())
    if options["near_dedup"]:
        pairs = candidate_pairs(hashes, has_shingles & ~dup)
        bar = tqdm(desc="near dedup", total=len(pairs), unit=" pairs", disable=not verbose)
        drop, clusters, checked = near_duplicates(
            pairs, lambda i: shingles(store.read(i, i + 1)[0]), options["dedup_threshold"], bar)
        bar.close()
        dup[drop] = True
        counts.update(near_duplicates=len(drop), near_duplicate_clusters=clusters,
                      candidate_pairs=len(pairs), candidate_pairs_checked=checked)
    return ~dup


def _split_docs(keep, split_keys, val_fraction):
    """Boolean val mask: documents whose hash falls below val_fraction. A tiny corpus still
    gets one validation document, and at least one training document is always left."""
    val = keep & (split_keys < val_fraction)
    kept = np.flatnonzero(keep)
    if val_fraction > 0 and not val.any() and len(kept) >= 2:
        val[kept[np.argmin(split_keys[kept])]] = True
    if len(kept) and val[kept].all():
        val[kept[np.argmax(split_keys[kept])]] = False
    return val


def _tokenize(store, keep, val, tok, dtype, tmp_dir, verbose, batch_size=2000):
    """Pass 2: encode the kept documents in parallel batches into train.bin and val.bin, each
    framed as <s> ... </s> unless its text already is. Returns the token count of every
    document of each split and the number of text bytes encoded."""
    bos, eos = tok.id_to_token(BOS_ID), tok.id_to_token(EOS_ID)
    lengths = {"train": [], "val": []}
    text_bytes = 0
    bar = tqdm(desc="tokenize", total=int(keep.sum()), unit=" docs", disable=not verbose)
    with open(tmp_dir / "train.bin", "wb") as train_file, \
            open(tmp_dir / "val.bin", "wb") as val_file:
        for lo in range(0, len(store), batch_size):
            hi = min(lo + batch_size, len(store))
            texts = [(i, t) for i, t in zip(range(lo, hi), store.read(lo, hi)) if keep[i]]
            # encode_batch_fast runs on all cores (Rust threads) and skips the char offsets
            encodings = tok.encode_batch_fast([t for _, t in texts], add_special_tokens=False)
            for split, file in (("train", train_file), ("val", val_file)):
                framed = [e.ids if t.startswith(bos) and t.endswith(eos)
                          else [BOS_ID, *e.ids, EOS_ID]
                          for (i, t), e in zip(texts, encodings) if val[i] == (split == "val")]
                flat = np.fromiter(chain.from_iterable(framed), dtype, sum(map(len, framed)))
                flat.tofile(file)
                lengths[split] += map(len, framed)
            text_bytes += sum(len(t.encode("utf-8")) for _, t in texts)
            bar.update(len(texts))
    bar.close()
    return lengths, text_bytes


def _apply_weights(path, starts, copies, dtype):
    """Rewrite the training tokens with document i repeated copies[i] times: first one copy
    of every document, then the second copies, and so on, so repeats are not side by side.
    Returns the new document offsets."""
    if (copies == 1).all():
        return starts
    lengths = np.diff(starts)
    out_lengths = []
    tmp = path.with_suffix(".weighted")
    tokens = np.memmap(path, dtype, mode="r") if starts[-1] else np.zeros(0, dtype)
    with open(tmp, "wb") as f:
        for k in range(int(copies.max())):
            for i in np.flatnonzero(copies > k).tolist():
                tokens[starts[i]:starts[i + 1]].tofile(f)
                out_lengths.append(lengths[i])
    del tokens
    os.replace(tmp, path)
    return np.concatenate([[0], np.cumsum(out_lengths, dtype=np.int64)])


def _build(entries, weights, tok, tmp_dir, options, num_workers, verbose):
    """The work of prepare(): write the splits into tmp_dir and return the meta dict."""
    counts = Counter()
    seconds = {}
    bands, rows = lsh_bands(options["num_perm"], options["dedup_threshold"])
    num_workers = min(os.cpu_count() or 1, 8) if num_workers is None else num_workers
    store = _DocStore(tmp_dir / "cleaned.txt")
    try:
        start = time.time()
        columns = _read_clean_sign(entries, options, bands, rows, num_workers, store, counts,
                                   verbose)
        source_ids, exact_keys, split_keys, weight_keys, hashes, has_shingles = columns
        seconds["read_clean"] = time.time() - start

        start = time.time()
        keep = _deduplicate(exact_keys, hashes, has_shingles, store, options, counts, verbose)
        val = _split_docs(keep, split_keys, options["val_fraction"])
        seconds["dedup"] = time.time() - start

        start = time.time()
        dtype = np.dtype("<u2") if tok.get_vocab_size() <= 2**16 else np.dtype("<u4")
        lengths, text_bytes = _tokenize(store, keep, val, tok, dtype, tmp_dir, verbose)
    finally:
        store.close()
        os.remove(tmp_dir / "cleaned.txt")
    n_tokens = sum(map(sum, lengths.values()))
    starts = {s: np.concatenate([[0], np.cumsum(lengths[s], dtype=np.int64)]) for s in lengths}
    # A training document appears as often as the whole part of its source's weight, and
    # once more if its hash falls below the fractional part.
    train = keep & ~val
    weight = np.array(weights)[source_ids[train]]
    copies = np.floor(weight).astype(np.int64) + (weight_keys[train] < weight % 1)
    starts["train"] = _apply_weights(tmp_dir / "train.bin", starts["train"], copies, dtype)
    for split, offsets in starts.items():
        np.save(tmp_dir / f"{split}.idx.npy", offsets)
    seconds["tokenize"] = time.time() - start

    report = {"documents_read": counts["documents_read"], "bad_lines": counts["bad_lines"],
              "cleaning": {rule: counts[rule] for rule in CLEANING_RULES},
              **{k: counts[k] for k in ("exact_duplicates", "near_duplicates",
                                        "near_duplicate_clusters", "candidate_pairs",
                                        "candidate_pairs_checked")},
              "documents_kept": int(keep.sum()),
              "bytes_per_token": text_bytes / max(n_tokens, 1),  # <s> and </s> included
              "lsh": {"bands": bands, "rows": rows},
              "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    return {"format": FORMAT_VERSION, "vocab_size": tok.get_vocab_size(), "dtype": dtype.name,
            "bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID,
            "tokenizer_fingerprint": tokenizer_fingerprint(tok), "options": options,
            "splits": {s: {"documents": len(starts[s]) - 1, "tokens": int(starts[s][-1])}
                       for s in starts},
            "sentence_end_ids": sentence_end_ids(tok), "report": report}


def _source_entries(sources, weights):
    """The files of each source (a glob is one source), and one weight per source."""
    if sources is None:
        sources = ["builtin"]
    elif isinstance(sources, (str, Path)):
        sources = [sources]
    entries = [expand_paths([source]) for source in sources]
    weights = [1.0] * len(entries) if weights is None else [float(w) for w in weights]
    if len(weights) != len(entries):
        raise ValueError(f"{len(weights)} weights for {len(entries)} sources; give one weight "
                         f"per --data entry")
    if any(w < 0 for w in weights):
        raise ValueError(f"weights must be >= 0, got {weights}")
    return entries, weights


def _fingerprint_sources(entries, weights):
    fingerprints = []
    for paths, weight in zip(entries, weights):
        for path in paths:
            if path == "builtin":
                # The built-in corpus depends only on the Python that runs this (and on
                # builtin_corpus(), whose changes bump FORMAT_VERSION).
                fp = {"path": "builtin", "python": sys.version,
                      "stdlib": sysconfig.get_paths()["stdlib"]}
            else:
                fp = {"path": str(Path(path).resolve()), "bytes": Path(path).stat().st_size,
                      "blake2b": file_fingerprint(path)}
            fingerprints.append({**fp, "weight": weight})
    return fingerprints


def load_meta(prepared_dir):
    """The meta.json of a prepared directory."""
    path = Path(prepared_dir) / "meta.json"
    if not path.is_file():
        out_dir = Path(prepared_dir).parent
        raise FileNotFoundError(f"{path} not found; prepare the data first with "
                                f"`python dataset.py --data ... --out_dir {out_dir}`")
    return json.loads(path.read_text(encoding="utf-8"))


def check_tokenizer(prepared_dir, tok):
    """Raise ValueError unless the prepared data was tokenized by tok."""
    made_with = load_meta(prepared_dir)["tokenizer_fingerprint"]
    given = tokenizer_fingerprint(tok)
    if made_with != given:
        raise ValueError(f"{prepared_dir} was tokenized by another tokenizer ({made_with[:12]}, "
                         f"not {given[:12]}); pass the tokenizer it was made with, or prepare "
                         f"the data again with this one")


def prepare(sources, tokenizer_path, cache_dir, *, text_field="text", val_fraction=0.01,
            near_dedup=True, dedup_threshold=0.8, num_perm=128, min_chars=MIN_CHARS, seed=0,
            skip_bad_lines=False, num_workers=None, weights=None, verbose=True):
    """Clean, deduplicate and tokenize sources into a directory under cache_dir; return it.

    sources: paths or globs of .jsonl/.txt files (gzip too), or None / ['builtin'] for the
    text that ships with Python. weights (one per source) scale how often each source's
    documents appear in the training split: 2 repeats every document, 0.5 keeps a
    deterministic half. The directory is reused while sources, tokenizer and options are
    unchanged; num_workers and verbose do not change the result.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    entries, weights = _source_entries(sources, weights)
    tok = load_tokenizer(tokenizer_path)
    options = {"format": FORMAT_VERSION, "text_field": text_field, "val_fraction": val_fraction,
               "near_dedup": near_dedup, "dedup_threshold": dedup_threshold,
               "num_perm": num_perm, "min_chars": min_chars, "seed": seed,
               "skip_bad_lines": skip_bad_lines}
    source_fps = _fingerprint_sources(entries, weights)
    key = json.dumps({"sources": source_fps, "tokenizer": tokenizer_fingerprint(tok),
                      "options": options}, sort_keys=True)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    first = entries[0][0]
    name = f"{'builtin' if first == 'builtin' else first.name.split('.')[0]}-{fingerprint}"
    out_dir = Path(cache_dir) / name
    if (out_dir / "meta.json").is_file():
        if verbose:
            print(f"reusing {out_dir}: sources, tokenizer and options are unchanged")
            print(format_report(load_meta(out_dir)))
        return out_dir

    tmp_dir = Path(cache_dir) / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    try:
        meta = _build(entries, weights, tok, tmp_dir, options, num_workers, verbose)
        meta.update(fingerprint=fingerprint, sources=source_fps,
                    tokenizer_path=str(Path(tokenizer_path).resolve()))
        # meta.json last: a directory without it is never mistaken for a finished one
        (tmp_dir / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
        if out_dir.exists() and not (out_dir / "meta.json").is_file():
            shutil.rmtree(out_dir)  # left by hand: a finished directory has meta.json
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not (out_dir / "meta.json").is_file():
                raise
            # another process (another DDP rank, say) finished the same directory first
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if verbose:
        print(f"prepared {out_dir}")
        print(format_report(meta))
    return out_dir


def open_split(prepared_dir, split):
    """Memory-map one split: (tokens, doc_starts); document i is
    tokens[doc_starts[i]:doc_starts[i + 1]]."""
    meta = load_meta(prepared_dir)
    if split not in meta["splits"]:
        raise ValueError(f"no split '{split}' in {prepared_dir}; use one of "
                         f"{list(meta['splits'])}")
    n_tokens = meta["splits"][split]["tokens"]
    dtype = np.dtype(meta["dtype"]).newbyteorder("<")
    if n_tokens == 0:  # an empty file cannot be memory-mapped
        tokens = np.zeros(0, dtype)
    else:
        tokens = np.memmap(Path(prepared_dir) / f"{split}.bin", dtype, mode="r",
                           shape=(n_tokens,))
    doc_starts = np.load(Path(prepared_dir) / f"{split}.idx.npy", mmap_mode="r")
    return tokens, doc_starts


def padded_samples(tokens, doc_starts, is_sentence_end, max_seq_len):
    """Padded mode's samples, one document each: (starts, lengths), lengths <= max_seq_len + 1.

    A longer document is cut after the last sentence end that fits in the window, or at the
    window's edge when one sentence is longer than a window.
    """
    window = max_seq_len + 1
    doc_starts = np.asarray(doc_starts, np.int64)
    starts, lengths = doc_starts[:-1], np.diff(doc_starts)
    fits = lengths <= window
    out_starts, out_lengths = [starts[fits]], [lengths[fits]]
    for start, end in zip(starts[~fits].tolist(), (starts + lengths)[~fits].tolist()):
        while end - start > window:
            # A piece that ends with the sentence end at start + 1 + k holds k + 2 tokens.
            # Cuts leave at least 2 tokens behind: a 1-token piece would have nothing to predict.
            search = tokens[start + 1:min(start + window, end - 2)]
            ends = np.flatnonzero(is_sentence_end[search])
            cut = start + 2 + int(ends[-1]) if len(ends) else start + window
            if end - cut == 1:
                cut -= 1
            out_starts.append([start])
            out_lengths.append([cut - start])
            start = cut
        out_starts.append([start])
        out_lengths.append([end - start])
    starts, lengths = np.concatenate(out_starts), np.concatenate(out_lengths)
    order = np.argsort(starts, kind="stable")
    return starts[order], lengths[order]


class PretrainDataset(Dataset):
    """(X, Y, loss_mask) samples of max_seq_len tokens from a prepared split.

    mode="packed": the split is one stream of documents, <s> a </s><s> b </s> ..., cut into
    windows of max_seq_len + 1 tokens; window i starts at token i * max_seq_len, so each
    token is a target exactly once. Only the last window can hold padding.
    mode="padded": one document per sample, as in MiniMind, padded with PAD_ID. Kept for
    comparison: on short documents most positions are padding (see padding_share).

    X is the window without its last token and Y without its first, so Y[t] is the token
    after X[t]; loss_mask is 1 where Y is a real token and 0 on padding. The token file is
    memory-mapped on first use in each process, so the dataset pickles cheaply to workers.
    """

    def __init__(self, prepared_dir, split="train", max_seq_len=512, mode="packed"):
        if mode not in ("packed", "padded"):
            raise ValueError(f"mode must be 'packed' or 'padded', not '{mode}'")
        self.prepared_dir = Path(prepared_dir)
        self.split = split
        self.max_seq_len = max_seq_len
        self.mode = mode
        meta = load_meta(prepared_dir)
        self.vocab_size = meta["vocab_size"]
        tokens, doc_starts = open_split(prepared_dir, split)
        self.n_tokens = len(tokens)
        if mode == "packed":
            self.sample_starts = self.sample_lengths = None
            targets = max(self.n_tokens - 1, 0)  # every token but the first is predicted
            self.n_samples = math.ceil(targets / max_seq_len)
        else:
            is_end = np.zeros(self.vocab_size, bool)
            is_end[meta["sentence_end_ids"]] = True
            self.sample_starts, self.sample_lengths = padded_samples(tokens, doc_starts, is_end,
                                                                     max_seq_len)
            self.n_samples = len(self.sample_starts)
            targets = int((self.sample_lengths - 1).sum())
        positions = self.n_samples * max_seq_len
        # share of the positions in all samples that are padding, i.e. wasted compute
        self.padding_share = 1 - targets / positions if positions else 0.0
        self._tokens = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokens"] = None  # the memory map is reopened in the worker
        return state

    def __len__(self):
        return self.n_samples

    def __getitem__(self, i):
        if not 0 <= i < self.n_samples:
            raise IndexError(f"sample {i} out of range for {self.n_samples} samples")
        if self._tokens is None:
            self._tokens = open_split(self.prepared_dir, self.split)[0]
        if self.mode == "packed":
            start = i * self.max_seq_len
            window = self._tokens[start:start + self.max_seq_len + 1]
        else:
            start, length = int(self.sample_starts[i]), int(self.sample_lengths[i])
            window = self._tokens[start:start + length]
        tokens = np.full(self.max_seq_len + 1, PAD_ID, np.int64)
        tokens[:len(window)] = window
        loss_mask = torch.zeros(self.max_seq_len, dtype=torch.float32)
        loss_mask[:len(window) - 1] = 1.0
        x = torch.from_numpy(tokens[:-1].copy())
        y = torch.from_numpy(tokens[1:].copy())
        return x, y, loss_mask


class ShardedSampler(Sampler):
    """This rank's share of a shuffled epoch, resumable in the middle.

    An epoch is a permutation of range(num_samples) fixed by (seed, epoch). Rank r of
    world_size takes the permutation's positions start + r, start + r + world_size, ..., so
    ranks are disjoint and together cover the epoch. `start` counts the samples all ranks
    together have consumed: a run resumed at start = steps * batch_size * world_size continues
    exactly where it stopped, even with another world size. The last
    (num_samples - start) % world_size samples are left out so every rank gets the same
    count and DDP ranks step in lockstep.
    """

    def __init__(self, num_samples, rank=0, world_size=1, seed=0, epoch=0, start=0):
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

    def set_epoch(self, epoch, start=0):
        self.epoch = epoch
        self.start = start

    def __len__(self):
        return max(self.num_samples - self.start, 0) // self.world_size

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        first = self.start + self.rank
        yield from order[first:first + len(self) * self.world_size:self.world_size].tolist()


def format_report(meta):
    """The human-readable summary of a prepared directory."""
    r = meta["report"]
    lines = [f"documents read      {r['documents_read']:>12,}   bad lines skipped: "
             f"{r['bad_lines']:,}"]
    for rule in CLEANING_RULES:
        verb = "dropped" if rule in ("too_short", "mostly_symbols") else "changed"
        lines.append(f"  {rule:<17} {r['cleaning'][rule]:>12,}   {verb}")
    lines.append(f"exact duplicates    {r['exact_duplicates']:>12,}   dropped")
    lines.append(f"near duplicates     {r['near_duplicates']:>12,}   dropped, in "
                 f"{r['near_duplicate_clusters']:,} clusters ({r['candidate_pairs_checked']:,} "
                 f"of {r['candidate_pairs']:,} candidate pairs checked; LSH "
                 f"{r['lsh']['bands']} bands x {r['lsh']['rows']} rows)")
    lines.append(f"documents kept      {r['documents_kept']:>12,}")
    for split, s in meta["splits"].items():
        lines.append(f"{split:<19} {s['documents']:>12,} docs {s['tokens']:>14,} tokens "
                     f"({meta['dtype']})")
    lines.append(f"compression         {r['bytes_per_token']:>12.2f}   bytes/token "
                 f"(vocab {meta['vocab_size']:,})")
    lines.append("time                " + ", ".join(f"{k} {v:.1f} s"
                                                 for k, v in r["seconds"].items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Clean, deduplicate and tokenize pretraining text into out_dir.")
    parser.add_argument("--data", nargs="+", default=["builtin"],
                        help=".jsonl/.txt files (optionally .gz) or globs, or 'builtin' for "
                             "the text that ships with Python")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="one per --data entry: how often its documents appear in training")
    parser.add_argument("--text_field", default="text", help="JSON field that holds the text")
    parser.add_argument("--tokenizer", default="out/tokenizer.json")
    parser.add_argument("--out_dir", default="out/data")
    parser.add_argument("--val_fraction", type=float, default=0.01)
    parser.add_argument("--no_near_dedup", action="store_true", help="skip MinHash dedup")
    parser.add_argument("--dedup_threshold", type=float, default=0.8,
                        help="Jaccard similarity of word 5-grams above which texts are near "
                             "duplicates")
    parser.add_argument("--num_perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--min_chars", type=int, default=MIN_CHARS,
                        help="drop documents shorter than this")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument("--skip_bad_lines", action="store_true",
                        help="skip and count malformed lines instead of stopping")
    parser.add_argument("--num_workers", type=int, default=None,
                        help="processes for cleaning and MinHash (default: CPU count, max 8)")
    parser.add_argument("--max_seq_len", type=int, default=512,
                        help="window length for the padding figure of the report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        prepared = prepare(args.data, args.tokenizer, args.out_dir, text_field=args.text_field,
                           val_fraction=args.val_fraction, near_dedup=not args.no_near_dedup,
                           dedup_threshold=args.dedup_threshold, num_perm=args.num_perm,
                           min_chars=args.min_chars, seed=args.seed,
                           skip_bad_lines=args.skip_bad_lines, num_workers=args.num_workers,
                           weights=args.weights, verbose=not args.quiet)
        padded = PretrainDataset(prepared, "train", args.max_seq_len, mode="padded")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if args.quiet:  # prepare() printed the report unless quiet
        print(format_report(load_meta(prepared)))
    print(f"padding             {padded.padding_share:>12.1%}   of the positions a padded batch "
          f"would hold (one document per sample, max_seq_len {args.max_seq_len}); "
          f"packing trains on all of them")
    print(f"prepared data: {prepared}")


if __name__ == "__main__":
    main()
