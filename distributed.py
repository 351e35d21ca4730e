"""Training on several processes (torchrun): the ranks, the process group, a stop signal all
ranks agree on, and the check that they train on the same data.

Under torchrun every process trains a copy of the model on its own share of each batch
(DistributedDataParallel averages the gradients), so every collective call must happen on
every rank, in the same order: whatever decides the run's course (stop now, skip a step)
is agreed on by an all-reduce, never by one rank alone.
"""

import datetime
import gc
import os
import signal

import torch
import torch.distributed as dist

from device import allow_tf32, pick_device


def ranks():
    """(rank, local_rank, world_size), as torchrun sets them; (0, 0, 1) in a plain process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def setup_distributed(device_arg, local_rank, world_size, sharded=False):
    """The device; under torchrun also the process group: NCCL moves gradients between GPUs,
    gloo between CPU processes. sharded (--fsdp): a group even of one rank, which sharding
    needs (torchrun --nproc_per_node 1). Called once the data is ready, so that preparing a
    large corpus never meets the group's timeout (10 minutes for NCCL)."""
    device = pick_device(device_arg)
    if device.type == "cuda" and (world_size > 1 or device.index is None):
        device = torch.device("cuda", local_rank)  # one GPU per process; set_device needs an index
    if device.type == "cuda":
        torch.cuda.set_device(device)
        allow_tf32()
    if world_size > 1 or (sharded and "RANK" in os.environ):
        backend = "nccl" if device.type == "cuda" else "gloo"
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        one_machine = os.environ.get("LOCAL_WORLD_SIZE") == str(world_size)
        if attempt != "0" and one_machine and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") \
                == "True":
            # torchrun --max-restarts: torchrun's key-value store still holds the failed
            # attempt's addresses, which a restarted rank may read and fail to reach
            # (PyTorch issue 167288); this attempt's keys go under a prefix of their own.
            # One machine only: each machine counts its own restarts, so on several the
            # counts (and the prefixes) could differ.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                                  world_size, is_master=False,
                                  timeout=datetime.timedelta(minutes=10))
            dist.init_process_group(backend, store=dist.PrefixStore(f"attempt{attempt}/", store),
                                    rank=int(os.environ["RANK"]), world_size=world_size)
        else:
            dist.init_process_group(backend)
    return device


def teardown(run):
    """Leave the process group, if there is one. DDP's reducer keeps the work of its last
    all-reduce: it is freed first, while the group and the interpreter are alive (left to
    the exit, that can abort the process)."""
    if dist.is_initialized():
        if run is not None:
            run.model = None
            gc.collect()
        dist.destroy_process_group()


class StopSignal:
    """SIGTERM (a scheduler, torchrun) or SIGINT (Ctrl-C) while training: remembered, so the
    loop finishes its step, saves and exits (installed for the `with` block only).

    Under torchrun every rank must stop at the same step. The ranks' flags are combined by
    an all-reduce on a gloo group of their own: host memory, even when training on GPUs. It
    is launched after one step and read after the next, by which time it is long done, so
    the host never waits for it or for the GPU; a signal stops the run one step later.
    """

    def __init__(self, world_size=1):
        self.signum, self.old_handlers = None, {}
        self.group = dist.new_group(backend="gloo") if world_size > 1 else None
        self.pending = None  # (flag, work) of the all-reduce launched after the last step

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.old_handlers[sig] = signal.signal(sig, self.handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self.old_handlers.items():
            signal.signal(sig, handler)
        # every rank launched it, so every rank completes it; not on the way out of an error,
        # where a rank that died would make the wait last until the group's timeout
        if self.pending is not None and exc[0] is None:
            self.pending[1].wait()

    def agreed(self):
        """The name of the signal that stops the run after this step, or None; under
        torchrun the same answer on every rank at every step."""
        signum = self.signum
        if self.group is not None:
            signum = 0
            if self.pending is not None:  # the signal of some rank, as of the step before
                flag, work = self.pending
                work.wait()
                signum, self.pending = int(flag.item()), None
            if not signum:
                flag = torch.tensor([self.signum or 0])  # on the CPU, for the gloo group
                work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group,
                                       async_op=True)
                self.pending = (flag, work)
        return signal.Signals(signum).name if signum else None


def check_same_data(fingerprint, world_size):
    """Every rank must train on the same prepared data (on several machines each prepares
    its own copy, from its own files and tokenizer)."""
    seen = [None] * world_size
    dist.all_gather_object(seen, fingerprint)
    if len(set(seen)) > 1:
        raise ValueError(f"the ranks prepared different data ({', '.join(sorted(set(seen)))}); "
                         "give every machine the same --data_path files and --tokenizer, or "
                         "put --out_dir on a filesystem they share")
