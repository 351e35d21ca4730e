"""Byte-level BPE tokenizer: train it, save it, load it.

The special tokens and their ids are defined here and nowhere else. They follow MiniMind's
tokenizer, so its tokenizer.json works in every MyLLM script:

    <unk> = 0   unknown, and also padding (padded positions never count in the loss)
    <s>   = 1   begin of document
    </s>  = 2   end of document

Byte-level BPE first maps every byte of the UTF-8 text to one of 256 printable characters,
then merges frequent pairs. All 256 byte symbols are in the vocabulary, so any text encodes
without <unk>, and decode(encode(text)) gives the text back byte for byte.

Two definitions every script shares live here too: how a document is framed as tokens
(frame_document) and how many bytes of text each token stands for (token_bytes), which
bits per byte and the data report count alike.

    python tokenizer.py --data_path builtin --vocab_size 6400 --out out/tokenizer.json
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from files import write_text_atomic
from flags import DEFAULT_TOKENIZER, add_source_flags
from corpus import clean_text, expand_paths, iter_texts, source_bytes

UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
PAD_ID = UNK_ID
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]


def train_tokenizer(texts, vocab_size=6400, show_progress=False):
    """Train a byte-level BPE on an iterable of strings; the special tokens get ids 0, 1, 2."""
    min_size = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_size:
        raise ValueError(f"vocab_size {vocab_size} is too small; byte-level BPE needs at least "
                         f"{min_size} (3 special tokens + 256 bytes)")
    tok = Tokenizer(models.BPE())
    # No prefix space: a space is only encoded where the text has one, so decoding is exact.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # listed first, so they get ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    check_special_tokens(tok, "the trained tokenizer")
    return tok


def tokenizer_fingerprint(tok):
    """A hash of what decides the token ids: the same for a saved and reloaded copy."""
    config = json.loads(tok.to_str())
    # Truncation and padding are run-time settings (transformers switches them on and off).
    config.pop("truncation", None)
    config.pop("padding", None)
    canonical = json.dumps(config, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def frame_document(ids):
    """A document's token ids as training and evaluation see it: <s> ids </s>. Text that
    already carries a marker (MiniMind's pretrain_hq.jsonl has "<s>...</s>") keeps it, so
    neither end is framed twice."""
    ids = list(ids)
    if not ids or ids[0] != BOS_ID:
        ids = [BOS_ID] + ids
    if ids[-1] != EOS_ID:
        ids.append(EOS_ID)
    return ids


def gpt2_byte_decoder():
    """Byte-level BPE writes each byte as one printable character (GPT-2's table): printable
    bytes stand for themselves, the other 68 are moved to code points 256 and up.
    Returns the inverse map, character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    char_of = {b: chr(b) for b in printable}
    moved = [b for b in range(256) if b not in char_of]
    char_of.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return {char: b for b, char in char_of.items()}


def token_bytes(tok):
    """The UTF-8 bytes of text that each token id stands for. Special tokens stand for none:
    they mark documents, they are not text. Bits per byte divides a loss by these bytes."""
    to_byte = gpt2_byte_decoder()
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    table = []
    for i in range(tok.get_vocab_size()):
        piece = tok.id_to_token(i)
        if i in special or piece is None:
            table.append(b"")
        elif all(char in to_byte for char in piece):
            table.append(bytes(to_byte[char] for char in piece))
        else:  # a token that is not byte-level (another kind of tokenizer): its decoded text
            table.append(tok.decode([i]).encode("utf-8"))
    return table


def token_byte_counts(tok):
    """len(token_bytes(tok)[i]) for every id i: what bits per byte divides by."""
    return [len(piece) for piece in token_bytes(tok)]


def save_tokenizer(tok, path):
    """Write tokenizer.json and, beside it, the files transformers.AutoTokenizer reads.

    path is the tokenizer.json to write, or an existing directory to write it into.
    Returns the path of tokenizer.json.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    unk, bos, eos = (tok.id_to_token(i) for i in (UNK_ID, BOS_ID, EOS_ID))
    special_map = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": unk}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        # MyLLM adds <s> and </s> itself when it prepares data; transformers should not.
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        # Both would change the decoded text: no space around special tokens, nothing tidied.
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "model_max_length": 32768,
    }
    write_text_atomic(path, tok.to_str(pretty=True))
    write_text_atomic(path.parent / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    write_text_atomic(path.parent / "special_tokens_map.json",
                      json.dumps(special_map, indent=2) + "\n")
    return path


def load_tokenizer(path):
    """Load a tokenizer.json (or a directory holding one) and check its special tokens."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; train one with `python tokenizer.py "
                                f"--data_path builtin --out {file}`, or pass an existing "
                                "tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the tokenizers library raises a plain Exception for a bad file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{file} is not a tokenizer.json that the tokenizers library can read "
                         f"({reason}); pass one written by tokenizer.py or MiniMind") from None
    check_special_tokens(tok, str(file))
    return tok


def compression(tok, texts):
    """Bytes per token and characters per token of tok on texts (higher is better)."""
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False))
    return n_bytes / max(n_tokens, 1), n_chars / max(n_tokens, 1)


def sample_texts(texts, total_bytes, max_bytes, held_out_every=20, held_out_bytes=2_000_000):
    """A deterministic sample of about max_bytes, spread over the whole corpus.

    Every stride-th document is taken, so a corpus sorted by topic is sampled evenly; every
    held_out_every-th taken document is held out (up to held_out_bytes) to measure compression.
    Returns (train_texts, held_out_texts).
    """
    train_share = 1 - 1 / held_out_every
    stride = max(1, int(total_bytes * train_share / max_bytes))
    train, held_out = [], []
    train_size = held_size = 0
    for i, text in enumerate(texts):
        if i % stride:
            continue
        size = len(text.encode("utf-8"))
        if (i // stride) % held_out_every == held_out_every - 1 and held_size < held_out_bytes:
            held_out.append(text)
            held_size += size
        else:
            train.append(text)
            train_size += size
            if train_size >= max_bytes:
                break
    return train, held_out


def read_sample(sources, max_bytes=50_000_000, text_field="text", skip_bad_lines=False,
                verbose=True):
    """Clean a deterministic sample of about max_bytes from sources (files, globs, 'builtin'
    or None) as prepare.py would; returns (train_texts, held_out_texts)."""
    paths = expand_paths(sources)
    # The built-in corpus (~2.5 MB) is read whole, so it counts as 0 here.
    total_bytes = sum(source_bytes(p) for p in paths if p != "builtin")
    texts = iter_texts(paths, text_field, skip_bad_lines)
    # Train on the text as prepare.py cleans it, so no merges are spent on junk.
    cleaned = (t for t in (clean_text(t, markers=SPECIAL_TOKENS[1:])[0] for t in texts)
               if t is not None)
    with tqdm(desc="reading sample", total=total_bytes or None, unit="B", unit_scale=True,
              disable=not verbose) as bar:  # cleaned text read, of the sources' size
        train_texts, held_out = sample_texts(_counted(cleaned, bar), total_bytes, max_bytes)
    if not train_texts:
        raise ValueError(f"no text to train a tokenizer on in {sources} after cleaning")
    return train_texts, held_out


def _counted(texts, bar):
    for text in texts:
        bar.update(len(text.encode("utf-8")))
        yield text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train MyLLM's byte-level BPE tokenizer.")
    add_source_flags(parser, data_path_default=["builtin"])
    parser.add_argument("--vocab_size", type=int, default=6400)
    parser.add_argument("--max_bytes", type=int, default=50_000_000,
                        help="train on a deterministic sample of about this many bytes; on "
                             "Chinese text training takes ~75 bytes of memory per byte")
    parser.add_argument("--out", default=DEFAULT_TOKENIZER)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        train_texts, held_out = read_sample(args.data_path, args.max_bytes, args.text_field,
                                            args.skip_bad_lines)
        start = time.time()
        tok = train_tokenizer(train_texts, args.vocab_size, show_progress=True)
        seconds = time.time() - start
        out = save_tokenizer(tok, args.out)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")

    sample_mb = sum(len(t.encode("utf-8")) for t in train_texts) / 1e6
    print(f"trained on {sample_mb:.1f} MB ({len(train_texts)} documents) in {seconds:.1f} s")
    print(f"vocabulary: {tok.get_vocab_size()} tokens; special: {SPECIAL_TOKENS} = 0, 1, 2")
    if held_out:
        bpt, cpt = compression(tok, held_out)
        held_mb = sum(len(t.encode("utf-8")) for t in held_out) / 1e6
        print(f"held-out text ({held_mb:.2f} MB): {bpt:.2f} bytes/token, {cpt:.2f} chars/token")
    print(f"saved {out} (+ tokenizer_config.json, special_tokens_map.json), "
          f"fingerprint {tokenizer_fingerprint(tok)[:12]}")


def check_special_tokens(tok, name):
    """Raise ValueError unless ids 0, 1, 2 are special tokens, as MyLLM's data assumes."""
    added = tok.get_added_tokens_decoder()
    found = [tok.id_to_token(i) for i in (UNK_ID, BOS_ID, EOS_ID)]
    if not all(i in added and added[i].special for i in (UNK_ID, BOS_ID, EOS_ID)):
        raise ValueError(f"{name} has {found} at ids 0, 1, 2 but MyLLM needs the special tokens "
                         f"{SPECIAL_TOKENS} there; train one with `python tokenizer.py`")


if __name__ == "__main__":
    main()
