"""Preparing pretraining data, once: read and clean the sources (corpus.py), drop copies
(dedup.py), split train/val, tokenize, write flat token files. `python dataset.py` runs it;
train_pretrain.py runs it on first use. dataset.py reads what it writes.

prepare() turns the sources into a directory under data_dir, named by a fingerprint of the
sources, the tokenizer and the options, so it is reused while all three are unchanged:

    train.bin, val.bin          token ids, little-endian uint16 (uint32 when the vocabulary
                                has more than 65536 tokens); every document is framed
                                <s> ... </s> (tokenizer.frame_document)
    train.idx.npy, val.idx.npy  int64 offset of every document's first token, then the total
    meta.json                   fingerprints, counts, cleaning report, dtype, vocab_size

It is built in a temporary directory that is renamed into place at the end, so an interrupted
run never leaves a directory that looks complete. Pass 1 reads, cleans, hashes and signs the
documents in worker processes and appends the cleaned text to a file on disk (memory stays
bounded on a corpus of any size); then exact and near duplicates are dropped (the copy in
the source of the highest weight is kept) and each kept document goes to train or val by a
hash of its text; pass 2 tokenizes in parallel batches, and --weights repeats documents.
"""

import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import sys
import sysconfig
import time
from collections import Counter, deque
from functools import partial
from itertools import chain, islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from corpus import (CLEANING_RULES, MIN_CHARS, as_sources, clean_text, expand_paths,
                    file_fingerprint, iter_texts, normalize)
from dedup import (DEDUP_THRESHOLD, band_hashes, candidate_pairs, exact_duplicates,
                   likely_pairs, lsh_bands, minhash, near_duplicates, shingles, text_hash)
from data_order import quality_cut, quality_report, sequence, training_order
from data_quality import load_scorer, score_ids
from files import claim, holding, process_alive, write_text_atomic
from tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, frame_document, load_tokenizer,
                       read_sample, save_tokenizer, token_byte_counts, tokenizer_fingerprint,
                       train_tokenizer)

FORMAT_VERSION = 4  # bump when a change here changes what prepare() writes
# 2: one framing (frame_document) and one byte accounting (token_bytes) with evaluation
# 3: near dedup by character shingles, a threshold of 0.5 and the parts check (dedup.py)
# 4: a text in several sources is kept in the one of the highest weight (_dedup_order)
EXAMPLE_CHARS = 60  # of each text in the report's near-dedup examples
MINIMIND_DATA = Path("dataset/pretrain_hq.jsonl")  # training's default when the user has it


def unit_hash(normalized, salt):
    """A number in [0, 1) fixed by the text: a document's split never depends on the others."""
    digest = hashlib.blake2b(normalized.encode("utf-8"), digest_size=8, salt=salt.encode()[:16])
    return int.from_bytes(digest.digest(), "little") / 2**64


SENTENCE_ENDS = (".", "!", "?", "\n", "。", "！", "？", "…")


def sentence_end_ids(tok):
    """Ids of the tokens that end a sentence, kept in meta.json: MiniMind-style padded
    samples (scripts/bench_data.py) cut long documents after them."""
    vocab = tok.get_vocab_size()
    texts = tok.decode_batch([[i] for i in range(vocab)], skip_special_tokens=False)
    return sorted({i for i, t in enumerate(texts) if t.endswith(SENTENCE_ENDS)} | {EOS_ID})


def _clean_and_sign(item, min_chars, seed, num_perm, bands, rows, near_dedup):
    """Pass-1 work on one batch of raw documents; runs in a worker process."""
    source_id, texts = item
    cleaned, fired, exact, split, weight = [], [], [], [], []
    for text in texts:
        text, rules = clean_text(text, min_chars, SPECIAL_TOKENS[1:])
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
        signatures = minhash(doc_shingles, num_perm)
        hashes, sketches = band_hashes(signatures, bands, rows), signatures.astype(np.uint16)
        has_shingles = np.array([len(s) > 0 for s in doc_shingles], bool)
    else:
        hashes = np.zeros((len(cleaned), 0), np.uint64)
        sketches = np.zeros((len(cleaned), 0), np.uint16)
        has_shingles = np.zeros(len(cleaned), bool)
    return (source_id, cleaned, fired, np.array(exact, np.uint64), np.array(split),
            np.array(weight), hashes, sketches, has_shingles)


def _batches(entries, text_field, skip_bad_lines, counts, batch_size=1000):
    """(source index, list of raw texts); a batch never mixes two sources."""
    for source_id, paths in enumerate(entries):
        texts = iter_texts(paths, text_field, skip_bad_lines, counts)
        while batch := list(islice(texts, batch_size)):
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
    band hashes, the low 16 bits of its MinHash signature and whether it has any shingle.
    """
    work = partial(_clean_and_sign, min_chars=options["min_chars"], seed=options["seed"],
                   num_perm=options["num_perm"], bands=bands, rows=rows,
                   near_dedup=options["near_dedup"])
    batches = _batches(entries, options["text_field"], options["skip_bad_lines"], counts)
    columns = [[] for _ in range(7)]
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


def _deduplicate(order, exact_keys, hashes, sketches, has_shingles, store, options, counts,
                 verbose):
    """Exact, then near duplicates; returns the mask of documents to keep and how the
    near-dedup threshold cut. The documents are visited in `order` (_dedup_order) and each
    group of copies keeps the first one visited."""
    identity = np.array_equal(order, np.arange(len(order)))

    def by_order(array):  # the columns in visiting order (no copy when that is the input's)
        return array if identity else array[order]

    def read(i):  # the text of the i-th document visited
        return store.read(order[i], order[i] + 1)[0]

    dup = exact_duplicates(by_order(exact_keys), read)
    counts["exact_duplicates"] = int(dup.sum())
    cut = {"similarity_histogram": [], "cut_examples": {}}
    if options["near_dedup"]:
        candidates = candidate_pairs(by_order(hashes), by_order(has_shingles) & ~dup)
        pairs = likely_pairs(candidates, by_order(sketches), options["dedup_threshold"])
        bar = tqdm(desc="near dedup", total=len(pairs), unit=" pairs", disable=not verbose)
        drop, found = near_duplicates(pairs, lambda i: shingles(read(i)),
                                      options["dedup_threshold"], bar)
        bar.close()
        dup[drop] = True
        # the examples with their texts, cut short, so that the report shows the cut
        examples = {kind: None if pair is None else [round(pair[0], 3)] + [
                        head_and_tail(read(k)) for k in pair[1:]]
                    for kind, pair in found["examples"].items()}
        counts.update(near_duplicates=len(drop), near_duplicate_clusters=found["clusters"],
                      candidate_pairs=len(candidates), candidate_pairs_checked=found["checked"],
                      candidate_pairs_unlikely=len(candidates) - len(pairs),
                      parts_rejected=found["parts_rejected"])
        cut = {"similarity_histogram": found["histogram"], "cut_examples": examples}
    keep = np.empty(len(order), bool)
    keep[order] = ~dup
    return keep, cut


def _dedup_order(source_ids, weights):
    """The order in which dedup visits the documents: the sources of the highest weight
    first, each source's documents in the order read. A text that several sources hold is
    thus kept in the source that --weights repeats most (among equals, the first listed),
    and the weights apply to what is kept: a copy in a source of weight 0 never hides one
    of weight 2."""
    return np.lexsort((np.arange(len(source_ids)), -np.asarray(weights)[source_ids]))


def head_and_tail(text, n=EXAMPLE_CHARS):
    """text, or its first and last n // 2 characters: where two pages share a header, they
    differ further on."""
    return text if len(text) <= n else f"{text[:n // 2]} … {text[-(n // 2):]}"


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


def _tokenize(store, keep, val, tok, dtype, tmp_dir, verbose, scorer=None, batch_size=2000):
    """Pass 2: encode the kept documents in parallel batches into train.bin and val.bin, each
    framed <s> ... </s>. Returns the token count of every document of each split, the
    UTF-8 bytes the tokens stand for (tokenizer.token_bytes: markers count none), and with a
    scorer (data_quality.py) every kept document's score (NaN for the others)."""
    byte_counts = np.array(token_byte_counts(tok), np.int64)
    lengths = {"train": [], "val": []}
    text_bytes = 0
    scores = np.full(len(store), np.nan, np.float32) if scorer is not None else None
    bar = tqdm(desc="tokenize", total=int(keep.sum()), unit=" docs", disable=not verbose)
    with open(tmp_dir / "train.bin", "wb") as train_file, \
            open(tmp_dir / "val.bin", "wb") as val_file:
        for lo in range(0, len(store), batch_size):
            hi = min(lo + batch_size, len(store))
            texts = [(i, t) for i, t in zip(range(lo, hi), store.read(lo, hi)) if keep[i]]
            # encode_batch_fast runs on all cores (Rust threads) and skips the char offsets
            encodings = tok.encode_batch_fast([t for _, t in texts], add_special_tokens=False)
            if scorer is not None:
                scores[[i for i, _ in texts]] = score_ids(scorer, [e.ids for e in encodings])
            for split, file in (("train", train_file), ("val", val_file)):
                framed = [frame_document(e.ids) for (i, _), e in zip(texts, encodings)
                          if val[i] == (split == "val")]
                flat = np.fromiter(chain.from_iterable(framed), dtype, sum(map(len, framed)))
                flat.tofile(file)
                lengths[split] += map(len, framed)
                text_bytes += int(byte_counts[flat].sum())
            bar.update(len(texts))
    bar.close()
    return lengths, text_bytes, scores


def _apply_weights(path, starts, copies, dtype):
    """Rewrite the training tokens with document i repeated copies[i] times: first one copy
    of every document, then the second copies, and so on, so repeats are not side by side.
    Returns the new document offsets."""
    return _write_sequence(path, starts, sequence(np.arange(len(copies)), copies), dtype)


def _write_sequence(path, starts, documents, dtype):
    """Rewrite the training tokens as the given documents (indexes, repeats allowed) in the
    given order; returns the new document offsets. The identity writes nothing."""
    if np.array_equal(documents, np.arange(len(starts) - 1)):
        return starts
    lengths = np.diff(starts)
    tmp = path.with_suffix(".ordered")
    tokens = np.memmap(path, dtype, mode="r") if starts[-1] else np.zeros(0, dtype)
    with open(tmp, "wb") as f:
        for i in documents.tolist():
            tokens[starts[i]:starts[i + 1]].tofile(f)
    del tokens
    os.replace(tmp, path)
    return np.concatenate([[0], np.cumsum(lengths[documents], dtype=np.int64)])


def _train_plan(store, train, scores, sketches, copies, options):
    """Which training documents, how often and in which order (data_order.py): positions
    among the training documents `train` (store ids, in store order), and the quality
    report (None without a scorer)."""
    quality, report = options.get("quality"), None
    if quality is not None:
        cut = quality_cut(scores[train], quality["keep"], quality["threshold"])
        is_train = np.zeros(len(scores), bool)
        is_train[train] = True
        report = quality_report(scores, cut, lambda i: head_and_tail(store.read(i, i + 1)[0]),
                                is_train)
        if cut is not None:
            copies = np.where(scores[train] >= cut, copies, 0)
    kind = options.get("order", "shuffle")
    if kind == "similar" and sketches.shape[1] == 0:  # --no_near_dedup: no signatures yet
        sketches = np.zeros((len(store), 128), np.uint16)
        for lo in range(0, len(train), 1000):
            ids = train[lo:lo + 1000]
            texts = [store.read(i, i + 1)[0] for i in ids.tolist()]
            sketches[ids] = minhash([shingles(t) for t in texts]).astype(np.uint16)
    order = training_order(kind, len(train), None if scores is None else scores[train],
                           sketches[train] if kind == "similar" else None)
    return sequence(order, copies), report


def _build(entries, weights, tok, tmp_dir, options, num_workers, verbose, scorer=None):
    """The work of prepare(): write the splits into tmp_dir and return the meta dict."""
    counts = Counter()  # of documents and pairs; near dedup adds its cut to `cut`
    seconds = {}
    bands, rows = lsh_bands(options["num_perm"], options["dedup_threshold"])
    num_workers = min(os.cpu_count() or 1, 8) if num_workers is None else num_workers
    store = _DocStore(tmp_dir / "cleaned.txt")
    try:
        start = time.time()
        columns = _read_clean_sign(entries, options, bands, rows, num_workers, store, counts,
                                   verbose)
        source_ids, exact_keys, split_keys, weight_keys, hashes, sketches, has_shingles = columns
        seconds["read_clean"] = time.time() - start

        start = time.time()
        keep, cut = _deduplicate(_dedup_order(source_ids, weights), exact_keys, hashes,
                                 sketches, has_shingles, store, options, counts, verbose)
        val = _split_docs(keep, split_keys, options["val_fraction"])
        seconds["dedup"] = time.time() - start

        start = time.time()
        dtype = token_dtype(tok)
        lengths, text_bytes, scores = _tokenize(store, keep, val, tok, dtype, tmp_dir, verbose,
                                                scorer)
        train = np.flatnonzero(keep & ~val)
        documents, quality = _train_plan(store, train, scores, sketches,
                                         _copies(keep & ~val, source_ids, weights, weight_keys),
                                         options)
    finally:
        store.close()
        os.remove(tmp_dir / "cleaned.txt")
    starts = {s: np.concatenate([[0], np.cumsum(lengths[s], dtype=np.int64)]) for s in lengths}
    starts["train"] = _write_sequence(tmp_dir / "train.bin", starts["train"], documents, dtype)
    for split, offsets in starts.items():
        np.save(tmp_dir / f"{split}.idx.npy", offsets)
    if scores is not None:  # every document's score, beside its split's index
        np.save(tmp_dir / "train.scores.npy", scores[train][documents])
        np.save(tmp_dir / "val.scores.npy", scores[np.flatnonzero(keep & val)])
    seconds["tokenize"] = time.time() - start
    bytes_per_token = text_bytes / max(sum(map(sum, lengths.values())), 1)  # before --weights
    meta = build_meta(tok, options, counts, cut, int(keep.sum()), starts, bytes_per_token,
                      seconds)
    if quality is not None:
        meta["report"]["quality"] = quality
    return meta


def _copies(train, source_ids, weights, weight_keys):
    """How many times each training document appears: the whole part of its source's
    weight, and once more if its hash falls below the fractional part."""
    weight = np.array(weights)[source_ids[train]]
    return np.floor(weight).astype(np.int64) + (weight_keys[train] < weight % 1)


def build_meta(tok, options, counts, cut, documents_kept, starts, bytes_per_token, seconds):
    """meta.json's content, less the fingerprint and sources that prepare() adds.
    bytes_per_token: of the kept documents' tokens, counted before --weights repeats them
    (<s> and </s> stand for no bytes)."""
    bands, rows = lsh_bands(options["num_perm"], options["dedup_threshold"])
    report = {"documents_read": counts["documents_read"], "bad_lines": counts["bad_lines"],
              "cleaning": {rule: counts[rule] for rule in CLEANING_RULES},
              **{k: counts[k] for k in ("exact_duplicates", "near_duplicates",
                                        "near_duplicate_clusters", "candidate_pairs",
                                        "candidate_pairs_checked", "candidate_pairs_unlikely",
                                        "parts_rejected")}, **cut,
              "documents_kept": documents_kept,
              "bytes_per_token": bytes_per_token,
              "lsh": {"bands": bands, "rows": rows},
              "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    dtype = token_dtype(tok)
    return {"format": FORMAT_VERSION, "vocab_size": tok.get_vocab_size(), "dtype": dtype.name,
            "bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID,
            "tokenizer_fingerprint": tokenizer_fingerprint(tok), "options": options,
            "splits": {s: {"documents": len(starts[s]) - 1, "tokens": int(starts[s][-1])}
                       for s in starts},
            "sentence_end_ids": sentence_end_ids(tok), "report": report}


def token_dtype(tok):
    """The token files' type: uint16 while the vocabulary fits it."""
    return np.dtype("<u2") if tok.get_vocab_size() <= 2**16 else np.dtype("<u4")


def _source_entries(sources, weights):
    """The files of each source (a glob is one source), and one weight per source."""
    entries = [expand_paths([source]) for source in as_sources(sources)]
    weights = [1.0] * len(entries) if weights is None else [float(w) for w in weights]
    if len(weights) != len(entries):
        raise ValueError(f"{len(weights)} weights for {len(entries)} sources; give one weight "
                         f"per --data_path entry")
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


def is_prepared_dir(path) -> bool:
    """A directory prepare() finished: it writes meta.json last."""
    return (Path(path) / "meta.json").is_file()


def prepare_options(args):
    """prepare()'s keyword arguments from the flags flags.add_source_flags and
    add_prepare_flags declare, as train_pretrain.py and dataset.py pass them."""
    return dict(text_field=args.text_field, skip_bad_lines=args.skip_bad_lines,
                weights=args.weights, seed=args.split_seed, num_workers=args.prep_workers,
                quality_model=args.quality_model, quality_keep=args.quality_keep,
                quality_threshold=args.quality_threshold, order=args.order)


def load_meta(prepared_dir):
    """The meta.json of a prepared directory."""
    path = Path(prepared_dir) / "meta.json"
    if not path.is_file():
        out_dir = Path(prepared_dir).parent
        raise FileNotFoundError(f"{path} not found; prepare the data first with "
                                f"`python dataset.py --data_path ... --data_dir {out_dir}`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): {damaged(prepared_dir)}") from None


def damaged(prepared_dir):
    """The fix for a prepared directory whose files do not fit together."""
    return (f"the directory is damaged (a copy cut short?); delete {prepared_dir} and prepare "
            "it again (for OUT_DIR/data, train_pretrain.py then does so by itself)")


def result_options(*, text_field, val_fraction, near_dedup, dedup_threshold, num_perm,
                   min_chars, seed, skip_bad_lines, quality_model=None, quality_keep=None,
                   quality_threshold=None, order="shuffle"):
    """The options that change what a preparation writes, as meta.json and the fingerprint
    hold them. The data levers (data_order.py) appear only when used, so that a preparation
    without them keeps the name it had before they existed."""
    options = {"format": FORMAT_VERSION, "text_field": text_field, "val_fraction": val_fraction,
               "near_dedup": near_dedup, "dedup_threshold": dedup_threshold,
               "num_perm": num_perm, "min_chars": min_chars, "seed": seed,
               "skip_bad_lines": skip_bad_lines}
    if quality_model is None and (quality_keep is not None or quality_threshold is not None
                                  or order == "curriculum"):
        raise ValueError("--quality_keep, --quality_threshold and --order curriculum need "
                         "scores: give --quality_model (trained by scripts/train_quality.py)")
    if quality_keep is not None and not 0 < quality_keep <= 1:
        raise ValueError(f"--quality_keep is a fraction in (0, 1], got {quality_keep}")
    if quality_keep is not None and quality_threshold is not None:
        raise ValueError("give --quality_keep or --quality_threshold, not both")
    if quality_model is not None:
        if not Path(quality_model).is_file():
            raise FileNotFoundError(f"--quality_model {quality_model} not found; train one "
                                    "with `python scripts/train_quality.py`")
        options["quality"] = {"model": file_fingerprint(quality_model), "keep": quality_keep,
                              "threshold": quality_threshold}
    if order != "shuffle":
        options["order"] = order
    return options


def target_dir(entries, weights, tok, options, cache_dir):
    """(directory, fingerprint, source fingerprints) of a preparation: the directory's name
    holds a fingerprint of the sources (paths, sizes, content hashes), the tokenizer and
    every option that changes the result."""
    source_fps = _fingerprint_sources(entries, weights)
    key = json.dumps({"sources": source_fps, "tokenizer": tokenizer_fingerprint(tok),
                      "options": options}, sort_keys=True)
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
    first = entries[0][0]
    name = f"{'builtin' if first == 'builtin' else first.name.split('.')[0]}-{fingerprint}"
    return Path(cache_dir) / name, fingerprint, source_fps


def prepare(sources, tokenizer_path, cache_dir, *, text_field="text", val_fraction=0.01,
            near_dedup=True, dedup_threshold=DEDUP_THRESHOLD, num_perm=128, min_chars=MIN_CHARS,
            seed=0, skip_bad_lines=False, num_workers=None, weights=None, verbose=True,
            wait=False, quality_model=None, quality_keep=None, quality_threshold=None,
            order="shuffle"):
    """Clean, deduplicate and tokenize sources into a directory under cache_dir; return it.

    sources: paths or globs of .jsonl/.txt files (gzip too), or None / ['builtin'] for the
    text that ships with Python. weights (one per source) scale how often each source's
    documents appear in the training split: 2 repeats every document, 0.5 keeps a
    deterministic half. The directory is reused while sources, tokenizer and options are
    unchanged; num_workers and verbose do not change the result. wait: another process
    (the first rank on this machine) is building it; wait for it instead of building it too.
    quality_model, quality_keep or quality_threshold, order: the data levers of
    data_order.py (the training split only).
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    entries, weights = _source_entries(sources, weights)
    tok = load_tokenizer(tokenizer_path)
    options = result_options(text_field=text_field, val_fraction=val_fraction,
                             near_dedup=near_dedup, dedup_threshold=dedup_threshold,
                             num_perm=num_perm, min_chars=min_chars, seed=seed,
                             skip_bad_lines=skip_bad_lines, quality_model=quality_model,
                             quality_keep=quality_keep, quality_threshold=quality_threshold,
                             order=order)
    scorer = load_scorer(quality_model, tok)[0] if quality_model is not None else None
    out_dir, fingerprint, source_fps = target_dir(entries, weights, tok, options, cache_dir)
    while wait and not is_prepared_dir(out_dir):
        time.sleep(0.5)  # if that process fails, torchrun ends this one
    # one process in the whole job builds it, also where several nodes share cache_dir: the
    # first to create the marker; the others wait for the directory
    marker, claimed = Path(cache_dir) / f".building-{out_dir.name}", False
    if not is_prepared_dir(out_dir):
        claimed, holder = claim(marker)
        if claimed and is_prepared_dir(out_dir):  # finished just before the claim
            marker.unlink(missing_ok=True)
            claimed = False
        elif not claimed and verbose:
            print(f"waiting for {out_dir}: process {holder['pid']} on {holder['host']} is "
                  f"preparing it (if no such process runs, delete {marker})")
        while not claimed and not is_prepared_dir(out_dir):
            time.sleep(0.5)  # if that process fails, torchrun ends this job
    if not claimed:
        if verbose:
            print(f"reusing {out_dir}: sources, tokenizer and options are unchanged")
            print(format_report(load_meta(out_dir)))
        return out_dir
    with holding(marker):
        return _build_into(out_dir, entries, weights, tok, options, num_workers, verbose,
                           fingerprint, source_fps, tokenizer_path, scorer)


def _build_into(out_dir, entries, weights, tok, options, num_workers, verbose, fingerprint,
                source_fps, tokenizer_path, scorer=None):
    """prepare()'s building, for the process that claimed it: into a private directory,
    renamed into place when whole."""
    cache_dir = out_dir.parent
    # work in a private directory; one left by a preparation that was killed is removed
    mine = f".tmp-{out_dir.name}-{socket.gethostname()}-"  # then the process id
    for stale in Path(cache_dir).glob(mine + "*"):
        pid = stale.name[len(mine):]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp_dir = Path(cache_dir) / f"{mine}{os.getpid()}"
    tmp_dir.mkdir(parents=True)
    try:
        meta = _build(entries, weights, tok, tmp_dir, options, num_workers, verbose, scorer)
        meta.update(fingerprint=fingerprint, sources=source_fps,
                    tokenizer_path=str(Path(tokenizer_path).resolve()))
        # meta.json last: a directory without it is never mistaken for a finished one
        write_text_atomic(tmp_dir / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False)
                          + "\n")
        if out_dir.exists() and not is_prepared_dir(out_dir):
            shutil.rmtree(out_dir)  # left by hand: a finished directory has meta.json
        try:
            os.rename(tmp_dir, out_dir)
        except OSError:
            if not is_prepared_dir(out_dir):
                raise
            # another process (another DDP rank, say) finished the same directory first
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if verbose:
        print(f"prepared {out_dir}")
        print(format_report(meta))
    return out_dir


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
                 f"of {r['candidate_pairs']:,} candidate pairs checked, "
                 f"{r.get('candidate_pairs_unlikely', 0):,} set aside by their signatures; LSH "
                 f"{r['lsh']['bands']} bands x {r['lsh']['rows']} rows)")
    if any(r.get("similarity_histogram", ())):  # a directory of format 2 has none
        lines += cut_report(r, meta["options"]["dedup_threshold"])
    lines.append(f"documents kept      {r['documents_kept']:>12,}")
    if "quality" in r:
        lines += quality_lines(r["quality"])
    if meta["options"].get("order", "shuffle") != "shuffle":
        lines.append(f"order               {meta['options']['order']:>12}   of the training "
                     "documents, which training reads in order (data_order.py)")
    for split, s in meta["splits"].items():
        lines.append(f"{split:<19} {s['documents']:>12,} docs {s['tokens']:>14,} tokens "
                     f"({meta['dtype']})")
    lines.append(f"compression         {r['bytes_per_token']:>12.2f}   bytes/token "
                 f"(vocab {meta['vocab_size']:,})")
    lines.append("time                " + ", ".join(f"{k} {v:.1f} s"
                                                 for k, v in r["seconds"].items()))
    return "\n".join(lines)


def cut_report(r, threshold):
    """Where the near-dedup threshold cut the checked candidate pairs: a histogram of their
    similarity, and the pairs closest to the cut on either side."""
    lines = [f"  similarity of the {sum(r['similarity_histogram']):,} checked pairs "
             f"(Jaccard of their shingles; near copies from {threshold:.2f} up):"]
    widest = max(r["similarity_histogram"])
    for b, n in enumerate(r["similarity_histogram"]):
        cut = "   <- the cut: near copies from here up" if b / 10 <= threshold < (b + 1) / 10 \
            else ""
        lines.append(f"    {b / 10:.1f}-{(b + 1) / 10:.1f} {'#' * round(30 * n / widest):<30} "
                     f"{n:>9,}{cut}")
    titles = {"above": "just above the cut, dropped", "below": "just below the cut, kept",
              "parts": "similar, but a part of each is missing in the other, kept"}
    for kind, title in titles.items():
        if r["cut_examples"][kind]:
            similarity, a, b = r["cut_examples"][kind]
            lines.append(f"  {title} ({similarity:.3f}): {a!r} | {b!r}")
    if r["parts_rejected"]:
        lines.append(f"  {r['parts_rejected']:,} pairs at the threshold or above kept: they "
                     "share text (a header, a licence) but a part of each is not in the other")
    return lines


def quality_lines(q):
    """The quality cut in the report: the training documents' scores and the cut."""
    cut = "none" if q["cut"] is None else f"{q['cut']:.4f}"
    lines = [f"quality cut         {q['dropped']:>12,}   training documents dropped, scoring "
             f"under {cut} (validation is never cut)"]
    widest = max(max(q["histogram"]), 1)
    for lo, hi, n in zip(q["bins"], q["bins"][1:], q["histogram"]):
        mark = "   <- the cut" if q["cut"] is not None and lo <= q["cut"] < hi else ""
        lines.append(f"    {lo:>8.3f}-{hi:<8.3f} {'#' * round(30 * n / widest):<30} {n:>9,}{mark}")
    for side, title in (("above", "just above the cut, kept"),
                        ("below", "just below the cut, dropped")):
        if q["examples"][side]:
            value, text = q["examples"][side]
            lines.append(f"  {title} ({value:.4f}): {text!r}")
    return lines


def padding_share(doc_lengths, max_seq_len):
    """The share of a padded batch's positions that hold padding, had every document been a
    sample of its own (MiniMind's padded samples) of max_seq_len + 1 tokens: a longer
    document makes ceil(length / (max_seq_len + 1)) samples. (MiniMind cuts at sentence
    ends, which makes more samples: this is the least padding could cost.) Packing, which
    dataset.PretrainDataset does, trains on every position."""
    lengths = np.asarray(doc_lengths, np.int64)
    samples = -(-lengths // (max_seq_len + 1))  # ceil
    targets = int((lengths - samples).sum())  # a sample of n tokens predicts n - 1
    positions = int(samples.sum()) * max_seq_len
    return 1 - targets / positions if positions else 0.0


def resolve_tokenizer(args, sources, local_rank, log):
    """The tokenizer path: --tokenizer, else OUT_DIR/tokenizer.json, trained here if absent
    (by one process of the job; the others wait for the file)."""
    if args.tokenizer:
        return Path(args.tokenizer)
    path, marker = Path(args.out_dir) / "tokenizer.json", Path(args.out_dir) / ".building-tok"
    # one process in the job trains it, also where several nodes share --out_dir (files.claim)
    if local_rank == 0 and not path.exists() and claim(marker)[0]:
        with holding(marker):
            log.say(f"no tokenizer at {path}: training one (vocab {args.vocab_size}) on the "
                    "data")
            # a bounded sample: memory stays flat
            texts, _ = read_sample(sources, text_field=args.text_field,
                                   skip_bad_lines=args.skip_bad_lines, verbose=log.show)
            save_tokenizer(train_tokenizer(texts, args.vocab_size), path)  # atomically
    while not path.exists():
        time.sleep(0.5)  # if the first process fails, torchrun ends this one
    return path


def resolve_data(args, log):
    """Raw sources to prepare: --data_path, else MiniMind's file when present, else None
    (the built-in corpus)."""
    if args.data_path:
        return list(args.data_path)
    if MINIMIND_DATA.exists():
        log.say(f"data: {MINIMIND_DATA} (MiniMind's pretraining set)")
        return [str(MINIMIND_DATA)]
    log.say("data: the built-in corpus (Python's own documentation); put MiniMind's "
            f"pretrain_hq.jsonl at {MINIMIND_DATA} or pass --data_path")
    return None


def prepare_for_run(args, local_rank, log):
    """(tokenizer, prepared directory) of train_pretrain.py's flags. A directory prepared by
    dataset.py is used as it is; raw sources are prepared into OUT_DIR/data (cached there,
    so a second run reuses them) by one process of the job, while the others wait for it
    (on several machines too, where they share --out_dir)."""
    if args.data_path and is_prepared_dir(args.data_path[0]):
        prepared = Path(args.data_path[0])
        tok = load_tokenizer(args.tokenizer or load_meta(prepared)["tokenizer_path"])
        check_tokenizer(prepared, tok)
        log.say(f"data: {prepared}, prepared by dataset.py")
    else:
        sources = resolve_data(args, log)
        tok_path = resolve_tokenizer(args, sources, local_rank, log)
        tok = load_tokenizer(tok_path)
        prepared = prepare(sources, tok_path, Path(args.out_dir) / "data", verbose=log.show,
                           wait=local_rank != 0, **prepare_options(args))
    return tok, prepared


def check_tokenizer(prepared_dir, tok):
    """Raise ValueError unless the prepared data was tokenized by tok."""
    made_with = load_meta(prepared_dir)["tokenizer_fingerprint"]
    given = tokenizer_fingerprint(tok)
    if made_with != given:
        raise ValueError(f"{prepared_dir} was tokenized by another tokenizer ({made_with[:12]}, "
                         f"not {given[:12]}); pass the tokenizer it was made with, or prepare "
                         f"the data again with this one")


def check_source_flags(parser, args):
    """Usage errors for --data_path and --weights that cannot work together."""
    if args.data_path and any(is_prepared_dir(path) for path in args.data_path):
        if len(args.data_path) > 1:
            parser.error("--data_path: a directory prepared by dataset.py is used alone; "
                         "prepare several sources together with `python dataset.py "
                         "--data_path A B`")
        if args.weights:
            parser.error("--weights applies to raw sources; a prepared directory has its "
                         "weights")
        levers = [f"--{name}" for name in ("quality_model", "quality_keep",
                                           "quality_threshold")
                  if getattr(args, name, None) is not None]
        if getattr(args, "order", "shuffle") != "shuffle":
            levers.append("--order")
        if levers:
            parser.error(f"{', '.join(levers)}: the data levers apply when raw sources are "
                         "prepared; a prepared directory has its own (pass them to "
                         "`python dataset.py` instead)")
    if args.weights and len(args.weights) != len(args.data_path or [None]):
        parser.error(f"--weights: {len(args.weights)} weights for "
                     f"{len(args.data_path or [None])} --data_path entries; give one per entry")
