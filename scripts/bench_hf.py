"""bench.py's figures for MyLLM beside transformers' model of the same architecture holding
the same weights: LlamaForCausalLM, or GraniteMoeSharedForCausalLM for MoE (export_hf.py
says why). Same flags as bench.py; the table gets a column for each and their ratio.

    python scripts/bench_hf.py --repeats 5
    python scripts/bench_hf.py --device cuda --compile --batch_size 32 --new_tokens 256

transformers is a test dependency (requirements-dev.txt), not a runtime one.
"""

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # model.py lives in the repository root

import bench  # noqa: E402
from device import pick_device  # noqa: E402
from export_hf import hf_config, to_hf_state_dict  # noqa: E402

PEER = "transformers"


class Peer(torch.nn.Module):
    """transformers' model as train_step calls a model: out.logits and out.aux_loss (0)."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf = hf_model

    def forward(self, input_ids):
        out = self.hf(input_ids)
        out.aux_loss = out.logits.new_zeros((), dtype=torch.float32)
        return out


def build_peer(model):
    try:
        import transformers
    except ImportError:
        raise SystemExit("bench_hf.py needs transformers: pip install -r requirements-dev.txt")
    fields = hf_config(model.config, torch.float32)
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    # "sdpa" is transformers' default attention and the fused kernel MyLLM uses too
    peer = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    state_dict = to_hf_state_dict(model.state_dict(), model.config)
    missing, unexpected = peer.load_state_dict(state_dict, strict=False)
    if unexpected or any(k != "lm_head.weight" and "rotary" not in k for k in missing):
        raise RuntimeError(f"weights did not map onto {type(peer).__name__}: missing "
                           f"{missing}, unexpected {unexpected}")
    peer.tie_weights()
    peer.generation_config.eos_token_id = None  # generate exactly new_tokens, as MyLLM does
    peer.generation_config.pad_token_id = fields["pad_token_id"]
    return peer.float().to(next(model.parameters()).device)


def peer_generate(peer):
    def generate(prompt, new_tokens, cache):
        if cache == "kv":
            return None  # its default cache is the "default" case
        return peer.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=new_tokens, use_cache=cache is not None)
    return generate


def main(argv=None):
    args = bench.parse_args(argv)
    model = bench.build_model(args, pick_device(args.device))
    peer = build_peer(model)
    # MyLLM first: the ratio column is MyLLM's figure over transformers'
    bench.run(args, {"MyLLM": model, PEER: Peer(peer)},
              {"MyLLM": bench.myllm_generate(model, args.compile), PEER: peer_generate(peer)})


if __name__ == "__main__":
    main()
