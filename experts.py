"""What training does for the MoE routers after each optimizer step (model.py's MoEGate
counts the slots it routes): the counts are summed over the ranks, nudge every sigmoid
router's balancing bias (DeepSeek-V3), and add up for the log, where the share of tokens
per expert and its spread show whether the experts share the work."""

import torch
import torch.distributed as dist


def moe_gates(model):
    """The routers (model.MoEGate) of a Transformer's MoE layers."""
    return [layer.feed_forward.gate for layer in model.layers if layer.is_moe]


def balance_experts(model, applied, distributed: bool):
    """The slots each routed expert got in this step (MoE layers, E), summed over ranks, or
    None for a dense model. Where the step was applied (applied: a device bool), each
    sigmoid router's bias moves by them; a skipped step counts as no load, which moves no
    bias. Every rank sees the same sums, so the biases stay equal. No host sync."""
    gates = [g for g in moe_gates(model) if g.load is not None]
    if not gates:
        return None
    load = torch.stack([gate.load for gate in gates])
    if distributed:
        dist.all_reduce(load)
    for gate, layer_load in zip(gates, load):
        gate.load = None
        if gate.sigmoid and gate.bias_speed:
            gate.update_bias(layer_load * applied)  # all zero: sign(0) = 0, nothing moves
    return load


def load_summary(load):
    """{"expert_share": per layer, each expert's share of the slots; "expert_spread": the
    coefficient of variation of the shares (their std / mean; 0 when even), the layers'
    mean} of load (layers, E) summed over a log interval."""
    share = load / load.sum(dim=-1, keepdim=True).clamp(min=1)
    spread = (share.std(dim=-1, unbiased=False) / share.mean(dim=-1)).mean()
    return {"expert_share": [[round(s, 4) for s in row] for row in share.tolist()],
            "expert_spread": round(float(spread), 4)}
