"""One flag name, one meaning: a flag that several scripts take is declared once (flags.py),
so its default is the same in each; MiniMind's names for the same thing still work."""

import bench
import dataset
import eval_model
import tokenizer
import train_pretrain
import export_hf

SCRIPTS = {
    "train_pretrain": lambda: train_pretrain.parse_args(["--device", "cpu"]),
    "dataset": lambda: dataset.parse_args([]),
    "tokenizer": lambda: tokenizer.parse_args([]),
    "eval_model": lambda: eval_model.parse_args(["--device", "cpu"]),
    "export_hf": lambda: export_hf.parse_args([]),
    "bench": lambda: bench.parse_args(["--device", "cpu"]),
}
# flag -> the scripts that take it, with one meaning (eval_model reads the shape from a
# checkpoint when --dim and friends are not given, so its defaults there are None)
SHARED = {
    "text_field": ["train_pretrain", "dataset", "tokenizer", "eval_model"],
    "skip_bad_lines": ["train_pretrain", "dataset", "tokenizer"],
    "tokenizer": ["train_pretrain", "dataset", "eval_model", "export_hf"],
    "weights": ["train_pretrain", "dataset"],
    "split_seed": ["train_pretrain", "dataset"],
    "prep_workers": ["train_pretrain", "dataset"],
    "out_dir": ["train_pretrain", "eval_model", "export_hf"],
    "dim": ["train_pretrain", "bench"],
    "n_layers": ["train_pretrain", "bench"],
    "use_moe": ["train_pretrain", "bench"],
    "max_seq_len": ["train_pretrain", "dataset", "bench"],
    "dtype": ["train_pretrain", "bench"],
}


def test_a_shared_flag_has_the_same_default_in_every_script():
    parsed = {name: vars(parse()) for name, parse in SCRIPTS.items()}
    for flag, scripts in SHARED.items():
        defaults = {name: parsed[name][flag] for name in scripts}
        assert len(set(map(repr, defaults.values()))) == 1, (flag, defaults)
    # the meanings that differed now have names of their own
    assert "seed" not in parsed["dataset"] and "num_workers" not in parsed["dataset"]
    assert "seed" not in parsed["eval_model"] and "max_seq_len" not in parsed["eval_model"]
    assert parsed["dataset"]["split_seed"] == 0  # the split training prepares with
    # the scripts that read a model from its checkpoint leave its shape and architecture unset
    for name in ("eval_model", "export_hf"):
        for flag in ("dim", "n_layers", "use_moe", "qk_norm", "attention", "moe",
                     "kv_lora_rank", "n_routed_experts"):
            assert parsed[name][flag] is None, (name, flag)


def test_minimind_names_of_eval_model_flags_set_ours():
    args = eval_model.parse_args(["--device", "cpu", "--max_seq_len", "64", "--hidden_size",
                                  "256", "--num_hidden_layers", "4"])
    assert (args.eval_seq_len, args.dim, args.n_layers) == (64, 256, 4)
