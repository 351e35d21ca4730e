"""How MyLLM writes a file: atomically, so that a crash or a full disk never leaves half
of one where a reader (a resumed run, another rank) would take it for the whole; and how
one process of a job, on whichever node, claims the building of a shared file."""

import json
import os
import socket
import threading
import time
from contextlib import contextmanager
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


def process_alive(pid):
    """Whether process pid (of this machine) exists; assumed so where that cannot be asked."""
    if os.name != "posix":  # os.kill(pid, 0) would send Ctrl-C on Windows
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours
        return True
    return True


def claim(marker):
    """(True, None) where this process now holds `marker`, created exclusively in a folder
    that every node of a job may share: it builds what the marker names while `holding` it.
    (False, holder) where another process holds it, holder being {"host", "pid"}: wait for
    what it builds. A stale marker is taken over: one of a dead process on this machine, or
    one no holder has touched for STALE_SECONDS (holding touches it every few seconds)."""
    marker, me = Path(marker), {"host": socket.gethostname(), "pid": os.getpid()}
    marker.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            try:
                holder, age = json.loads(marker.read_text()), time.time() - marker.stat().st_mtime
            except FileNotFoundError:
                continue  # deleted meanwhile: try again
            except ValueError:  # created, not yet written: wait, unless its writer died
                holder, age = {}, time.time() - marker.stat().st_mtime
                if age < STALE_SECONDS:
                    time.sleep(0.1)
                    continue
            alive = (process_alive(holder["pid"]) if holder.get("host") == me["host"]
                     else age < STALE_SECONDS)
            if holder and alive:
                return False, holder
            marker.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return True, None


STALE_SECONDS = 120  # a marker untouched this long has lost its holder (clocks may differ)


@contextmanager
def holding(marker, every=10.0):
    """While the block runs, touch the claimed marker every `every` seconds, so that
    processes on other machines can tell a live holder from a dead one; then delete it."""
    stop = threading.Event()

    def touch():
        while not stop.wait(every):
            try:
                os.utime(marker)
            except OSError:
                return
    toucher = threading.Thread(target=touch, daemon=True)
    toucher.start()
    try:
        yield
    finally:
        stop.set()
        toucher.join()
        Path(marker).unlink(missing_ok=True)
