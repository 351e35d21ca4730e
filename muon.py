"""Muon for the hidden weight matrices, AdamW for the rest, in one optimizer.

Muon ("MomentUm Orthogonalized by Newton-Schulz", Keller Jordan, 2024: the blog post
kellerjordan.github.io/posts/muon and the repository github.com/KellerJordan/Muon) takes
the Nesterov momentum of a weight matrix's gradient and replaces it by the nearest
orthogonal matrix: the same singular vectors, every singular value near 1. A raw gradient
is dominated by a few directions; the orthogonalised step moves every direction of the
matrix by the same amount, and then a larger learning rate works.

Only hidden matrices are for Muon. The embedding (which is also the output head here: they
are tied), the RMSNorm gains and the MoE router get AdamW; they sit in groups of the same
optimizer (use_muon False), so the loss scaler, the LR loop and the resume file (its
state_dict) see a single object. Under DDP every rank holds the same averaged gradient
before step(), so each rank computes the same update on its own: correct as it is (the
reference spreads the matrices over the ranks only to save time).

step_where, at the end, is how training steps any of its optimizers (Muon, AdamW): a step
whose loss or gradient is not finite is skipped, decided on the device.
"""

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def newton_schulz(G, steps: int = 5, eps: float = 1e-7, dtype=torch.float32):
    """An approximately orthogonal matrix with G's singular vectors: U S' V^T for G = U S V^T,
    each S' about 1. Each iteration maps every singular value x to a*x + b*x^3 + c*x^5; the
    reference's quintic coefficients make small values grow fast (slope 3.4 at 0), at the
    price of settling around 1 (roughly 0.7 to 1.2) rather than exactly on it. dtype: the
    matmuls' precision; bfloat16 (the reference's) is several times faster where the hardware
    has bf16 units (docs/quality.md, "Why the defaults are what they are", has the figures),
    and the singular values land around 1 all the same (tests/test_muon.py)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype)
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T  # (r, c) with r <= c: X @ X.T is the smaller square
    X = X / (X.norm() + eps)  # spectral norm <= Frobenius norm = 1: inside the iteration's range
    for _ in range(steps):
        A = X @ X.T  # (r, r)
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def unless_skipped(value, apply, skipped_value=0.0):
    """value; on a skipped step (apply, a 0-dim bool on the device, is False) skipped_value
    instead, chosen on the device. apply None: no step is skipped."""
    return value if apply is None else torch.where(apply, value, skipped_value)


def step_dtype(device):
    """The AdamW step count's dtype: float64, so that the bias correction's power is taken in
    double precision, as Python's `beta ** step` on an int was; MPS has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class Muon(torch.optim.Optimizer):
    """param_groups with use_muon True: Muon (lr, momentum, weight_decay); with use_muon
    False: AdamW (lr, betas, eps, weight_decay). Parameters without a gradient are skipped.
    ns_dtype: newton_schulz's precision; train_pretrain passes bfloat16 to a bf16 run. Not
    part of the saved state: a resumed run takes its own precision's.

    A bad step is skipped on the device, as the fused AdamW kernel skips one: set
    `found_inf`, a 0-dim float tensor on the parameters' device (1.0: skip), before step()
    and the step leaves every weight and every piece of state as it was. Nothing reads the
    flag on the host, which would make it wait for the GPU every step."""

    supports_found_inf = True  # step_where (below) sets found_inf when this is True

    def __init__(self, param_groups, momentum=0.95, betas=(0.9, 0.95), eps=1e-8,
                 ns_dtype=torch.float32):
        super().__init__(param_groups, dict(momentum=momentum, betas=betas, eps=eps,
                                            weight_decay=0.0))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        found_inf = getattr(self, "found_inf", None)  # set only for this call, by step_where
        apply = None if found_inf is None else found_inf == 0  # a device bool, not read here
        for group in self.param_groups:
            update = self.muon_update if group["use_muon"] else self.adamw_update
            for p in group["params"]:
                if p.grad is None:
                    continue
                if apply is not None:
                    # A skipped step's gradient may hold NaN or inf, and 0 * NaN is NaN: it
                    # is zeroed in place (it is discarded after the step anyway). Then every
                    # state update below moves by a weight that is 0 on a skipped step.
                    p.grad.masked_fill_(~apply, 0.0)
                decay = 1 - group["lr"] * group["weight_decay"]  # decoupled weight decay
                p.mul_(unless_skipped(decay, apply, 1.0))
                p.add_(unless_skipped(update(p, group, apply), apply), alpha=-group["lr"])

    def muon_update(self, p, group, apply):
        state, beta = self.state[p], group["momentum"]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, unless_skipped(1 - beta, apply))  # beta * buf + (1 - beta) * grad
        grad, nesterov = p.grad, p.grad.lerp(buf, beta)  # look one momentum step ahead
        if isinstance(p, DTensor):
            # a shard of the matrix (--fsdp, fsdp.py): every rank orthogonalises the whole
            # matrix and keeps its own part (on a shard, any() below would see only a part)
            grad, nesterov = grad.full_tensor(), nesterov.full_tensor()
        # weights are (out, in); an orthogonal (r, c) matrix has RMS 1/sqrt(max(r, c)), and
        # the reference scales tall ones up by sqrt(r / c), as the lr of 0.02 assumes
        rows, cols = p.shape
        # an MoE expert that got no token has a zero gradient; orthogonalising its decaying
        # momentum would still move it a full step, so it does not move (decided on the device)
        moved = grad.ne(0).any()
        orthogonal = newton_schulz(nesterov, dtype=self.ns_dtype).to(p.dtype)
        update = orthogonal * max(1.0, rows / cols) ** 0.5 * moved
        if isinstance(p, DTensor):  # this rank's part, cut where p's shard is: no message
            update = distribute_tensor(update, p.device_mesh, p.placements, src_data_rank=None)
        return update

    def adamw_update(self, p, group, apply):
        state, (beta1, beta2) = self.state[p], group["betas"]
        if not state:
            # the step count is a tensor on the parameter's device, so that a skipped step
            # can leave it as it was without the host reading the flag
            state.update(step=torch.zeros((), dtype=step_dtype(p.device), device=p.device),
                         exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        state["step"] += unless_skipped(1.0, apply)
        state["exp_avg"].lerp_(p.grad, unless_skipped(1 - beta1, apply))
        state["exp_avg_sq"].lerp_(p.grad.square(), unless_skipped(1 - beta2, apply))
        # bias correction: both averages start at zero. (A first step that is skipped leaves
        # the count at 0: at least 1 here keeps 0 / 0 out of the update it discards.)
        step = state["step"].clamp(min=1)
        mean = state["exp_avg"] / (1 - beta1 ** step)
        mean_square = state["exp_avg_sq"] / (1 - beta2 ** step)
        return mean / (mean_square.sqrt() + group["eps"])

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        # The AdamW step count goes to its parameter's device and dtype: a resume file is
        # loaded onto the CPU, and one written before the count was a tensor holds an int.
        for p, state in self.state.items():
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=step_dtype(p.device),
                                                device=p.device)


def step_where(optimizer, apply):
    """optimizer.step() where the device bool `apply` is True, a no-op where it is False.

    The fused AdamW kernel takes a `found_inf` flag on the device, the way GradScaler
    passes it: set to 1, the kernel leaves weights and moments untouched and the step
    count is put back; Muon honours the same flag. Other optimizers (AdamW without the
    fused kernel, on devices other than CUDA and CPU) have the host read the flag.
    """
    if not (optimizer.defaults.get("fused") or getattr(optimizer, "supports_found_inf", False)):
        if apply:
            optimizer.step()
        return
    optimizer.found_inf = (~apply).float()  # float32, as the kernel reads it
    try:
        optimizer.step()
    finally:  # a flag left behind would skip or apply a later step by this one's verdict
        del optimizer.found_inf


def muon_param_groups(model, learning_rate, muon_lr, weight_decay):
    """Muon for the 2-D weights inside the blocks (attention wq wk wv wo, feed-forward and
    expert w1 w2 w3), AdamW for the rest: embedding/head and MoE router with weight decay,
    norm gains without. Muon's weight decay is 0, the reference's default."""
    hidden, other_matrices, gains = [], [], []
    for name, p in model.named_parameters():  # the tied head is listed once, as the embedding
        if p.dim() < 2:
            gains.append(p)
        elif name.startswith("layers.") and ".gate." not in name:
            hidden.append(p)
        else:
            other_matrices.append(p)
    return [{"params": hidden, "lr": muon_lr, "weight_decay": 0.0, "use_muon": True},
            {"params": other_matrices, "lr": learning_rate, "weight_decay": weight_decay,
             "use_muon": False},
            {"params": gains, "lr": learning_rate, "weight_decay": 0.0, "use_muon": False}]
