"""data_quality.py: the scorers (a bidirectional encoder, hashed n-grams, a perplexity
model) and their files."""

import random
import re

import numpy as np
import pytest
import torch

import data_order
import data_quality
import prepare as pipeline
from data_quality import Encoder, batch_ids, load_scorer, save_scorer, score, train_scorer
from dedup import jaccard_plain, shingles_plain
from prepare import load_meta, prepare
from test_dataset import decoded_documents, english_doc, unframe, write_jsonl
from tokenizer import load_tokenizer, save_tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    rng = random.Random(0)
    texts = [english_doc(rng) for _ in range(60)] + ["zq xv jk " * 20] * 5
    return train_tokenizer(texts, vocab_size=300)


def test_the_encoder_is_bidirectional_the_first_output_depends_on_the_last_token(tok):
    torch.manual_seed(0)
    model = Encoder(data_quality.scorer_config(tok.get_vocab_size(), dim=32)).eval()
    ids = torch.randint(3, 300, (1, 12))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % 300
    real = torch.ones(1, 12, dtype=torch.bool)
    with torch.no_grad():
        first, changed = model.hidden(ids, real)[0, 0], model.hidden(other, real)[0, 0]
        assert not torch.allclose(first, changed)
        # padding is not read: a padded copy gives the real positions the same states
        padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], 1)
        mask = torch.cat([real, torch.zeros(1, 4, dtype=torch.bool)], 1)
        torch.testing.assert_close(model.hidden(padded, mask)[0, :12],
                                   model.hidden(ids, real)[0], rtol=1e-5, atol=1e-5)


def separable(n=80, seed=1):
    """Prose (label 1) against shuffled keyword soup of other words (label 0)."""
    rng = random.Random(seed)
    good = [english_doc(rng, 40) for _ in range(n)]
    junk = [" ".join(rng.choice(["zq", "xv", "jk", "buy", "cheap", "best"]) for _ in range(40))
            for _ in range(n)]
    return good, junk


@pytest.mark.parametrize("kind", ["encoder", "ngrams"])
def test_a_classifier_separates_a_separable_set_and_scores_deterministically(kind, tok,
                                                                              tmp_path):
    good, junk = separable()
    model = train_scorer(kind, tok, good[:60], junk[:60], steps=60, batch_size=16, seed=0)
    held_good, held_junk = score(model, tok, good[60:]), score(model, tok, junk[60:])
    assert held_good.min() > held_junk.max()  # every held-out document on its side
    path = save_scorer(model, kind, tok, tmp_path / "q.pt")
    loaded, loaded_kind = load_scorer(path, tok)
    assert loaded_kind == kind
    np.testing.assert_array_equal(score(loaded, tok, good[60:]), held_good)


def test_the_perplexity_scorer_ranks_reference_like_text_higher(tok):
    good, junk = separable()
    model = train_scorer("perplexity", tok, good[:60], [], steps=60, batch_size=16)
    scores = score(model, tok, good[60:] + junk[60:])
    assert scores[:20].min() > scores[20:].max()


def test_a_scorer_file_that_does_not_fit_is_a_one_line_error(tok, tmp_path):
    model = train_scorer("ngrams", tok, ["a b c d"], ["e f g h"], steps=1)
    path = save_scorer(model, "ngrams", tok, tmp_path / "q.pt")
    other = train_tokenizer(["something else entirely " * 10], vocab_size=280)
    with pytest.raises(ValueError, match="trained with another tokenizer"):
        load_scorer(path, other)
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a quality scorer file"):
        load_scorer(tmp_path / "bad.pt", tok)
    with pytest.raises(FileNotFoundError, match="train a scorer first"):
        load_scorer(tmp_path / "missing.pt", tok)


def test_batch_ids_pads_and_cuts_at_max_tokens(tok):
    ids, real = batch_ids(tok, ["model data " * 200, "a"], max_tokens=16)
    assert ids.shape == (2, 16) and real[0].all() and real[1].sum() >= 1
    assert (ids[1][~real[1]] == 0).all()


# The cut and the order (data_order.py), through prepare()


def topic_corpus(seed=3, topics=8, per_topic=12):
    """Documents on a few topics, each written from its topic's own words (so that two on
    one topic share many shingles and two on different topics few), shuffled together."""
    rng = random.Random(seed)
    vocab = [f"{a}{b}{c}" for a in "bcdfg" for b in "aeiou" for c in "klmnprst"]
    pools = [rng.sample(vocab, 25) for _ in range(topics)]
    docs = [(t, " ".join(rng.choice(pools[t]) for _ in range(60)) + ".")
            for t in range(topics) for _ in range(per_topic)]
    rng.shuffle(docs)
    return docs


@pytest.fixture(scope="module")
def topic_tok(tmp_path_factory):
    texts = [text for _, text in topic_corpus()]
    return save_tokenizer(train_tokenizer(texts, vocab_size=300),
                          tmp_path_factory.mktemp("tok") / "tokenizer.json")


def train_texts(prepared, tok_path):
    tok = load_tokenizer(tok_path)
    return [unframe(t) for t in decoded_documents(tok, prepared, "train")]


def test_in_context_order_visits_each_document_by_its_weight_and_puts_similar_ones_together(
        tmp_path, topic_tok):
    docs = topic_corpus()
    a = write_jsonl(tmp_path / "a.jsonl", [text for _, text in docs[:48]])
    b = write_jsonl(tmp_path / "b.jsonl", [text for _, text in docs[48:]])
    prepared = prepare([a, b], topic_tok, tmp_path / "data", weights=[1, 2], val_fraction=0,
                       order="similar", num_workers=0, verbose=False)
    assert load_meta(prepared)["options"]["order"] == "similar"
    train = train_texts(prepared, topic_tok)
    for i, (_, text) in enumerate(docs):
        assert train.count(text) == (1 if i < 48 else 2)
    first_pass = train[:len(docs)]  # the second copies follow the whole first pass

    def similarity(x, y):
        return jaccard_plain(set(shingles_plain(x)), set(shingles_plain(y)))

    neighbours = np.mean([similarity(x, y) for x, y in zip(first_pass, first_pass[1:])])
    rng = random.Random(0)
    random_pairs = np.mean([similarity(*rng.sample(first_pass, 2)) for _ in range(300)])
    assert neighbours > 2 * random_pairs
    shuffled = prepare([a, b], topic_tok, tmp_path / "data", weights=[1, 2], val_fraction=0,
                       num_workers=0, verbose=False)
    assert shuffled.name != prepared.name  # another order, another directory


def test_neighbours_are_the_most_similar_of_all_pairs_that_share_a_band():
    # brute force over every pair: candidates share some band of NEIGHBOUR_ROWS values,
    # ranked by the share of equal values, ties by id. 16 documents, so no bucket exceeds
    # the search's window and every candidate pair is seen; near copies of 4 originals at
    # several distances give pairs found in many bands, and ties
    rng = np.random.default_rng(3)
    originals = rng.integers(0, 1000, (4, 128))
    sketches = np.concatenate([np.where(rng.random((4, 128)) < p, rng.integers(0, 1000, (4, 128)),
                                        originals) for p in (0.1, 0.3, 0.5, 0.7)])
    sketches = sketches.astype(np.uint16)
    k = 5
    ids, shares = data_order.neighbours(sketches, k)
    bands = sketches.reshape(16, -1, data_order.NEIGHBOUR_ROWS)
    for i in range(16):
        candidates = [j for j in range(16) if j != i and (bands[i] == bands[j]).all(1).any()]
        ranked = sorted(candidates, key=lambda j: (-(sketches[i] == sketches[j]).mean(), j))[:k]
        assert ids[i].tolist() == ranked + [-1] * (k - len(ranked)), i
        assert shares[i, :len(ranked)].tolist() == [(sketches[i] == sketches[j]).mean()
                                                   for j in ranked]
    assert (ids >= 0).sum() > 16 * 2  # the set has neighbours to find


def test_the_greedy_path_follows_the_most_similar_unvisited_neighbour():
    # 3 is nobody's neighbour, so the walk starts there; it has none, so it starts again at
    # 0 (one in-edge, from 2), goes on to 2 (0's most similar), then to 1, whose only
    # neighbour, 2, is visited: the path is 3, 0, 2, 1 (worked by hand)
    ids = np.array([[2, 1], [2, -1], [1, 0], [-1, -1]])
    assert data_order.greedy_path(ids).tolist() == [3, 0, 2, 1]
    assert data_order.greedy_path(np.full((3, 2), -1)).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def scorer_path(topic_tok, tmp_path_factory):
    """An n-gram classifier that prefers topic 0's words."""
    docs = topic_corpus(seed=4)
    tok = load_tokenizer(topic_tok)
    model = train_scorer("ngrams", tok, [d for t, d in docs if t == 0],
                         [d for t, d in docs if t != 0], steps=80, batch_size=16)
    return save_scorer(model, "ngrams", tok, tmp_path_factory.mktemp("q") / "quality.pt")


def test_the_quality_cut_drops_the_lowest_scored_training_documents_never_validation(
        tmp_path, topic_tok, scorer_path):
    docs = topic_corpus()
    src = write_jsonl(tmp_path / "d.jsonl", [text for _, text in docs])
    full = prepare(src, topic_tok, tmp_path / "data", val_fraction=0.2, num_workers=0,
                   verbose=False)
    cut = prepare(src, topic_tok, tmp_path / "data", val_fraction=0.2, num_workers=0,
                  verbose=False, quality_model=scorer_path, quality_keep=0.5)
    tok = load_tokenizer(topic_tok)
    assert decoded_documents(tok, cut, "val") == decoded_documents(tok, full, "val")
    kept, before = train_texts(cut, topic_tok), train_texts(full, topic_tok)
    assert len(kept) == round(0.5 * len(before)) and set(kept) <= set(before)
    # every document's score is recorded beside its split, and the cut is where it says
    scores = np.load(cut / "train.scores.npy")
    model = load_scorer(scorer_path, tok)[0]
    np.testing.assert_allclose(scores, score(model, tok, kept), rtol=1e-5)
    dropped = sorted(set(before) - set(kept))
    assert score(model, tok, dropped).max() <= scores.min()
    report = load_meta(cut)["report"]["quality"]
    assert report["dropped"] == len(dropped) and sum(report["histogram"]) == len(before)
    assert len(np.load(cut / "val.scores.npy")) == load_meta(cut)["splits"]["val"]["documents"]


def test_the_curriculum_puts_the_best_scored_documents_last(tmp_path, topic_tok, scorer_path):
    src = write_jsonl(tmp_path / "d.jsonl", [text for _, text in topic_corpus()])
    prepared = prepare(src, topic_tok, tmp_path / "data", val_fraction=0, num_workers=0,
                       verbose=False, quality_model=scorer_path, order="curriculum")
    scores = np.load(prepared / "train.scores.npy")
    assert (np.diff(scores) >= 0).all() and scores[-1] > scores[0]


def test_with_the_levers_off_the_options_and_so_the_fingerprint_are_as_before():
    """The options of format 4, as they were before the levers existed: a directory
    prepared then keeps its name, and is not prepared again."""
    options = pipeline.result_options(text_field="text", val_fraction=0.01, near_dedup=True,
                                      dedup_threshold=0.5, num_perm=128, min_chars=20, seed=0,
                                      skip_bad_lines=False)
    assert options == {"format": 4, "text_field": "text", "val_fraction": 0.01,
                       "near_dedup": True, "dedup_threshold": 0.5, "num_perm": 128,
                       "min_chars": 20, "seed": 0, "skip_bad_lines": False}


@pytest.mark.parametrize("levers, message", [
    ({"quality_keep": 0.5}, "need scores: give --quality_model"),
    ({"order": "curriculum"}, "need scores: give --quality_model"),
    ({"quality_model": "missing.pt"}, "--quality_model missing.pt not found"),
])
def test_levers_that_cannot_work_are_one_line_errors(levers, message, tmp_path, topic_tok):
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        prepare("builtin", topic_tok, tmp_path, num_workers=0, verbose=False, **levers)


def test_an_unordered_sampler_and_an_ordered_one():
    from dataset import ShardedSampler
    ordered = [list(ShardedSampler(10, r, 2, shuffle=False, start=2)) for r in range(2)]
    assert ordered == [[2, 4, 6, 8], [3, 5, 7, 9]]
    assert sorted(ShardedSampler(10, seed=1)) == list(range(10))
    assert list(ShardedSampler(10, seed=1)) != list(range(10))
