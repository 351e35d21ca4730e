"""Turn the resume directory of an --fsdp run (one shard per rank, fsdp.py) into MiniMind's
single weights file, offline: one process, no GPU, no process group.

    python scripts/dcp_to_pth.py out/pretrain_512_resume out/pretrain_512.pth

The run writes that weights file itself at every save; this is for a directory copied off
a cluster, or the state of a run whose weights file was lost.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the core, from any directory
from checkpoint import save_torch  # noqa: E402
from fsdp import RUN_FILE, read_shards, tie_head  # noqa: E402


def convert(shards_dir, out_path):
    """The weights of shards_dir, written to out_path with the tied embedding stored once;
    returns the number of tensors."""
    shards_dir = Path(shards_dir)
    if not (shards_dir / ".metadata").is_file() or not (shards_dir / RUN_FILE).is_file():
        raise ValueError(f"{shards_dir} is not the resume directory of an --fsdp run (no "
                         f".metadata or {RUN_FILE} in it); pass OUT_DIR/pretrain_*_resume")
    weights = tie_head(read_shards(shards_dir)["model"])
    save_torch({k: v.contiguous() for k, v in weights.items()}, out_path)
    return len(weights)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shards_dir", help="OUT_DIR/pretrain_{dim}{_moe}_resume, written by --fsdp")
    p.add_argument("out", help="the .pth to write (MiniMind's keys)")
    args = p.parse_args(argv)
    try:
        n = convert(args.shards_dir, args.out)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {args.out}: {n} tensors")


if __name__ == "__main__":
    main()
