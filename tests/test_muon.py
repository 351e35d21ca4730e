"""muon.py: Newton-Schulz orthogonalisation (in float32 and bfloat16), Muon on a convex
problem, which weights it takes, an exact continuation from a saved state, and the precision
a run's Muon orthogonalises in (train_pretrain.make_optimizer)."""

import io

import pytest
import torch

import muon
from model import LMConfig, Transformer
from muon import Muon, muon_param_groups, newton_schulz
from train_pretrain import make_optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_newton_schulz_keeps_the_singular_vectors_and_brings_singular_values_near_one(dtype):
    g = torch.Generator().manual_seed(0)
    for shape in [(64, 32), (32, 64), (48, 48), (256, 768)]:
        G = torch.randn(*shape, generator=g)
        O = newton_schulz(G, dtype=dtype)
        assert O.dtype == dtype
        O = O.float()
        # the reference's quintic trades exactness for speed: S' lands around 1, not on it
        # (its author quotes roughly 0.5 to 1.5; for these it is about 0.67 to 1.15)
        s = torch.linalg.svdvals(O)
        assert s.min() > 0.6 and s.max() < 1.2, (shape, s.min(), s.max())
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        polar = U @ Vh  # the exact nearest orthogonal matrix
        cosine = (O * polar).sum() / (O.norm() * polar.norm())
        assert cosine > 0.98, (shape, cosine)


def test_muon_brings_a_least_squares_problem_near_its_minimum():
    torch.manual_seed(0)
    n = 32
    A = torch.eye(n) + 0.3 * torch.randn(n, n) / n ** 0.5  # well conditioned
    B = A @ torch.randn(n, n)  # the minimum, ||AW - B||^2 = 0, is at W = A^-1 B
    W = torch.nn.Parameter(torch.zeros(n, n))
    optimizer = Muon([{"params": [W], "lr": 0.1, "weight_decay": 0.0, "use_muon": True}])
    start = ((A @ W - B) ** 2).sum().item()
    steps = 300
    for t in range(steps):
        # a step of fixed size cannot settle on a point: the lr has to decay to 0
        optimizer.param_groups[0]["lr"] = 0.1 * (1 - t / steps)
        optimizer.zero_grad()
        ((A @ W - B) ** 2).sum().backward()
        optimizer.step()
    assert ((A @ W - B) ** 2).sum().item() < 1e-5 * start


def test_hidden_matrices_get_muon_and_embedding_router_and_norms_get_adamw():
    model = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320, use_moe=True))
    muon, matrices, gains = muon_param_groups(model, 1e-3, 0.02, 0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon["params"]}
    assert muon_names and all(n.split(".")[-2] in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
                              for n in muon_names)
    assert any(".experts." in n for n in muon_names)
    assert {names[id(p)] for p in matrices["params"]} == {
        "tok_embeddings.weight",  # also the output head: tied
        *(f"layers.{i}.feed_forward.gate.weight" for i in range(2))}
    assert all("norm" in names[id(p)] for p in gains["params"])
    assert len(muon_names) + len(matrices["params"]) + len(gains["params"]) == len(names)
    assert (muon["use_muon"], matrices["use_muon"], gains["use_muon"]) == (True, False, False)
    assert (muon["lr"], matrices["lr"], matrices["weight_decay"]) == (0.02, 1e-3, 0.1)


def train(model, optimizer, batches):
    for tokens in batches:
        logits = model(tokens[:, :-1]).logits  # (B, T, vocab)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def fresh(state=None):
    torch.manual_seed(0)
    model = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320))
    optimizer = Muon(muon_param_groups(model, 1e-3, 0.02, 0.1))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    return model, optimizer


def test_muon_continued_from_a_saved_state_equals_an_uninterrupted_run():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 320, (2, 9), generator=g) for _ in range(6)]
    straight, straight_opt = fresh()
    train(straight, straight_opt, batches)

    first, first_opt = fresh()
    train(first, first_opt, batches[:3])
    buffer = io.BytesIO()  # as a resume file stores them
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    resumed, resumed_opt = fresh(torch.load(buffer, weights_only=True))
    assert resumed_opt.state_dict()["state"]  # momentum and AdamW moments came back
    train(resumed, resumed_opt, batches[3:])
    for name, p in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], p), name  # bit-exact on the CPU


def orthogonalised_in(model, optimizer, monkeypatch):
    """The precisions newton_schulz is called in over two training steps."""
    seen = []

    def spy(G, dtype):
        seen.append(dtype)
        return newton_schulz(G, dtype=dtype)
    with monkeypatch.context() as m:
        m.setattr(muon, "newton_schulz", spy)
        train(model, optimizer, [torch.randint(0, 320, (2, 9)) for _ in range(2)])
    return set(seen)


def test_a_bfloat16_run_orthogonalises_in_bfloat16_and_its_state_resumes_in_float32(
        monkeypatch):
    torch.manual_seed(0)
    model = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320))
    cpu = torch.device("cpu")
    # float16 too orthogonalises in float32: only bfloat16 was measured against float32
    for dtype_name, expected in (("float32", torch.float32), ("float16", torch.float32),
                                 ("bfloat16", torch.bfloat16)):
        optimizer = make_optimizer(model, 1e-3, 0.1, cpu, "muon", dtype_name=dtype_name)
        assert orthogonalised_in(model, optimizer, monkeypatch) == {expected}, dtype_name
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)  # the bfloat16 run's
    buffer.seek(0)
    fp32 = make_optimizer(model, 1e-3, 0.1, cpu, "muon")  # the same run, resumed in float32
    fp32.load_state_dict(torch.load(buffer, weights_only=True))
    before = {name: p.clone() for name, p in model.named_parameters()}
    # the precision is the resumed run's, not saved
    assert orthogonalised_in(model, fp32, monkeypatch) == {torch.float32}
    assert all(not torch.equal(before[name], p) for name, p in model.named_parameters())
