"""scripts/export_hf.py and scripts/import_hf.py against transformers and the safetensors
library, the independent readers and writers of the formats they convert to and from."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import export_hf  # noqa: E402
import import_hf  # noqa: E402
from model import LMConfig, Transformer  # noqa: E402
from tokenizer import (BOS_ID, EOS_ID, PAD_ID, load_tokenizer, save_tokenizer,  # noqa: E402
                       train_tokenizer)

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3,
         "预训练一个小模型，从零开始。Tokens and 字符 mixed, emoji 🙂!"] * 10


def random_model(use_moe=False, seed=0):
    """A model with export_hf's default head counts and weights large enough that logits
    are of order 1 and the MoE router does not pick the same experts everywhere."""
    torch.manual_seed(seed)
    model = Transformer(LMConfig(dim=64, n_layers=2, vocab_size=300, use_moe=use_moe))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.15)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{"dense"/"moe": (model, out_dir, hf_dir)}: each checkpoint exported by the command."""
    out_dir = tmp_path_factory.mktemp("out")
    save_tokenizer(train_tokenizer(TEXTS, vocab_size=300), out_dir / "tokenizer.json")
    result = {}
    for kind, use_moe in (("dense", False), ("moe", True)):
        model = random_model(use_moe)
        suffix = "64_moe" if use_moe else "64"
        torch.save(model.state_dict(), out_dir / f"pretrain_{suffix}.pth")
        # MiniMind's spelling of the flag, --use_moe 1 / 0
        export_hf.main(["--dim", "64", "--n_layers", "2", "--out_dir", str(out_dir),
                        "--use_moe", "1" if use_moe else "0"])
        result[kind] = model, out_dir, out_dir / f"hf-{suffix}"
    return result


def test_export_use_moe_is_a_bare_flag_or_minimind_1_and_0():
    for flags, use_moe in [([], None), (["--use_moe"], True), (["--use_moe", "1"], True),
                           (["--use_moe", "0"], False)]:
        assert export_hf.parse_args(flags + ["--dim", "64"]).use_moe is use_moe, flags


def test_half_split_takes_even_rows_then_odd_rows_of_each_head_and_inverts():
    rows = torch.arange(8.0)[:, None]  # 2 heads of dim 4: rows 0-3 and 4-7
    split = export_hf.to_half_split(rows, n_heads=2)
    assert split.flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    w = torch.randn(64, 16)
    assert torch.equal(export_hf.to_interleaved(export_hf.to_half_split(w, 4), 4), w)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_export_then_import_gives_back_the_exact_state_dict(exported, tmp_path, capsys, kind):
    model, out_dir, hf_dir = exported[kind]
    import_hf.main(["--hf_dir", str(hf_dir), "--out", str(tmp_path / "back.pth"),
                    "--tokenizer_out", str(tmp_path / "tokenizer.json")])
    command = f"python eval_model.py --ckpt {tmp_path / 'back.pth'}"
    assert command in capsys.readouterr().out
    # the config file beside it holds what the shapes do not tell (norm_eps, rope_theta, k)
    saved = json.loads((tmp_path / "back.json").read_text())
    assert saved == {**dataclasses.asdict(model.config), "max_seq_len": saved["max_seq_len"]}
    assert (tmp_path / "tokenizer.json").read_text() == (out_dir / "tokenizer.json").read_text()
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    original = model.state_dict()
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    Transformer(model.config).load_state_dict(back, strict=True)


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_transformers_loads_the_export_and_gives_the_same_logits(exported, kind):
    from transformers import AutoModelForCausalLM

    model, _, hf_dir = exported[kind]
    hf, info = AutoModelForCausalLM.from_pretrained(hf_dir, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched weights
    assert hf.config.tie_word_embeddings
    ids = torch.randint(0, 300, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids).logits, hf.eval()(ids).logits
    assert ours.abs().max() > 1  # logits big enough for the comparison to mean something
    assert (ours - theirs).abs().max().item() < 1e-4


def assert_same_greedy_tokens(model, hf, new_tokens):
    """transformers' greedy generate from an exported model gives MyLLM's tokens."""
    prompt = torch.tensor([[BOS_ID, 50, 51, 52, 53]])
    ours = model.generate(prompt, max_new_tokens=new_tokens, temperature=0, eos_token_id=EOS_ID)
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt),
                         max_new_tokens=new_tokens, do_sample=False)
    assert theirs.tolist() == ours.tolist()


@pytest.mark.parametrize("kind", ["dense", "moe"])
def test_transformers_greedy_generate_reproduces_myllm_tokens(exported, kind):
    from transformers import AutoModelForCausalLM

    model, _, hf_dir = exported[kind]
    assert_same_greedy_tokens(model, AutoModelForCausalLM.from_pretrained(hf_dir).eval(), 24)


def test_autotokenizer_of_the_export_encodes_like_myllm(exported):
    from transformers import AutoTokenizer

    _, out_dir, hf_dir = exported["dense"]
    ours = load_tokenizer(out_dir / "tokenizer.json")
    theirs = AutoTokenizer.from_pretrained(hf_dir)
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (
        BOS_ID, EOS_ID, PAD_ID)
    for text in TEXTS[:2] + ["<s>two documents</s><s>预训练</s>", "  spaces\n\tand tabs "]:
        ids = ours.encode(text).ids
        assert theirs(text)["input_ids"] == ids
        assert theirs.decode(ids) == text


def test_config_declares_tied_llama_and_the_file_holds_the_embedding_once(exported):
    from safetensors.torch import load_file

    model, _, hf_dir = exported["dense"]
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"]
    assert config["intermediate_size"] == model.config.hidden_dim
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e6}
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)
    tensors = load_file(hf_dir / "model.safetensors")  # the reference reader
    assert "lm_head.weight" not in tensors
    assert torch.equal(tensors["model.embed_tokens.weight"], model.tok_embeddings.weight)
    assert len(tensors) == 2 + 9 * 2  # embedding, final norm, 9 matrices or norms per layer


def test_safetensors_reader_reads_files_of_the_reference_writer(tmp_path):
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16),
               "c": torch.randn(2, 2, 3).half()}
    save_file(tensors, tmp_path / "t.safetensors")
    read = import_hf.load_safetensors(tmp_path / "t.safetensors")
    assert all(torch.equal(read[k], v) and read[k].dtype == v.dtype for k, v in tensors.items())


def test_import_of_a_llama_saved_by_transformers_gives_its_logits(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
        max_position_embeddings=256, rope_parameters={"rope_type": "default",
                                                      "rope_theta": 500.0})).eval()
    hf.save_pretrained(tmp_path / "llama")
    state_dict, config, _ = import_hf.import_hf(tmp_path / "llama")
    assert (config.n_heads, config.hidden_dim, config.rope_theta) == (4, 160, 500.0)
    model = Transformer(config).eval()
    model.load_state_dict(state_dict, strict=True)
    ids = torch.randint(0, 300, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids).logits - hf(ids).logits).abs().max().item() < 1e-4


def edit_export(src, dst, config_changes, extra_tensors=None):
    """A copy of an exported directory with config.json fields changed or tensors added."""
    dst.mkdir()
    config = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **config_changes}))
    tensors = import_hf.load_safetensors(src / "model.safetensors")
    export_hf.save_safetensors({**tensors, **(extra_tensors or {})}, dst / "model.safetensors")
    return dst


def test_import_refuses_untied_embeddings_unless_they_are_equal(exported, tmp_path):
    model, _, hf_dir = exported["dense"]
    embedding = model.tok_embeddings.weight.detach()
    equal = edit_export(hf_dir, tmp_path / "equal", {"tie_word_embeddings": False},
                        {"lm_head.weight": embedding.clone()})
    import_hf.import_hf(equal)
    untied = edit_export(hf_dir, tmp_path / "untied", {"tie_word_embeddings": False},
                         {"lm_head.weight": embedding + 1})
    with pytest.raises(SystemExit, match="tie_word_embeddings is false"):
        import_hf.import_hf(untied)


@pytest.mark.parametrize("changes, field", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0}},
     "rope_parameters.rope_type"),
    ({"model_type": "mistral"}, "model_type"),
    ({"head_dim": 16}, "head_dim"),
])
def test_import_names_the_config_field_myllm_cannot_hold(exported, tmp_path, changes, field):
    _, _, hf_dir = exported["dense"]
    bad = edit_export(hf_dir, tmp_path / "bad", changes)
    with pytest.raises(SystemExit, match=f"config.json: {field} is"):
        import_hf.import_hf(bad)


def test_import_refuses_tensors_it_would_drop(exported, tmp_path):
    _, _, hf_dir = exported["dense"]
    bad = edit_export(hf_dir, tmp_path / "bias", {},
                      {"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)})
    with pytest.raises(SystemExit, match="no place for: model.layers.0.self_attn.q_proj.bias"):
        import_hf.import_hf(bad)


@pytest.mark.parametrize("fields, message", [
    (dict(use_moe=True, norm_topk_prob=False), "always renormalises the top-k weights"),
    (dict(use_moe=True, score_func="sigmoid"), "DeepSeek-V3 pairs MLA with a sigmoid-routed"),
    (dict(qk_norm=True, use_moe=True), "Qwen3-MoE has no shared experts"),
    (dict(use_moe=True, first_k_dense=1), "GraniteMoeShared has no dense layers")])
def test_architectures_transformers_cannot_express_are_a_clear_error(fields, message):
    config = LMConfig(dim=64, n_layers=2, vocab_size=300, **fields)
    with pytest.raises(ValueError, match=message):
        export_hf.hf_config(config, torch.float32)


def test_export_errors_name_the_missing_file_and_the_wrong_shape(exported, tmp_path):
    _, out_dir, _ = exported["dense"]
    with pytest.raises(SystemExit, match=r"pretrain_128.pth not found.*pretrain_64.pth"):
        export_hf.main(["--dim", "128", "--n_layers", "2", "--out_dir", str(out_dir)])
    with pytest.raises(SystemExit, match="checkpoint: n_layers 2; asked: 3"):
        export_hf.main(["--dim", "64", "--n_layers", "3", "--out_dir", str(out_dir),
                        "--ckpt", str(out_dir / "pretrain_64.pth"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="checkpoint: use_moe True; asked: False"):
        export_hf.main(["--dim", "64", "--use_moe", "0", "--out_dir", str(out_dir),
                        "--ckpt", str(out_dir / "pretrain_64_moe.pth"), "--out", str(tmp_path)])
