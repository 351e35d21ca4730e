"""Deduplication: exact copies, then near copies, the third step of the data pipeline.

Exact: two documents are copies when their normalised texts (corpus.normalize: lower case,
whitespace runs as one space) are equal. A 64-bit hash finds candidates; equal hashes are
confirmed by comparing the texts, so a hash collision never drops a distinct document.

Near (Broder 1997; Leskovec, Rajaraman & Ullman, Mining of Massive Datasets, ch. 3):
- Shingles: a document's runs of k consecutive letters and digits, lower-cased, with spaces
  and punctuation left out (so re-spacing or re-punctuating a text changes nothing). A
  shingle that starts at a CJK character holds k = SHINGLE_CJK = 4, any other k =
  SHINGLE_OTHER = 5: chosen at each position, not for the whole document, so that a copy
  of a text half Chinese, half English cannot switch sizes and share no shingle with its
  original (it did, when the majority script chose). One more shingle holds the last 5
  units, so that the end of a text counts too. Characters, not words: one edited
  letter changes k shingles, while in English it would change every word shingle that
  holds the word. An edit changes about k shingles of the copy and k of the original, so
  3% of the characters edited leaves a Jaccard similarity near (1 - 0.03k) / (1 + 0.03k):
  0.79 for Chinese with k = 4, and 0.67 for English with k = 5, whose 3% of all characters
  is about 4% of its letters. Shorter runs would raise these, but they repeat across
  distinct texts: more candidate pairs to check, and short lines of one template with
  one-word slots ("Question: what is the X of the Y? ...") above the threshold. The
  measurements behind k = 4 and 5 and the threshold are in docs/data.md, "Why character
  shingles, 4 and 5 characters, and 0.5".
- Two documents are near copies when the Jaccard similarity of their shingle sets,
  |A & B| / |A | B|, reaches DEDUP_THRESHOLD = 0.5, well below the edited copies above, and
  when every part of one of them is mostly found in the other (parts_found_plain). The
  second test keeps pages that share a header or a licence: their shared text can pass
  the threshold, but each has a body the other lacks, whereas an edited copy is found part
  by part. A document that extends another still counts as its copy.
- Quality: scripts/bench_dedup.py measures, on text that no one tuned on (Tang poems,
  fortunes-zh, Python's documentation, Debian's fortunes), how many edited copies the rule
  finds, by language, length and kind of edit, and how many distinct documents that share
  a form it removes (poems of one form, question-answer lines of one template, pages that
  share a licence). docs/data.md, "Near-dedup quality", has the tables.
- MinHash: hash every shingle with num_perm random hash functions and keep, per function,
  the minimum over the document. Two documents agree on one function's minimum with
  probability equal to their Jaccard similarity, so a signature of 128 minima estimates it.
- Banding (LSH): cut the signature into `bands` bands of `rows` values. Documents that agree
  on a whole band land in one bucket and become candidates (lsh_bands); candidates whose
  signatures agree on too few values are set aside (likely_pairs), the others confirmed by
  the rule, and clustered (union-find): a cluster keeps its first document (prepare.py
  orders them so that the first is in the source of the highest weight).
  near_duplicates also reports how the cut fell: a histogram of the checked pairs'
  similarity and the pairs closest to the threshold, which prepare.py's report prints.

The plain definitions come first, written as simply as Python allows (`*_plain`); the fast
path below them computes the same values with numpy over whole batches, and a test checks
one against the other.
"""

import hashlib

import numpy as np

from corpus import char_class, code_points, IS_ALNUM_BMP, normalize

SHINGLE_CJK = 4  # characters in a shingle that starts at a CJK one (each carries ~10 bits)
SHINGLE_OTHER = 5  # in one that starts elsewhere (a Latin letter carries ~4 bits)
SHINGLE_TAIL = 5  # the last shingle: the text's last units (see shingles_plain)
PART_SHINGLES, PART_FOUND = 25, 0.5  # see parts_found_plain
DEDUP_THRESHOLD = 0.5  # Jaccard similarity from which two documents are near copies
LSH_MARGIN = 0.3  # see lsh_bands
SKETCH_SDS = 3.5  # see likely_pairs
SHINGLE_MULT = 0x9E3779B97F4A7C15  # odd, so the polynomial hashes mix all 64 bits
MASK64 = 2**64 - 1
# Documents that land in one bucket are compared with up to this many members before them
# (all pairs of a huge bucket of templated pages would be quadratic); see candidate_pairs.
BUCKET_WINDOW = 32
CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
              (0xAC00, 0xD7AF))  # kana, CJK ideographs, compatibility ideographs, hangul


def text_hash(normalized):
    """64-bit hash of a normalised text for exact dedup."""
    return int.from_bytes(hashlib.blake2b(normalized.encode("utf-8"), digest_size=8).digest(),
                          "little")


def exact_duplicates(keys, read):
    """Boolean mask of exact duplicates: documents whose text_hash matches an earlier one's
    and whose normalised text equals it; read(i) gives document i's text."""
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
            text = normalize(read(i))
            dup[i] = text in seen  # a set compares the full texts of equal hashes
            seen.add(text)
    return dup


def is_cjk(char):
    return any(lo <= ord(char) <= hi for lo, hi in CJK_RANGES)


def units_plain(text):
    """What shingles are made of: the text's letters and digits, lower-cased. Spaces and
    punctuation are left out, so changing them changes no shingle."""
    return [char for char in text.lower() if char.isalnum()]


def shingle_size(unit):
    """A shingle that starts at a CJK unit holds SHINGLE_CJK units, any other SHINGLE_OTHER."""
    return SHINGLE_CJK if is_cjk(unit) else SHINGLE_OTHER


def shingles_plain(text):
    """The text's shingles in order, each a 64-bit polynomial hash of a run of units' code
    points: the run of shingle_size(unit) units from every unit that has that many after
    it, then the run of the last SHINGLE_TAIL units (the whole text, if shorter), so that
    every unit is in some shingle."""
    units = units_plain(text)
    runs = [units[i:i + shingle_size(u)] for i, u in enumerate(units)
            if i + shingle_size(u) <= len(units)]
    out = []
    for run in runs + ([units[-SHINGLE_TAIL:]] if units else []):
        h = 0
        for unit in run:
            h = (h * SHINGLE_MULT + ord(unit)) & MASK64
        out.append(h)
    return out


def jaccard_plain(a: set, b: set):
    return len(a & b) / len(a | b) if a | b else 1.0


def parts_found_plain(a: list, b: set):
    """The least share, over the consecutive parts of shingle list a (parts_of), of a part's
    shingles that b holds. Near 1 for a copy edited anywhere; near 0 for a part that b does
    not have (the distinct body of a page that shares only its licence with b)."""
    if not a:
        return 0.0
    n = parts_of(len(a))
    bounds = [k * len(a) // n for k in range(n + 1)]
    return min(sum(x in b for x in a[lo:hi]) / (hi - lo) for lo, hi in zip(bounds, bounds[1:]))


def is_near_copy_plain(a: list, b: list, threshold):
    """The rule: Jaccard similarity at the threshold or above, and every part of one of the
    two documents (the shorter, when one extends the other) mostly found in the other."""
    return (jaccard_plain(set(a), set(b)) >= threshold
            and max(parts_found_plain(a, set(b)), parts_found_plain(b, set(a))) >= PART_FOUND)


def parts_of(n_shingles):
    """How many parts a document of n_shingles is cut into: one per PART_SHINGLES, 1 to 8."""
    return max(1, min(8, n_shingles // PART_SHINGLES))


def minhash_params(num_perm):
    """The (a, b) of each of the num_perm hash functions: fixed, so signatures are too."""
    rng = np.random.default_rng(20240607)
    a = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
    b = rng.integers(0, 2**64, num_perm, dtype=np.uint64, endpoint=False)
    return a, b


def minhash_plain(shingles: set, num_perm=128):
    """The signature of a shingle set: hash function k maps x to ((a_k x + b_k) mod 2**64)
    >> 32 (multiply-shift hashing), and the signature keeps each function's minimum."""
    a, b = minhash_params(num_perm)
    return [min(((int(ak) * x + int(bk)) & MASK64) >> 32 for x in shingles) if shingles
            else 2**32 - 1 for ak, bk in zip(a, b)]


def candidate_pairs_plain(signatures, bands, rows):
    """Every pair (i, j), i < j, of documents whose signatures agree on a whole band."""
    pairs = set()
    for band in range(bands):
        buckets = {}
        for i, sig in enumerate(signatures):
            buckets.setdefault(tuple(sig[band * rows:(band + 1) * rows]), []).append(i)
        for members in buckets.values():
            pairs |= {(i, j) for n, i in enumerate(members) for j in members[n + 1:]}
    return pairs


def lsh_bands(num_perm, threshold):
    """LSH bands and rows for a similarity threshold.

    Two documents with Jaccard similarity s share all `rows` values of one band with
    probability s**rows, so they become candidates with P = 1 - (1 - s**rows)**bands. Take
    the most rows (fewest false candidates to check) that still finds a pair with P >= 0.99
    at LSH_MARGIN of the way from the threshold to 1 (0.65 for the default 0.5): the edited
    copies the threshold is for sit there or above (see the opening comment), while a pair
    at the threshold itself is found less surely. Requiring 0.99 at the threshold would take
    one row less and check many more pairs.
    """
    target = threshold + LSH_MARGIN * (1 - threshold)
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - target**rows) ** bands >= 0.99:
            return bands, rows
    return num_perm, 1


# The fast path: the same shingles, signatures and candidates with numpy, a batch of
# documents at a time, on arrays of code points rather than one Python string per unit.


def _cjk_table():
    """Boolean table indexed by code point (all the ranges lie in the first 64 K)."""
    table = np.zeros(0x10000, bool)
    for lo, hi in CJK_RANGES:
        table[lo:hi + 1] = True
    return table


IS_CJK = _cjk_table()


def shingles(text):
    """shingles_plain as a uint64 array, computed on the array of the text's code points:
    the hashes of the runs of both sizes from every position, then each position's own."""
    cp = code_points(text.lower())
    units = cp[char_class(cp, IS_ALNUM_BMP, str.isalnum)].astype(np.uint64)
    n = len(units)
    if n == 0:
        return units
    longest = max(SHINGLE_CJK, SHINGLE_OTHER)
    padded = np.r_[units, np.zeros(longest, np.uint64)]  # runs past the end are not kept
    runs, h = {}, np.zeros(n, np.uint64)
    for k in range(1, longest + 1):
        h = h * np.uint64(SHINGLE_MULT) + padded[k - 1:k - 1 + n]  # wraps mod 2**64
        runs[k] = h  # h[i]: the hash of the run of k units from i
    cjk = IS_CJK[np.minimum(units, 0xFFFF).astype(np.int64)]
    sizes = np.where(cjk, SHINGLE_CJK, SHINGLE_OTHER)
    full = np.where(cjk, runs[SHINGLE_CJK], runs[SHINGLE_OTHER])[np.arange(n) + sizes <= n]
    tail = runs[min(SHINGLE_TAIL, n)][n - min(SHINGLE_TAIL, n)]
    return np.r_[full, tail]


def minhash(shingle_arrays, num_perm=128, chunk=1024):
    """minhash_plain of many documents at once: (n_docs, num_perm) uint32. Rows are
    hashed `chunk` at a time, a block small enough to stay in the CPU cache."""
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


def band_hashes(sig, bands, rows):
    """(n_docs, bands) uint64: one hash of the rows of each band."""
    coef = np.random.default_rng(7).integers(1, 2**63, rows, dtype=np.uint64) | np.uint64(1)
    cols = sig[:, :bands * rows].astype(np.uint64).reshape(len(sig), bands, rows)
    return (cols * coef).sum(axis=2, dtype=np.uint64)  # wraps mod 2**64


def candidate_pairs(hashes, eligible, window=BUCKET_WINDOW):
    """Pairs (i, j), i < j, of eligible documents that agree on some band: within each
    bucket, every member is paired with each of the up to `window` members before it, so
    the members of a bucket are compared with each other (candidate_pairs_plain, for
    buckets of up to window + 1). Returns an int64 (n, 2) array."""
    ids = np.flatnonzero(eligible)
    if len(ids) < 2:
        return np.zeros((0, 2), np.int64)
    pairs = []
    for band in range(hashes.shape[1]):
        order = np.argsort(hashes[ids, band], kind="stable")  # stable: ascending ids in a bucket
        values = hashes[ids[order], band]
        for lag in range(1, min(window, len(ids) - 1) + 1):
            same = np.flatnonzero(values[lag:] == values[:-lag])  # members lag apart
            if len(same) == 0:
                break  # no bucket holds lag + 1 members
            pairs.append(np.stack([ids[order[same]], ids[order[same + lag]]], axis=1))
    if not pairs:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(pairs).astype(np.int64)
    n = len(eligible)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])  # one code per pair drops repeats
    return np.stack([codes // n, codes % n], axis=1)


def likely_pairs(pairs, sketches, threshold):
    """The candidate pairs whose MinHash signatures (sketches: their low 16 bits, which
    prepare.py keeps per document) agree on enough of their values. The share that agrees
    estimates the pair's similarity with a standard deviation of at most 0.5 / sqrt(values)
    (0.044 for 128); a pair is set aside when its estimate is SKETCH_SDS of those below the
    threshold, which a pair at the threshold is with P < 0.03%. Most candidates from
    crowded buckets are far below it, and need no exact check."""
    cut = threshold - SKETCH_SDS * 0.5 / np.sqrt(sketches.shape[1])
    keep = np.zeros(len(pairs), bool)
    for lo in range(0, len(pairs), 65536):  # a bounded block of (pairs, num_perm) at a time
        i, j = pairs[lo:lo + 65536].T
        keep[lo:lo + 65536] = (sketches[i] == sketches[j]).mean(axis=1) >= cut
    return pairs[keep]


def jaccard(a, b):
    """Exact Jaccard similarity |a & b| / |a | b| of two sets given as np.unique arrays."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - common
    return common / union if union else 1.0


def parts_found(a, b):
    """parts_found_plain of shingle array a (in order) and np.unique array b."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    found = b[np.minimum(np.searchsorted(b, a), len(b) - 1)] == a
    n = parts_of(len(a))
    bounds = np.arange(n + 1) * len(a) // n
    return float((np.add.reduceat(found, bounds[:-1]) / np.diff(bounds)).min())


def _find(parent, i):
    """Union-find root of i; parent holds only the documents merged so far."""
    while parent.get(i, i) != i:
        parent[i] = parent.get(parent[i], parent[i])  # path halving
        i = parent[i]
    return i


def near_duplicates(pairs, get_shingles, threshold, progress=None):
    """Confirm candidate pairs by the rule (is_near_copy_plain) and cluster them.

    Returns (ids to drop, report): every cluster keeps its first document. Pairs already in
    one cluster are not checked again. The report says how the cut fell: "clusters",
    "checked" (pairs), "histogram" (the checked pairs' Jaccard similarity in ten bins of
    0.1), "parts_rejected" (pairs at the threshold or above whose parts were not found)
    and "examples": the checked pair closest above the threshold, the closest below, and
    the most similar pair rejected for its parts, each as [similarity, i, j] or None.
    """
    parent, cache = {}, {}
    histogram, parts_rejected = [0] * 10, 0
    above = below = parts = None

    def cached(i):  # (shingles in order, np.unique of them)
        if i not in cache:
            if len(cache) > 20000:
                cache.clear()
            ordered = get_shingles(i)
            cache[i] = ordered, np.unique(ordered)
        return cache[i]

    for i, j in pairs.tolist():
        if progress is not None:
            progress.update(1)
        ri, rj = _find(parent, i), _find(parent, j)
        if ri == rj:
            continue
        (a, a_set), (b, b_set) = cached(i), cached(j)
        similarity = jaccard(a_set, b_set)
        histogram[min(int(similarity * 10), 9)] += 1
        if similarity < threshold:
            if below is None or similarity > below[0]:
                below = [similarity, i, j]
        elif max(parts_found(a, b_set), parts_found(b, a_set)) < PART_FOUND:
            parts_rejected += 1
            if parts is None or similarity > parts[0]:
                parts = [similarity, i, j]
        else:
            if above is None or similarity < above[0]:
                above = [similarity, i, j]
            parent[max(ri, rj)] = min(ri, rj)  # the root is the earliest document: kept
    drop = sorted(i for i in parent if _find(parent, i) != i)
    return drop, {"clusters": len({_find(parent, i) for i in drop}), "checked": sum(histogram),
                  "histogram": histogram, "parts_rejected": parts_rejected,
                  "examples": {"above": above, "below": below, "parts": parts}}


def find_near_duplicates(texts, threshold=DEDUP_THRESHOLD, num_perm=128):
    """near_duplicates over a list of texts in memory, through the steps prepare.py runs
    on a corpus (shingles, MinHash, LSH bands, candidates, the rule): (ids to drop, report)."""
    doc_shingles = [shingles(t) for t in texts]
    bands, rows = lsh_bands(num_perm, threshold)
    signatures = minhash(doc_shingles, num_perm)
    pairs = candidate_pairs(band_hashes(signatures, bands, rows),
                            np.array([len(s) > 0 for s in doc_shingles], bool))
    pairs = likely_pairs(pairs, signatures.astype(np.uint16), threshold)
    return near_duplicates(pairs, doc_shingles.__getitem__, threshold)
