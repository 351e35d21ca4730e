"""Deduplication: exact copies, then near copies, the third step of the data pipeline.

Exact: two documents are copies when their normalised texts (corpus.normalize: lower case,
whitespace runs as one space) are equal. A 64-bit hash finds candidates; equal hashes are
confirmed by comparing the texts, so a hash collision never drops a distinct document.

Near (Broder 1997; Leskovec, Rajaraman & Ullman, Mining of Massive Datasets, ch. 3):
- A document's shingles are the set of its runs of SHINGLE_SIZE consecutive units; a unit is
  a word, or a single CJK character (Chinese has no spaces: split on non-word characters,
  whole clauses would be one "word", and texts that differ by one character would share no
  shingle). Two documents are near copies when the Jaccard similarity of their shingle sets,
  |A & B| / |A | B|, reaches the threshold.
- MinHash: hash every shingle with num_perm random hash functions and keep, per function,
  the minimum over the document. Two documents agree on one function's minimum with
  probability equal to their Jaccard similarity, so a signature of 128 minima estimates it.
- Banding (LSH): cut the signature into `bands` bands of `rows` values. Documents that agree
  on a whole band land in one bucket and become candidates; candidates are then confirmed
  by their exact Jaccard similarity, and clustered (union-find): a cluster keeps its first
  document.

The plain definitions come first, written as simply as Python allows (`*_plain`); the fast
path below them computes the same values with numpy over whole batches, and a test checks
one against the other.
"""

import hashlib

import numpy as np

from corpus import char_class, code_points, IS_ALNUM_BMP, normalize

SHINGLE_SIZE = 5
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
    """The units of a text: its words (runs of alphanumerics and "_", broken by any CJK
    character) and its alphanumeric CJK characters, one unit each."""
    units, word = [], ""
    for char in text.lower():
        in_word = char.isalnum() or char == "_"
        if in_word and not is_cjk(char):
            word += char
            continue
        if word:
            units.append(word)
        word = ""
        if in_word:  # a CJK character is a unit of its own
            units.append(char)
    return units + [word] if word else units


def shingles_plain(text, size=SHINGLE_SIZE):
    """The set of the text's shingles, each as a 64-bit number: a polynomial hash of its
    units, each unit itself a polynomial hash of its code points (characters past the 64th
    of one word share the 64th's power: a hash, not a definition)."""
    hashes = [sum(ord(c) * pow(SHINGLE_MULT, min(j, 63), 2**64) for j, c in enumerate(u))
              & MASK64 for u in units_plain(text)]
    shingles = set()
    for start in range(max(len(hashes) - size + 1, 1 if hashes else 0)):
        h = 0
        for unit in hashes[start:start + size]:
            h = (h * SHINGLE_MULT + unit) & MASK64
        shingles.add(h)
    return shingles  # a text shorter than one shingle is a single shingle


def jaccard_plain(a: set, b: set):
    return len(a & b) / len(a | b) if a | b else 1.0


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
    the most rows (fewest false candidates to check) that still finds a pair at the threshold
    with P >= 0.99; candidates are confirmed by their exact Jaccard similarity anyway.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
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
MULT_POWERS = np.cumprod(np.r_[np.uint64(1), np.full(63, np.uint64(SHINGLE_MULT))],
                         dtype=np.uint64)


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
        hashes = hashes * np.uint64(SHINGLE_MULT) + ids[k:k + n]  # wraps mod 2**64
    return hashes


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
