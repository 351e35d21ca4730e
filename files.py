"""How MyLLM writes a file: atomically, so that a crash or a full disk never leaves half
of one where a reader (a resumed run, another rank) would take it for the whole."""

import os
from pathlib import Path


def write_atomic(path, write):
    """Write a file so that a reader sees the old file or the whole new one, also after a
    crash or a full disk: write(f) fills a hidden temporary file beside `path` (opened "wb"),
    which is fsynced, renamed over `path`, and the rename made durable by an fsync of the
    directory (POSIX only: Windows cannot open a directory). A failure leaves no temporary;
    a process killed mid-write leaves one, of a fixed name, which the next write replaces.
    The file gets the permissions open() would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the kernel applies umask
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_text_atomic(path, text):
    """write_atomic for UTF-8 text."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))
