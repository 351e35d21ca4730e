"""tokenizer.py: special ids, lossless round trips, MiniMind files, transformers parity."""

import json
import os
import stat

import pydoc_data.topics
import pytest

from tokenizer import (BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, load_tokenizer, main,
                       read_sample, sample_texts, save_tokenizer, tokenizer_fingerprint,
                       train_tokenizer, write_text_atomic)

CHINESE = ["今天天气很好，我们一起去公园散步吧。", "机器学习是人工智能的一个分支，研究计算机怎样学习。",
           "他说：“你好！”然后离开了。", "数据清洗、去重和分词是预训练的第一步。"]
ROUND_TRIP_TEXTS = [
    "plain ASCII text.",
    "中文：预训练语言模型，从零开始。",
    "emoji 😀🚀 and a family 👩‍👩‍👧 and a flag 🇨🇳 and skin tone 👍🏽",
    "runs of whitespace:  two,   three,\t\ttabs,\n\n\nnewlines, trailing   ",
    "   leading spaces and a lone \r carriage return",
    "rare characters 𠀀𪚥 and combining e\u0301 and zero width \u200b joiner",
    "<s>MiniMind 的标记</s> <s>second</s>",
    "markers glued to text: a<s>b</s>c and </s><s> back to back",
    "",
]


@pytest.fixture(scope="module")
def tok():
    english = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)[:8]]
    return train_tokenizer(english + CHINESE * 20 + ROUND_TRIP_TEXTS, vocab_size=400)


def test_special_tokens_have_fixed_ids(tok):
    assert (UNK_ID, BOS_ID, EOS_ID, PAD_ID) == (0, 1, 2, 0)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tok.get_vocab_size() == 400


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip_is_byte_exact(tok, text):
    ids = tok.encode(text).ids
    decoded = tok.decode(ids, skip_special_tokens=False)
    assert decoded.encode("utf-8") == text.encode("utf-8")


def test_unseen_text_needs_no_unknown_token(tok):
    text = "Ελληνικά, русский, العربية, हिन्दी, 한국어 \x00\x7f"
    ids = tok.encode(text).ids
    assert UNK_ID not in ids
    assert tok.decode(ids) == text


def test_minimind_markers_become_single_special_ids(tok):
    ids = tok.encode("<s>你好</s> <s>world</s>").ids
    assert ids.count(BOS_ID) == 2 and ids.count(EOS_ID) == 2
    assert ids[0] == BOS_ID and ids[-1] == EOS_ID
    # no byte of "<s>" is encoded as text
    assert tok.token_to_id("<") not in ids


def test_decode_puts_no_space_after_special_tokens(tok):
    ids = [BOS_ID] + tok.encode("hello").ids + [EOS_ID, BOS_ID] + tok.encode("你好").ids
    assert tok.decode(ids, skip_special_tokens=False) == "<s>hello</s><s>你好"
    assert tok.decode(ids) == "hello你好"


def test_transformers_tokenizer_gives_same_ids(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    save_tokenizer(tok, tmp_path / "tokenizer.json")
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert (hf.unk_token_id, hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (0, 1, 2, 0)
    for text in ROUND_TRIP_TEXTS:
        ids = tok.encode(text).ids
        assert hf(text, add_special_tokens=False).input_ids == ids
        assert hf(text).input_ids == ids  # no <s> or </s> added behind the caller's back
        assert hf.decode(ids) == text


def test_save_and_load_keep_the_fingerprint(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path)  # a directory is filled with tokenizer.json
    assert path == tmp_path / "tokenizer.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]  # no temp files
    reloaded = load_tokenizer(tmp_path)
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tok)
    assert reloaded.encode("中文 text").ids == tok.encode("中文 text").ids
    other = train_tokenizer(CHINESE, vocab_size=300)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tok)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=["022", "002", "077"])
def test_saved_files_get_the_permissions_that_open_gives(tok, tmp_path, umask):
    old_umask = os.umask(umask)
    try:
        save_tokenizer(tok, tmp_path)
        (tmp_path / "by_open.txt").write_text("x")  # the reference: a plain open()
    finally:
        os.umask(old_umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["by_open.txt"] == 0o666 & ~umask
    assert set(modes.values()) == {0o666 & ~umask}, modes


def test_the_text_is_on_disk_before_the_rename_makes_it_visible(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "tokenizer.json"
    write_text_atomic(path, "新的 text")
    file_inode, dir_inode = path.stat().st_ino, tmp_path.stat().st_ino
    # the file's data, then the rename, then the directory entry the rename changed
    assert events == [("fsync", file_inode), ("replace", file_inode), ("fsync", dir_inode)]
    assert path.read_text(encoding="utf-8") == "新的 text"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "new text with a lone surrogate \ud800")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def bytes_to_unicode():
    """GPT-2's table from bytes to the printable characters byte-level BPE writes them as:
    printable Latin-1 bytes stand for themselves, the rest map to chr(256 + n) in order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_minimind_style_tokenizer(folder):
    """A tokenizer.json laid out like MiniMind's model/tokenizer.json: <unk>, <s>, </s> as added
    special tokens 0-2 and in the vocab, the 256 byte symbols, then merges (written as
    "a b" strings, the older format), ByteLevel pre-tokenizer and decoder."""
    byte_symbols = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e"), ("Ġ", "the")]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + byte_symbols)}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIAL_TOKENS)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    config = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
              "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
              "decoder": {**byte_level, "add_prefix_space": True},
              "model": {"type": "BPE", "dropout": None, "unk_token": None,
                        "continuing_subword_prefix": None, "end_of_word_suffix": None,
                        "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                        "merges": [f"{a} {b}" for a, b in merges]}}
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(config, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "pad_token": "<unk>", "add_bos_token": False}))
    return vocab


def test_minimind_tokenizer_folder_loads_and_works(tmp_path):
    vocab = write_minimind_style_tokenizer(tmp_path / "model")
    tok = load_tokenizer(tmp_path / "model")
    # "the" merges to one token; " the" to "Ġthe"; the special markers to 1 and 2
    assert tok.encode("<s>the the</s>").ids == [1, vocab["the"], vocab["Ġthe"], 2]
    text = "<s>中文 and emoji 😀</s>"
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_load_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.py") as missing:
        load_tokenizer(tmp_path / "nothing.json")
    assert "nothing.json" in str(missing.value)
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path)  # a directory without tokenizer.json

    not_json = tmp_path / "bad.json"
    not_json.write_text("this is not a tokenizer")
    with pytest.raises(ValueError, match="bad.json") as bad:
        load_tokenizer(not_json)
    assert "\n" not in str(bad.value)

    # a valid tokenizer.json whose ids 0, 1, 2 are ordinary tokens
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    plain = Tokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    plain.train_from_iterator(CHINESE, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    plain.save(str(tmp_path / "plain.json"))
    with pytest.raises(ValueError, match="ids 0, 1, 2") as wrong:
        load_tokenizer(tmp_path / "plain.json")
    assert "plain.json" in str(wrong.value) and "\n" not in str(wrong.value)


def test_vocab_too_small_for_the_bytes_is_refused():
    with pytest.raises(ValueError, match="259"):
        train_tokenizer(CHINESE, vocab_size=200)


def test_sample_is_spread_over_the_corpus_and_capped():
    texts = [f"document {i:04d}" for i in range(1000)]  # 13 bytes each, 13,000 in all
    train, held_out = sample_texts(texts, total_bytes=13_000, max_bytes=1_300,
                                   held_out_every=5)
    # 4 of 5 sampled documents are for training: stride 13,000 * 4/5 / 1,300 = 8, so documents
    # 0, 8, 16, ... are taken, and every 5th of those (32, 72, ...) is held out
    assert train[:4] == ["document 0000", "document 0008", "document 0016", "document 0024"]
    assert held_out[:2] == ["document 0032", "document 0072"]
    assert sum(map(len, train)) == 1_300  # 100 documents: the budget, reached at the end
    assert texts.index(train[-1]) > 900
    assert not set(train) & set(held_out)


def test_sample_is_cleaned_as_dataset_cleans_it(tmp_path):
    data = tmp_path / "corpus.jsonl"
    texts = ["a bell\x07 rings in this line of text", "tiny", "========== heading underline"]
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    train, held_out = read_sample([str(data)], max_bytes=10_000, verbose=False)
    assert train + held_out == ["a bell rings in this line of text", "=== heading underline"]


def test_cli_trains_saves_and_reports_compression(tmp_path, capsys):
    data = tmp_path / "corpus.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False)
                              for t in CHINESE * 30 + ROUND_TRIP_TEXTS[:4] * 30))
    main(["--data_path", str(data), "--vocab_size", "300", "--out",
          str(tmp_path / "t" / "tok.json")])
    out = capsys.readouterr().out
    assert "bytes/token" in out and "chars/token" in out
    tok = load_tokenizer(tmp_path / "t" / "tok.json")
    assert tok.get_vocab_size() == 300
    assert (tmp_path / "t" / "tokenizer_config.json").is_file()


def test_cli_error_is_one_line_without_traceback(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        # --data: the name --data_path had here before, which still works
        main(["--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "t.json")])
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and "missing.jsonl" in message and "\n" not in message
