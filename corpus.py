"""Raw text: where it comes from, and how it is cleaned. The first two steps of the data
pipeline (prepare.py runs the rest, dedup.py removes copies):

    1. read   .jsonl / .txt files (gzip too), streaming, line by line, so a corpus larger than
              memory never has to fit in it; or the built-in corpus, text that ships with
              Python (MyLLM trains without downloading anything)
    2. clean  Windows and old Mac line ends made plain newlines (not counted: such a file is
              not dirty), then counted rules, in this order: control characters, runs of
              spaces or of one symbol, documents that are too short or mostly symbols

A malformed line (not JSON, not UTF-8, no text field) stops with its file and line number,
or with skip_bad_lines is skipped and counted.
"""

import ast
import gzip
import hashlib
import json
import os
import re
import sysconfig
import zlib
from glob import glob
from pathlib import Path

import numpy as np
import pydoc_data.topics


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


def as_sources(sources):
    """A list of sources from None (the built-in corpus), one path or glob, or a list."""
    if sources is None:
        return ["builtin"]
    return [sources] if isinstance(sources, (str, Path)) else list(sources)


def expand_paths(sources):
    """Expand a source list (paths, globs, 'builtin') into files in sorted order per glob."""
    paths = []
    for source in as_sources(sources):
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


def read_file(path, text_field="text", skip_bad_lines=False, counts=None):
    """Yield the documents of one file, streaming: a .jsonl file gives the text_field of every
    line, a .txt file its paragraphs (separated by blank lines); either may be gzipped. A bad
    line stops with its file and line number, or with skip_bad_lines is counted in
    counts["bad_lines"] and skipped."""
    path = Path(path)
    zipped = path.name.endswith(".gz")
    kind = check_file_type(path, Path(path.name[:-3] if zipped else path.name).suffix)
    try:
        with (gzip.open if zipped else open)(path, "rb") as f:
            if kind == ".txt":
                yield from _paragraphs(_decoded_lines(enumerate(f, 1), path, skip_bad_lines,
                                                      counts))
                return
            for _, text in jsonl_texts(enumerate(f, 1), path, text_field, skip_bad_lines,
                                       counts):
                yield text
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: damaged gzip file ({e}); recompress it or pass the "
                         f"uncompressed file") from None


def jsonl_texts(numbered_lines, path, text_field="text", skip_bad_lines=False, counts=None):
    """(line number, text) of each JSON line among (line number, bytes) pairs of a file;
    blank lines are skipped, bad ones stop or are counted (read_file)."""
    for lineno, line in _decoded_lines(numbered_lines, path, skip_bad_lines, counts):
        if not line.strip():
            continue
        text, problem = text_of(line, text_field)
        if problem is None:
            yield lineno, text
        else:
            bad_line(f"{path}:{lineno}: {problem}", skip_bad_lines, counts)


def text_of(line, text_field):
    """(the text of one JSON line, None), or (None, what is wrong with the line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"malformed JSON ({e.msg}, column {e.colno}); fix the line"
    if not isinstance(record, dict) or text_field not in record:
        keys = list(record)[:5] if isinstance(record, dict) else type(record).__name__
        return None, (f"no '{text_field}' field (found {keys}); pass --text_field with the "
                      "field that holds the text")
    if not isinstance(record[text_field], str):
        return None, f"field '{text_field}' is {type(record[text_field]).__name__}, not text"
    return record[text_field], None


def _decoded_lines(numbered_lines, path, skip_bad_lines, counts):
    """(line number, text) of every line that is valid UTF-8, from (line number, bytes)."""
    for lineno, raw in numbered_lines:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            bad_line(f"{path}:{lineno}: bytes that are not UTF-8 ({e.reason} at byte {e.start} "
                     "of the line); convert the file to UTF-8", skip_bad_lines, counts)
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
REWRITES = (  # the rules that change a text, in order; a rule "fires" when it changes it
    ("control_chars", lambda text: CONTROL_CHARS.sub("", text)),
    ("space_runs", lambda text: BLANK_LINES.sub("\n\n", SPACE_RUN.sub(" ", text))),
    ("symbol_runs", lambda text: SYMBOL_RUN.sub(r"\1\1\1", text)),  # ====== -> ===
)


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


def clean_text(text, min_chars=MIN_CHARS, markers=()):
    """Apply the cleaning rules in order; returns (cleaned text, or None if the document is
    dropped, and the names of the rules that fired). markers: strings that are not content
    when measuring a document (MiniMind's <s> and </s>; tokenizer.SPECIAL_TOKENS)."""
    # Windows (\r\n) and old Mac (\r) line ends become \n before the rules, and are not
    # counted: the text loses nothing, and control_chars counts only the documents that had
    # control characters removed (\r is one, and that rule would delete it)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    fired = []
    for rule, rewrite in REWRITES:
        new = rewrite(text)
        if new != text:
            fired.append(rule)
            text = new
    text = text.strip()
    content = re.sub("|".join(map(re.escape, markers)), "", text) if markers else text
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


def check_file_type(path, kind):
    if kind not in (".jsonl", ".txt"):
        raise ValueError(f"{path}: unsupported file type; use .jsonl or .txt (or .jsonl.gz, "
                         f".txt.gz)")
    return kind


def bad_line(message, skip_bad_lines, counts):
    """Stop with message and the way past it, or count the line as skipped."""
    if not skip_bad_lines:
        raise ValueError(f"{message}, or pass --skip_bad_lines to skip and count such lines")
    if counts is not None:
        counts["bad_lines"] += 1
