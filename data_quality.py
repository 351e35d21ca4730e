"""Data quality scored by a model: the lever beyond counted rules and dedup.

Rules catch what can be named (control characters, runs of symbols, too short). A model
catches what cannot: keyword lists, shuffled words, boilerplate, machine-garbled text. Two
recipes, both trained by the user on text they trust (scripts/train_quality.py):

- A classifier (GPT-3, 2020; DCLM, 2024): trained to tell a reference set the user trusts
  from the raw corpus; a document's score is the probability that it reads like the
  reference. Two classifiers are here:
    "encoder": a BERT-style encoder, MyLLM's own Transformer blocks (model.Block) run
      without the causal mask, so every token sees the whole text; the tokens' mean is
      pooled into one logit;
    "ngrams": a fastText-style bag of the document's token unigrams and bigrams, hashed
      into buckets, averaged, one logit (Joulin et al. 2016): no attention, no order
      beyond pairs, and far cheaper.
- "perplexity" (CCNet, Wenzek et al. 2019): a small causal MyLLM model trained on the
  reference set alone; a document's score is minus its loss in bits per token, so text
  unlike the reference scores low.

Each scorer reads a document's first MAX_TOKENS tokens of the data's tokenizer, and saves
as a torch file of tensors and plain values (loaded with weights_only=True) that records
the tokenizer it was trained with.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from files import write_atomic
from model import Block, LMConfig, RMSNorm, Transformer, precompute_rope
from tokenizer import PAD_ID, tokenizer_fingerprint

KINDS = ("encoder", "ngrams", "perplexity")
MAX_TOKENS = 256  # of each document: its start is what the scorers read
NGRAM_BUCKETS = 1 << 18  # hashed unigrams and bigrams of the "ngrams" classifier
FORMAT = 1  # of a scorer file


def scorer_config(vocab_size, dim=128, n_layers=2):
    """The small shape every scorer model takes."""
    return LMConfig(dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=2, vocab_size=vocab_size,
                    max_seq_len=MAX_TOKENS)


class Encoder(nn.Module):
    """A BERT-style classifier from MyLLM's blocks: no causal mask, a mean over the real
    tokens, one logit."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.head = nn.Linear(config.dim, 1)
        cos, sin = precompute_rope(config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def hidden(self, ids, real):
        """(B, T, dim) states; ids and real (B, T), real False on padding."""
        T = ids.shape[1]
        # every query attends to every real key, before and after it, and to itself (a
        # padding query would otherwise have no key at all)
        mask = real[:, None, None, :] | torch.eye(T, dtype=torch.bool, device=ids.device)
        cos, sin = self.rope_cos[:T][None], self.rope_sin[:T][None]
        h = self.tok_embeddings(ids)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        return self.norm(h)

    def forward(self, ids, real):
        h = self.hidden(ids, real)
        pooled = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        return self.head(pooled).squeeze(-1)


class NGrams(nn.Module):
    """A fastText-style classifier: the mean of hashed unigram and bigram vectors, one
    logit."""

    def __init__(self, dim=64, buckets=NGRAM_BUCKETS):
        super().__init__()
        self.buckets = buckets
        self.table = nn.EmbeddingBag(buckets, dim, mode="sum")
        self.head = nn.Linear(dim, 1)

    def features(self, ids, real):
        """Each row's hashed unigrams and bigrams, with a per-feature weight of 0 on padding."""
        ids = ids.long()
        bigrams = ids[:, :-1] * 1_000_003 + ids[:, 1:] + 1  # distinct from any unigram
        feats = torch.cat([ids, bigrams], dim=1) % self.buckets
        weights = torch.cat([real, real[:, :-1] & real[:, 1:]], dim=1).float()
        return feats, weights

    def forward(self, ids, real):
        feats, weights = self.features(ids, real)
        mean = weights / weights.sum(1, keepdim=True).clamp(min=1)  # over the real features
        return self.head(self.table(feats, per_sample_weights=mean)).squeeze(-1)


def batch_ids(tok, texts, max_tokens=MAX_TOKENS):
    """(ids, real) tensors (B, T) of the texts' first max_tokens tokens, padded."""
    encodings = tok.encode_batch_fast(list(texts), add_special_tokens=False)
    return padded([e.ids for e in encodings], max_tokens)


def padded(rows, max_tokens=MAX_TOKENS):
    """(ids, real) tensors (B, T) of token id lists cut to max_tokens, padded with PAD_ID."""
    rows = [list(row[:max_tokens]) or [PAD_ID] for row in rows]
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    real = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        real[i, :len(row)] = True
    return ids, real


def build(kind, vocab_size):
    if kind == "encoder":
        return Encoder(scorer_config(vocab_size))
    if kind == "ngrams":
        return NGrams()
    return Transformer(scorer_config(vocab_size))


def _perplexity_loss(model, ids, real):
    """Per document: the mean next-token loss over its real tokens (nats)."""
    logits = model(ids).logits[:, :-1].float()
    targets = ids[:, 1:]
    mask = (real[:, 1:]).float()
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    return (losses * mask).sum(1) / mask.sum(1).clamp(min=1)


def train_scorer(kind, tok, reference, raw, steps=300, batch_size=32, lr=1e-3, seed=0,
                 log=None):
    """A scorer of `kind` trained on texts: reference (the text the user trusts) against
    raw (the corpus); the perplexity scorer reads the reference alone."""
    if kind not in KINDS:
        raise ValueError(f"unknown scorer kind {kind!r}; use one of {KINDS}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build(kind, tok.get_vocab_size())
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    texts = list(reference) if kind == "perplexity" else list(reference) + list(raw)
    labels = torch.tensor([1.0] * len(reference) + [0.0] * (len(texts) - len(reference)))
    model.train()
    for step in range(steps):
        picked = rng.integers(0, len(texts), batch_size)
        ids, real = batch_ids(tok, [texts[i] for i in picked])
        if kind == "perplexity":
            loss = _perplexity_loss(model, ids, real).mean()
        else:
            loss = F.binary_cross_entropy_with_logits(model(ids, real), labels[picked])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"step {step:>5}  loss {loss.item():.4f}")
    model.eval()
    return model


def score(model, tok, texts, batch_size=64):
    """Each text's score, higher reading more like the reference: a classifier's
    probability, or minus the perplexity model's bits per token."""
    encodings = tok.encode_batch_fast(list(texts), add_special_tokens=False)
    return score_ids(model, [e.ids for e in encodings], batch_size)


@torch.no_grad()
def score_ids(model, rows, batch_size=64):
    """score() of documents given as token id lists (prepare.py has them)."""
    out = []
    for lo in range(0, len(rows), batch_size):
        ids, real = padded(rows[lo:lo + batch_size])
        if isinstance(model, Transformer):
            out.append(-_perplexity_loss(model, ids, real) / math.log(2))
        else:
            out.append(torch.sigmoid(model(ids, real)))
    return torch.cat(out).float().numpy() if out else np.zeros(0, np.float32)


def save_scorer(model, kind, tok, path):
    """Save a scorer, atomically, with its kind and its tokenizer's fingerprint."""
    state = {"format": FORMAT, "kind": kind, "tokenizer_fingerprint": tokenizer_fingerprint(tok),
             "state_dict": model.state_dict()}
    return write_atomic(path, lambda f: torch.save(state, f))


def load_scorer(path, tok):
    """(model, kind) from a file save_scorer wrote; a one-line ValueError when it is not
    one, or was trained with another tokenizer than tok."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found; train a scorer first with "
                                "`python scripts/train_quality.py`") from None
    except Exception as e:
        raise ValueError(f"{path} is not a quality scorer file ({type(e).__name__}); "
                         "train one with `python scripts/train_quality.py`") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a quality scorer file; train one with "
                         "`python scripts/train_quality.py`")
    if state["tokenizer_fingerprint"] != tokenizer_fingerprint(tok):
        raise ValueError(f"{path} was trained with another tokenizer than the data's; train "
                         "it again with --tokenizer set to the data's tokenizer")
    model = build(state["kind"], tok.get_vocab_size())
    model.load_state_dict(state["state_dict"])
    return model.eval(), state["kind"]
