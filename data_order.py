"""Which training documents, in which order: the quality cut and the data order, applied by
prepare.py after tokenizing (the validation split is never cut nor reordered).

- The cut (data_quality.py scores every kept document): --quality_keep F keeps the fraction
  F of the training documents that score highest, --quality_threshold S those scoring S or
  more.
- The order of the training documents in train.bin:
    shuffle     the reading order, as before; training shuffles the windows every epoch;
    similar     in-context pretraining (Shi et al. 2023, "In-Context Pretraining: Language
                Modeling Beyond Document Boundaries"): every document is followed by one
                of its most similar neighbours, so that a training window holds related
                texts. Similarity here is the MinHash estimate of the Jaccard similarity of
                character shingles that dedup.py already computes; the path is the paper's
                greedy one: start at a document that is few others' neighbour, go on to
                the most similar unvisited neighbour, and when there is none start again.
                Training still shuffles the windows: what the order is for lies inside a
                window, and reading a slice of related documents after another is worse
                (docs/data_levers.md has the figures);
    curriculum  ascending score: the documents that read most like the reference come last,
                where the learning rate decays (as annealing on the best data does). It is
                read as it lies, every epoch (dataset.ShardedSampler with shuffle off).
  --weights repeats a document after the whole first pass: copy 1 of every document in the
  order, then copy 2 of those that have one, and so on.
"""

import numpy as np

from dedup import band_hashes, candidate_pairs

ORDERS = ("shuffle", "similar", "curriculum")
NEIGHBOURS = 8  # per document, in the similarity graph
NEIGHBOUR_ROWS = 2  # MinHash values per LSH band when looking for neighbours
NEIGHBOUR_WINDOW = 16  # members of a bucket each member is paired with (dedup.candidate_pairs)
HISTOGRAM_BINS = 10


def quality_cut(scores, keep=None, threshold=None):
    """The lowest score kept: the threshold, or the score at which the top `keep` fraction
    starts (ties kept). None keeps everything."""
    if threshold is not None:
        return float(threshold)
    if keep is None or keep >= 1 or len(scores) == 0:
        return None
    n = max(1, int(round(keep * len(scores))))
    return float(np.sort(scores)[::-1][n - 1])


def neighbours(sketches, k=NEIGHBOURS):
    """(n, k) int64 ids of each document's k most similar others (-1 where it has fewer),
    most similar first, and their shares of equal MinHash values (the Jaccard estimate).
    Candidates share a band of NEIGHBOUR_ROWS values: a pair of similarity s shares one of
    the 64 bands with probability 1 - (1 - s^2)^64, 0.47 at s = 0.1, 0.93 at 0.2. The
    bands are searched one at a time, so memory holds at most n * NEIGHBOUR_WINDOW pairs:
    on text of one vocabulary, short bands put most documents in a few buckets."""
    n, num_perm = sketches.shape
    ids, shares = np.full((n, k), -1, np.int64), np.zeros((n, k))
    if n < 2:
        return ids, shares
    hashes = band_hashes(sketches, num_perm // NEIGHBOUR_ROWS, NEIGHBOUR_ROWS)
    everyone = np.ones(n, bool)
    for band in range(hashes.shape[1]):
        pairs = candidate_pairs(hashes[:, band:band + 1], everyone, NEIGHBOUR_WINDOW)
        ids, shares = _keep_best(ids, shares, pairs, sketches)
    return ids, shares


def _keep_best(ids, shares, pairs, sketches):
    """Each document's k most similar among those it has and the new candidate pairs."""
    n, k = ids.shape
    agree = np.empty(len(pairs))
    for lo in range(0, len(pairs), 65536):
        i, j = pairs[lo:lo + 65536].T
        agree[lo:lo + 65536] = (sketches[i] == sketches[j]).mean(axis=1)
    have = ids >= 0
    kept = np.stack([np.nonzero(have)[0], ids[have]], axis=1)
    both = np.concatenate([kept, pairs, pairs[:, ::-1]])  # each new pair from either end
    agree = np.concatenate([shares[have], agree, agree])
    order = np.lexsort((both[:, 1], -agree, both[:, 0]))  # per document, most similar first
    both, agree = both[order], agree[order]
    new = np.ones(len(both), bool)  # a pair found before sorts right next to itself
    new[1:] = (both[1:] != both[:-1]).any(axis=1)
    both, agree = both[new], agree[new]
    first = np.searchsorted(both[:, 0], np.arange(n))
    rank = np.arange(len(both)) - first[both[:, 0]]
    top = rank < k
    ids, shares = np.full((n, k), -1, np.int64), np.zeros((n, k))
    ids[both[top, 0], rank[top]] = both[top, 1]
    shares[both[top, 0], rank[top]] = agree[top]
    return ids, shares


def in_context_order(sketches, k=NEIGHBOURS):
    """The in-context order of documents given their MinHash signatures."""
    return greedy_path(neighbours(sketches, k)[0])


def greedy_path(ids):
    """A path that visits every document once, each followed by its most similar unvisited
    neighbour where it has one (the paper's greedy traversal of the k-nearest-neighbour
    graph, given as (n, k) ids, most similar first, -1 for none); a fresh start is the
    unvisited document that is the fewest others' neighbour."""
    n = len(ids)
    indegree = np.bincount(ids[ids >= 0], minlength=n)
    starts = np.argsort(indegree, kind="stable").tolist()
    visited = np.zeros(n, bool)
    order, pointer = [], 0
    while len(order) < n:
        while visited[starts[pointer]]:
            pointer += 1
        current = starts[pointer]
        while current >= 0:
            visited[current] = True
            order.append(current)
            current = next((j for j in ids[current].tolist() if j >= 0 and not visited[j]), -1)
    return np.array(order, np.int64)


def training_order(order_kind, n, scores=None, sketches=None):
    """The order of n training documents (positions among them) for an --order."""
    if order_kind == "similar":
        return in_context_order(sketches)
    if order_kind == "curriculum":
        return np.argsort(scores, kind="stable")
    return np.arange(n)


def sequence(order, copies):
    """The documents to write, with --weights' repeats: copy 1 of every document in order,
    then copy 2 of those that have one, and so on."""
    order = np.asarray(order, np.int64)
    copies = np.asarray(copies)[order]
    return np.concatenate([order[copies > c] for c in range(int(copies.max(initial=0)))]
                          or [np.zeros(0, np.int64)])


def quality_report(scores, cut, read, is_train):
    """The cut as the report shows it: a histogram of the training documents' scores, the
    counts, and the documents closest to the cut on either side (read(i): text i)."""
    train_scores = scores[is_train]
    lo, hi = (float(train_scores.min()), float(train_scores.max())) if len(train_scores) \
        else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1, HISTOGRAM_BINS + 1)
    histogram = np.histogram(train_scores, edges)[0].tolist()
    report = {"cut": cut, "bins": edges.round(4).tolist(), "histogram": histogram,
              "dropped": int((train_scores < cut).sum()) if cut is not None else 0,
              "examples": {"above": None, "below": None}}
    if cut is not None:
        train = np.flatnonzero(is_train)
        for side, chosen in (("above", scores[train] >= cut), ("below", scores[train] < cut)):
            if chosen.any():
                candidates = train[chosen]
                i = candidates[np.argmin(np.abs(scores[candidates] - cut))]
                report["examples"][side] = [round(float(scores[i]), 4), read(int(i))]
    return report
