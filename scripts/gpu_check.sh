#!/usr/bin/env bash
# Every GPU figure of the docs in one go, written to one file, on a machine with GPUs:
#
#     bash scripts/gpu_check.sh [OUT_FILE]        # default: gpu_check.txt
#
# 1. tests/test_gpu.py (CUDA graphs, bf16/fp16 steps, no host sync, torchrun and NCCL, MoE);
# 2. bench.py's training and decoding rows at MiniMind's 512 x 8, compiled;
# 3. a short real train_pretrain.py under torchrun on every GPU present, with DDP and with
#    --fsdp (NCCL, also for a single GPU: --fsdp makes a process group of one rank), each
#    giving its tokens/s, MFU, and memory plan against the peak it measured.
# It takes about 5 minutes on one H100: short enough to run twice in a quarter of an hour.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check.txt}
WORK=$(mktemp -d)
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then
    echo "error: no CUDA GPU here; run this on a machine with one" >&2
    exit 1
fi
{
    echo "# gpu_check, $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch; print('torch', torch.__version__, '| CUDA', torch.version.cuda)"

    echo; echo "## tests/test_gpu.py"
    timeout 120 python -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -4

    echo; echo "## bench.py: training step and decoding, 512 x 8, compiled"
    timeout 120 python scripts/bench.py --tasks train decode --compile --batch_size 32 \
        --steps 10 --warmup 3 --repeats 3 --new_tokens 128 2>&1 | grep -v "^\s*$" | tail -12

    for MODE in ddp fsdp; do
        echo; echo "## train_pretrain.py, torchrun on $GPUS GPU(s), $MODE"
        FLAGS=(--dim 512 --n_layers 8 --max_seq_len 512 --batch_size 32 --accumulation_steps 1
               --max_steps 60 --log_interval 20 --eval_interval 1000 --no_report
               --out_dir "$WORK/$MODE")
        [ "$MODE" = fsdp ] && FLAGS+=(--fsdp)
        timeout 150 torchrun --standalone --nproc_per_node "$GPUS" train_pretrain.py \
            "${FLAGS[@]}" 2>&1 | tr '\r' '\n' \
            | grep -E "memory plan|^  [a-zA-Z]|memory:|finished|error" | grep -v "^  \S*\s*$"
        python - "$WORK/$MODE" <<'EOF'
import json, sys
from pathlib import Path
logs = sorted(Path(sys.argv[1], "logs").glob("*.jsonl"))
train = [json.loads(line) for line in logs[-1].read_text().splitlines()
         if '"kind": "train"' in line] if logs else []
for r in train[1:]:  # the first step's record holds compilation and warm-up
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
    print(f"  step {r['step']}: {r['tokens_per_sec']:,.0f} tokens/s, MFU {mfu}, "
          f"loss {r['loss']:.3f}")
EOF
    done
} 2>&1 | tee "$OUT"
rm -rf "$WORK"
