"""train_pretrain.py with one fault injected, for the reliability tests that need real
processes (torchrun, SIGKILL). Run it as the script itself, with the same flags:

    FAULT=none              no fault: the run to compare with
    FAULT=slow_prepare:8    the data preparation takes 8 s longer, and the process group
                            gets a 5 s timeout: preparation must not be under that timeout
    FAULT=crash:1:5         rank 1 raises in its 5th micro-step (only in torchrun's first
                            attempt, so that a restart runs clean)
    FAULT=kill:1:5          the same, but rank 1 is killed with SIGKILL
    FAULT=nan:1:5           rank 1's loss is NaN in its 5th micro-step
    FAULT=kill_in_save:3    SIGKILL in the middle of the 3rd torch.save, half the file written
    FAULT=kill_after_shards:2  --fsdp: rank 0 is killed once the 2nd save's shards are
                            written, before their directory takes the resume directory's name
    FAULT=kill_in_prepare   SIGKILL during data preparation: the token files written, their
                            index files not yet
    FAULT=count_reads       no fault: every read of a tensor's value on the host (item,
                            bool, int, float, tolist) is counted per optimizer step, and
                            written to OUT_DIR/reads_rank<r>.json as {step: [(device, kind)]}

At the end every rank writes its weights to OUT_DIR/rank<r>.pt, so that a test can check
that the ranks still agree.
"""

import datetime
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import fsdp  # noqa: E402
import prepare  # noqa: E402
from fsdp import is_sharded  # noqa: E402
import train_pretrain  # noqa: E402

RANK = int(os.environ.get("RANK", 0))
FIRST_ATTEMPT = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"


REAL_LOSS = train_pretrain.masked_lm_loss


def on_micro_step(n, fault):
    """A loss function that applies fault(loss) in this process's n-th micro-step."""
    calls = {"n": 0}

    def loss_fn(*a):
        calls["n"] += 1
        loss = REAL_LOSS(*a)
        return fault(loss) if calls["n"] == n else loss
    return loss_fn


def crash(loss):
    raise RuntimeError(f"injected failure on rank {RANK} at {time.time():.3f}")


def killed(loss):
    os.kill(os.getpid(), signal.SIGKILL)


def inject(name, *numbers):
    if name == "slow_prepare":
        real_prepare, real_init = prepare.prepare, dist.init_process_group

        def slow_prepare(*a, **kw):
            if not kw.get("wait"):
                time.sleep(numbers[0])
            return real_prepare(*a, **kw)
        prepare.prepare = slow_prepare
        dist.init_process_group = lambda *a, **kw: real_init(
            *a, **kw, timeout=datetime.timedelta(seconds=5))
    elif name in ("crash", "kill", "nan"):
        rank, n = numbers
        fault = {"crash": crash, "kill": killed, "nan": lambda loss: loss * float("nan")}[name]
        if RANK == rank and (FIRST_ATTEMPT or name == "nan"):
            train_pretrain.masked_lm_loss = on_micro_step(n, fault)
    elif name == "kill_in_save":
        real_save, saves = torch.save, {"n": 0}

        def killed_save(obj, f):
            saves["n"] += 1
            if saves["n"] == numbers[0]:
                f.write(b"half of a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f)
        torch.save = killed_save
    elif name == "kill_after_shards":
        real_save_shards, calls = fsdp.save_shards, {"n": 0}

        def save_then_die(*a, **kw):  # the shards are written, the directory not yet renamed
            real_save_shards(*a, **kw)
            calls["n"] += 1
            if calls["n"] == numbers[0] and RANK == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        fsdp.save_shards = save_then_die
    elif name == "kill_in_prepare":  # _write_sequence runs once train.bin holds the tokens
        prepare._write_sequence = lambda *a: killed(None)
    elif name == "count_reads":
        count_reads()
    elif name != "none":
        raise SystemExit(f"FAULT={name}: unknown fault")


READS = {}  # optimizer step (1-based; 0: before the first) -> [(device, method), ...]


def count_reads():
    real_step, step = train_pretrain.train_step, {"n": 0}

    def counted_step(*a, **kw):
        step["n"] += 1  # the reads of a step's train_step and after_step count for it
        return real_step(*a, **kw)
    train_pretrain.train_step = counted_step
    for method in ("item", "tolist", "__bool__", "__int__", "__float__"):
        real = getattr(torch.Tensor, method)

        def read(self, *a, _real=real, _method=method):
            READS.setdefault(step["n"], []).append((self.device.type, _method))
            return _real(self, *a)
        setattr(torch.Tensor, method, read)


if __name__ == "__main__":
    name, *numbers = os.environ["FAULT"].split(":")
    inject(name, *map(int, numbers))
    result = train_pretrain.main()  # exits with its one-line message on an error
    out_dir = Path(train_pretrain.parse_args().out_dir)
    if READS:
        (out_dir / f"reads_rank{RANK}.json").write_text(json.dumps(READS))
    if not is_sharded(result["model"]):  # a sharded run's weights file is the whole model
        torch.save(result["model"].state_dict(), out_dir / f"rank{RANK}.pt")
