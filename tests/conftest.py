"""Shared test settings."""

import torch

# The tests use tiny models, for which a second thread only adds overhead; on a busy
# 2-core machine, threads competing with other processes made steps 20x slower.
torch.set_num_threads(1)
