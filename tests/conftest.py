"""Shared test settings."""

import sys
from pathlib import Path

import torch

# the extras in scripts/ import as top-level modules, as they do when run as scripts
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

# The tests use tiny models, for which a second thread only adds overhead; on a busy
# 2-core machine, threads competing with other processes made steps 20x slower.
torch.set_num_threads(1)
