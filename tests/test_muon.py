"""muon.py: Newton-Schulz orthogonalisation (in float32 and bfloat16), Muon on a convex
problem, which weights it takes, an exact continuation from a saved state, and the precision
a run's Muon orthogonalises in (train_pretrain.make_optimizer); a bad step skipped on the
device (found_inf), with the AdamW numbers of before and resume files of before."""

import copy
import io

import pytest
import torch

import muon
from model import LMConfig, Transformer
from muon import Muon, muon_param_groups, newton_schulz
from test_train import refuse_host_sync
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


def test_muon_takes_each_expert_and_latent_matrix_alone_and_leaves_the_router_to_adamw():
    config = LMConfig(dim=32, n_layers=2, vocab_size=320, attention="mla", q_lora_rank=16,
                      use_moe=True, score_func="sigmoid", n_routed_experts=8,
                      num_experts_per_tok=2, moe_inter_dim=16, first_k_dense=1)
    model = Transformer(config)
    muon, matrices, gains = muon_param_groups(model, 1e-3, 0.02, 0.1)
    names = {id(p): name for name, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon["params"]}
    assert {n.split(".")[-2] for n in muon_names} == {
        "wq_a", "wq_b", "wkv_a", "wkv_b", "wo", "w1", "w2", "w3"}
    # one matrix per expert, each orthogonalised on its own (16 x 32 or 32 x 16)
    experts = [p for p in muon["params"] if ".experts." in names[id(p)]]
    assert len(experts) == 3 * 8 and all(sorted(p.shape) == [16, 32] for p in experts)
    assert "layers.1.feed_forward.gate.weight" in {names[id(p)] for p in matrices["params"]}
    # the balancing bias is learned by counting: no optimizer sees it
    assert "expert_bias" not in " ".join(names.values())


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


def straight_and_resumed(seed, n_batches, split, edit_saved=lambda saved: None):
    """(uninterrupted (model, optimizer), the same run saved after `split` batches, the
    saved state passed through edit_saved, loaded back and continued)."""
    g = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, 320, (2, 9), generator=g) for _ in range(n_batches)]
    straight, straight_opt = fresh()
    train(straight, straight_opt, batches)
    first, first_opt = fresh()
    train(first, first_opt, batches[:split])
    buffer = io.BytesIO()  # as a resume file stores them
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    edit_saved(saved)
    resumed, resumed_opt = fresh(saved)
    assert resumed_opt.state_dict()["state"]  # momentum and AdamW moments came back
    train(resumed, resumed_opt, batches[split:])
    return (straight, straight_opt), (resumed, resumed_opt)


def test_muon_continued_from_a_saved_state_equals_an_uninterrupted_run():
    (straight, _), (resumed, _) = straight_and_resumed(seed=1, n_batches=6, split=3)
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


# A bad step skipped on the device: muon.step_where sets found_inf (1.0: skip), as
# for the fused AdamW kernel


def backward(model, tokens):
    out = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), tokens[:, 1:].flatten())
    model.zero_grad()
    (loss + out.aux_loss).backward()


def step_flagged(optimizer, found_inf):
    """optimizer.step() with found_inf set as step_where sets it (None: not set)."""
    if found_inf is not None:
        optimizer.found_inf = torch.tensor(found_inf)  # a 0-dim float32, as step_where's
    optimizer.step()
    if found_inf is not None:
        del optimizer.found_inf


def assert_same_state(a, b):
    """Two optimizer states (state_dict()["state"]) equal bit for bit, step counts too."""
    assert a.keys() == b.keys()
    for i in a:
        assert a[i].keys() == b[i].keys(), i
        for key in a[i]:
            assert torch.equal(torch.as_tensor(a[i][key]), torch.as_tensor(b[i][key])), (i, key)


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_a_skipped_step_with_nan_gradients_leaves_weights_and_state_bit_identical(
        monkeypatch, use_moe):
    torch.manual_seed(0)
    model = Transformer(LMConfig(dim=32, n_layers=2, vocab_size=320, use_moe=use_moe))
    optimizer = Muon(muon_param_groups(model, 1e-3, 0.02, 0.1))
    assert optimizer.supports_found_inf  # what step_where checks
    tokens = torch.randint(0, 320, (2, 9))
    for _ in range(2):  # momentum, moments and step counts exist, and are not zero
        backward(model, tokens)
        optimizer.step()
    weights = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(optimizer.state_dict()["state"])
    assert {"momentum_buffer"} in [s.keys() for s in state.values()]
    assert {"step", "exp_avg", "exp_avg_sq"} in [s.keys() for s in state.values()]
    backward(model, tokens)
    for p in model.parameters():  # what a step whose loss overflowed brings
        p.grad.view(-1)[0::2] = float("nan")
        p.grad.view(-1)[1::2] = float("inf")
    with monkeypatch.context() as m:
        refuse_host_sync(m)  # decided on the device: the host never waits for it
        for _ in range(2):  # twice: the step count must not move either
            step_flagged(optimizer, 1.0)
    assert not hasattr(optimizer, "found_inf")
    for name, p in model.state_dict().items():
        assert torch.equal(p, weights[name]), name
    assert_same_state(optimizer.state_dict()["state"], state)


def test_found_inf_0_steps_as_without_it_and_a_skipped_step_is_as_if_never_taken(monkeypatch):
    """Three runs over the same batches, bit for bit alike: without found_inf; with found_inf 0
    on every step (and no host read); and with an extra step skipped first, while there is
    no state yet, and another skipped in the middle, both on NaN gradients."""
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 320, (2, 9), generator=g) for _ in range(4)]
    nan_batch = torch.randint(0, 320, (2, 9), generator=g)
    runs = {}
    for flags in ((None,) * 4, (0.0,) * 4, (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)):
        model, optimizer = fresh()
        good = iter(batches)
        with monkeypatch.context() as m:
            if flags[0] is not None:
                refuse_host_sync(m)
            for flag in flags:
                backward(model, nan_batch if flag else next(good))
                if flag:
                    for p in model.parameters():
                        p.grad.fill_(float("nan"))
                step_flagged(optimizer, flag)
        runs[flags] = model.state_dict(), optimizer.state_dict()["state"]
    (weights, state), *others = runs.values()
    for other_weights, other_state in others:
        for name, p in weights.items():
            assert torch.equal(other_weights[name], p), name
        assert_same_state(other_state, state)


def test_adamw_groups_step_as_adamw_written_out_with_python_float_bias_correction():
    """The step count is a tensor, so that a skipped step can leave it; the numbers are those
    of the count as a Python int, bit for bit."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 4))
    optimizer = Muon([{"params": [w], "lr": 1e-2, "weight_decay": 0.1, "use_muon": False}])
    expected = w.detach().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    (beta1, beta2), eps = (0.9, 0.95), 1e-8
    for t in range(1, 6):
        grad = torch.randn(8, 4)
        w.grad = grad.clone()
        optimizer.step()
        m, v = m.lerp(grad, 1 - beta1), v.lerp(grad.square(), 1 - beta2)
        update = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + eps)
        expected = (expected * (1 - 1e-2 * 0.1)).add_(update, alpha=-1e-2)
        assert torch.equal(w.detach(), expected), t


def test_a_resume_file_with_an_int_step_count_continues_exactly():
    """Resume files written before the AdamW step count was a tensor hold a Python int."""
    def as_an_older_muon_saved_it(saved):
        counts = [s for s in saved["optimizer"]["state"].values() if "step" in s]
        assert counts
        for s in counts:
            s["step"] = int(s["step"])

    (straight, straight_opt), (resumed, resumed_opt) = straight_and_resumed(
        seed=3, n_batches=4, split=2, edit_saved=as_an_older_muon_saved_it)
    for name, p in straight.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], p), name
    assert_same_state(resumed_opt.state_dict()["state"], straight_opt.state_dict()["state"])
