"""The commands that README.md and docs/*.md tell a reader to run, run as written (scaled
down where a CPU test must be quick), and the links between those pages."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import train_pretrain

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_data  # noqa: E402
import prepare_cluster  # noqa: E402
from tokenizer import save_tokenizer, train_tokenizer  # noqa: E402

README = (ROOT / "README.md").read_text(encoding="utf-8")
PAGES = ["README.md", "README_zh.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))


def section_of(text: str, section: str) -> str:
    """The body of `## section` in a markdown text, up to the next `## ` heading."""
    return text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]


def bash_blocks(page: str, section=None, per_block=False):
    """The commands of every ```bash block of a page (README.md, docs/flags.md, ...), or of
    one `## section` of it: continuation lines joined, comments dropped, `a && b` split into
    a and b. per_block: one list of commands per block."""
    text = (ROOT / page).read_text(encoding="utf-8")
    if section is not None:
        text = section_of(text, section)
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        commands = []
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands += [c.strip() for c in line.split("&&")]
        blocks.append(commands)
    return blocks if per_block else [c for commands in blocks for c in commands]


def shell_words(command: str, cwd: Path):
    """The arguments a shell would pass: quotes removed, and an unquoted word with `*`
    expanded in cwd (a quoted glob reaches the script as it is)."""
    argv = []
    for raw in shlex.split(command, posix=False):
        word = shlex.split(raw)[0] if raw.strip("'\"") else ""
        if "*" in raw and not any(q in raw for q in "'\""):
            argv += sorted(str(p.relative_to(cwd)) for p in cwd.glob(raw))
        else:
            argv.append(word)
    return argv


def run(command: str, cwd: Path, extra=(), stdin=""):
    """Run a documented command with this Python; project scripts are found in the
    repository. `echo TEXT | command` feeds TEXT on stdin."""
    if command.startswith("echo ") and " | " in command:
        echo, command = command.split(" | ", 1)
        stdin = shlex.split(echo)[1] + "\n"
    argv = shell_words(command, cwd)
    if argv[0] == "python":
        argv[0] = sys.executable
        if argv[1].endswith(".py"):
            argv[1] = str(ROOT / argv[1])
    elif argv[0] == "torchrun":
        script = next(i for i, a in enumerate(argv) if a.endswith(".py"))
        argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:script],
                str(ROOT / argv[script]), *argv[script + 1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(argv + list(extra), cwd=cwd, env=env, input=stdin, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_setup_then_every_script_example(tmp_path):
    install_and_run, install_and_test = (bash_blocks("README.md", "Set-up")[:3],
                                         bash_blocks("README.md", "Set-up")[3:])
    assert install_and_run[0] == "pip install -r requirements.txt"
    train, generate = install_and_run[1:]
    assert train == f"python train_pretrain.py {train_pretrain.QUICK_FLAGS}"
    out = run(train, tmp_path, extra=["--max_steps", "3"])  # the full run takes minutes
    assert "built-in corpus" in out and (tmp_path / "out" / "pretrain_192.pth").exists()
    text = run(generate, tmp_path, extra=["--max_new_tokens", "5"])
    assert "The with statement" in text
    # the test command is the one CI runs
    assert install_and_test == ["pip install -r requirements-dev.txt", "python -m pytest -q tests"]
    assert "python -m pytest -q tests" in (ROOT / ".ci" / "run").read_text()

    # every example of docs/flags.md, in order, on the model just trained
    examples = bash_blocks("docs/flags.md")
    assert any("tokenizer.py" in c for c in examples) and any("import_hf.py" in c
                                                                for c in examples)
    for command in examples:
        extra = ["--max_new_tokens", "4"] if "eval_model.py" in command else []
        run(command, tmp_path, extra=extra)
    assert (tmp_path / "out" / "imported" / "pretrain_192.pth").exists()
    # the run wrote its report; docs/report.md's commands write it again, and the others
    (log,) = (tmp_path / "out" / "logs").glob("pretrain_192_*.jsonl")
    report = tmp_path / "out" / "reports" / log.stem / "report.md"
    report.unlink()
    report_commands = bash_blocks("docs/report.md")
    assert report_commands[0].startswith("pip install matplotlib")
    for command in report_commands[1:]:  # matplotlib: a test dependency already
        run(command, tmp_path)
    assert "bits per byte" in report.read_text()
    assert (tmp_path / "out" / "reports" / "all" / "loss.png").stat().st_size > 0
    assert (tmp_path / "loss.png").stat().st_size > 0


def minimind_trainer_file(myllm_weights: Path, path: Path):
    """A dense weights file as MiniMind's trainer/ layout saves it (transformers' names and
    RoPE layout, the head stored apart), made from a MyLLM one."""
    from checkpoint import config_from_state_dict, read_state_dict
    from scripts.export_hf import to_hf_state_dict

    state = read_state_dict(myllm_weights)
    hf = to_hf_state_dict(state, config_from_state_dict(state))
    hf["lm_head.weight"] = hf["model.embed_tokens.weight"]
    path.parent.mkdir(parents=True)
    torch.save({k: v.clone() for k, v in hf.items()}, path)


def test_full_path_on_minimind_format_data(tmp_path):
    from checkpoint import load_model

    (tmp_path / "dataset").mkdir()  # MiniMind-format lines from the project's one generator
    bench_data.write_corpus(tmp_path / "dataset" / "pretrain_hq.jsonl", 150_000)
    # what makes the GPU-sized commands fit a CPU test: a few tiny steps on two processes
    small_run = ["--max_steps", "1", "--batch_size", "2", "--accumulation_steps", "1",
                 "--max_seq_len", "64", "--eval_iters", "1"]
    steps = bash_blocks("README.md", "The full path, on real data")
    assert steps[0].startswith("mkdir -p dataset") and steps[1].startswith("wget")
    for command in steps[2:]:
        if command.startswith("torchrun --nnodes"):
            continue  # two nodes on localhost: tests/test_train.py runs that
        if command.startswith("torchrun"):
            command = command.replace("--nproc_per_node 6", "--nproc_per_node 2")
            out = run(command, tmp_path, extra=small_run + (
                ["--max_steps", "2"] if "--resume" in command else []))
            assert "reusing out/data/pretrain_hq-" in out  # dataset.py made it: not redone
            if "--resume" in command:
                assert "resumed from" in out
        elif "eval_model.py" in command:  # a few benchmark items: the scoring is tested apart
            run(command, tmp_path, extra=["--max_new_tokens", "4", "--bench_items", "3"],
                stdin="")
        else:
            run(command, tmp_path)
    weights = tmp_path / "out" / "pretrain_512.pth"
    assert (tmp_path / "out" / "hf-512" / "model.safetensors").exists()

    # docs/compatibility.md: the seeds' MiniMind commands, and MiniMind's trainer/ names
    compat = bash_blocks("docs/compatibility.md")
    assert len(compat) == 3 and "--hidden_size 512" in compat[1]
    for command in compat[:2]:
        run(command, tmp_path, extra=["--max_new_tokens", "4"], stdin="")
    # ... and its converter of trainer/ weights, run as the page shows it
    trainer_file = tmp_path / "minimind" / "out" / "pretrain_512.pth"
    minimind_trainer_file(weights, trainer_file)
    assert "../minimind/out/pretrain_512.pth" in compat[2]
    (tmp_path / "work").mkdir()  # where ../minimind is the trainer's checkout
    run(compat[2], tmp_path / "work")
    converted = tmp_path / "work" / "out" / "minimind" / "pretrain_512.pth"
    ids = torch.randint(0, 6400, (1, 16))
    with torch.no_grad():
        expected = load_model(weights, 6400)(ids).logits
        got = load_model(converted, 6400)(ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # docs/data.md: several sources with weights; the extra source holds copies of lines
    # of the first, so that dedup has to choose which copy survives
    lines = (tmp_path / "dataset" / "pretrain_hq.jsonl").read_text(encoding="utf-8")
    lines = lines.splitlines(keepends=True)
    (tmp_path / "dataset" / "extra").mkdir()
    for name, part in (("a", lines[:40]), ("b", lines[40:80])):
        (tmp_path / "dataset" / "extra" / f"{name}.jsonl").write_text("".join(part),
                                                                     encoding="utf-8")
    (weighted,) = bash_blocks("docs/data.md", "Several sources, and their weights")
    assert "--weights 1 2" in weighted

    def train_tokens(command):
        out = run(command, tmp_path)
        prepared = re.search(r"prepared data: (\S+)", out).group(1)
        meta = json.loads((tmp_path / prepared / "meta.json").read_text(encoding="utf-8"))
        assert meta["report"]["exact_duplicates"] >= 70, out  # the copies were found
        return meta["splits"]["train"]["tokens"]

    # the copies survive in the extra source, whose weight 2 then trains them twice; were
    # the first source's copies kept, the weight would have nothing left to repeat
    assert train_tokens(weighted) > train_tokens(weighted.replace("--weights 1 2",
                                                                  "--weights 1 1"))


def test_performance_commands(tmp_path):
    """The CPU benchmark commands run, scaled down to a tiny model; the GPU ones need a GPU
    to run as written, so here their flags must at least parse."""
    import bench

    gpu_commands, cpu_commands = bash_blocks("docs/performance.md", per_block=True)[:2]
    assert len(gpu_commands) == 4
    for command in gpu_commands:
        argv = shlex.split(command)
        assert argv[:2] in (["python", "scripts/bench.py"], ["python", "scripts/bench_hf.py"])
        bench.parse_args(argv[2:])  # bench_hf.py takes bench.py's flags
    tiny = ["--dim", "64", "--n_layers", "2", "--vocab_size", "300", "--max_seq_len", "32",
            "--batch_size", "2", "--steps", "1", "--repeats", "1", "--new_tokens", "4",
            "--prompt_len", "4", "--ttft_prompt_len", "8"]
    assert len(cpu_commands) == 3
    for command in cpu_commands:
        out = run(command, tmp_path, extra=tiny)
        assert "train tokens/s" in out
        if "bench_hf.py" in command:
            assert "transformers" in out


def test_quality_commands_parse(tmp_path, monkeypatch):
    """docs/quality.md's speedrun commands take minutes to hours each: here every one must
    parse, and so must every variant's flags as train_pretrain.py flags."""
    import speedrun

    (tmp_path / "minimind" / "trainer").mkdir(parents=True)  # --minimind ../minimind
    (tmp_path / "minimind" / "trainer" / "train_pretrain.py").write_text("")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    commands = bash_blocks("docs/quality.md")
    assert len(commands) == 3
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["python", "scripts/speedrun.py"]
        args = speedrun.parse_args(argv[2:])
        for name, flags in args.variants.items():
            train_pretrain.parse_args(shlex.split(args.shape) + shlex.split(flags))
    assert "muon" in speedrun.parse_args(shlex.split(commands[0])[2:]).variants


def test_benchmark_commands(tmp_path):
    """docs/benchmarks.md's commands, as written but for a few items per task and a tiny
    training run, on a 512 x 8 model of random weights."""
    from model import LMConfig, Transformer
    from tokenizer import save_tokenizer, train_tokenizer

    (tmp_path / "dataset").mkdir()
    bench_data.write_corpus(tmp_path / "dataset" / "pretrain_hq.jsonl", 20_000)
    texts = [json.loads(line)["text"] for line in
             (tmp_path / "dataset" / "pretrain_hq.jsonl").read_text("utf-8").splitlines()]
    tok = train_tokenizer(texts, vocab_size=400)
    save_tokenizer(tok, tmp_path / "out" / "tokenizer.json")
    torch.save(Transformer(LMConfig(vocab_size=tok.get_vocab_size())).state_dict(),
               tmp_path / "out" / "pretrain_512.pth")
    commands = bash_blocks("docs/benchmarks.md")
    assert commands[0] == "pip install -r requirements-eval.txt"  # CI has installed it
    tiny = ["--dim", "64", "--n_layers", "2", "--max_seq_len", "64", "--batch_size", "2",
            "--accumulation_steps", "1", "--max_steps", "1", "--eval_iters", "1"]
    for command in commands[1:]:
        training = command.startswith("python train_pretrain.py")
        out = run(command, tmp_path, extra=(tiny if training else []) + ["--bench_items", "3"])
        if "--bench_data" in command:
            assert "heldout_cloze: accuracy" in out, out
            assert len((tmp_path / "out" / "items.jsonl").read_text("utf-8").splitlines()) == 3
        elif not training:
            assert re.search(r"^\w+: accuracy [\d.]+% \(95% interval", out, flags=re.M), out
    (log,) = (tmp_path / "out" / "logs").glob("*.jsonl")
    assert '"kind": "bench"' in log.read_text(encoding="utf-8")


def test_memory_plan_commands(tmp_path, monkeypatch):
    """docs/memory.md's dry runs, as written: the plan for 8 GPUs, printed without data.
    Its --fsdp commands are for 8 GPUs: here they must parse (tests/test_reliability.py runs
    --fsdp under torchrun)."""
    commands, sharded = bash_blocks("docs/memory.md", per_block=True)
    assert len(commands) == 2 and all("--dry_run --nproc 8" in c for c in commands)
    plans = [run(command, tmp_path) for command in commands]
    for out in plans:
        assert out.startswith("memory plan per GPU (8 ranks, adamw, bfloat16"), out
    total = [float(re.search(r"total +([\d.]+) GiB", out).group(1)) for out in plans]
    assert total[1] < total[0] / 2  # --grad_checkpoint
    assert not any(tmp_path.iterdir())
    assert len(sharded) == 2 and all("--fsdp" in c for c in sharded)
    monkeypatch.setenv("RANK", "0")  # as torchrun sets it
    for command in sharded:
        argv = shlex.split(command)
        assert argv[:4] == ["torchrun", "--nproc_per_node", "8", "train_pretrain.py"]
        assert train_pretrain.parse_args(argv[4:]).fsdp


def test_data_page_prepares_on_many_machines(tmp_path):
    """docs/data.md's datatrove commands: the local one runs and writes what dataset.py
    writes; the Slurm and Ray ones are read by the script's parser (no cluster here)."""
    local, slurm, ray = bash_blocks("docs/data.md", "Preparing on many machines")
    (tmp_path / "corpus").mkdir()
    lines = [json.dumps({"text": f"document {i}: " + " ".join(
        f"word{(i * 7 + k) % 97}" for k in range(30))}) + "\n" for i in range(60)]
    for name, part in (("a", lines[:35]), ("b", lines[35:])):
        (tmp_path / "corpus" / f"{name}.jsonl").write_text("".join(part), encoding="utf-8")
    save_tokenizer(train_tokenizer([json.loads(x)["text"] for x in lines], 300),
                   tmp_path / "out" / "tokenizer.json")
    prepared = re.search(r"prepared data: (\S+)", run(local, tmp_path)).group(1)
    again = run('python dataset.py --data_path "corpus/*.jsonl" --tokenizer out/tokenizer.json '
                "--data_dir out/data", tmp_path)
    assert f"reusing {prepared}" in again  # dataset.py finds the same directory made
    for command, executor in ((slurm, "slurm"), (ray, "ray")):
        args = prepare_cluster.parse_args(shlex.split(command)[2:])
        assert args.executor == executor and args.tasks == 512 and args.workers == 64


def test_data_levers_page_trains_a_scorer_and_prepares_with_the_levers(tmp_path):
    train_scorer_cmd, prepare_cmd = bash_blocks("docs/data_levers.md")
    (tmp_path / "dataset").mkdir()
    texts = [f"document {i}: " + " ".join(f"word{(i * 7 + k) % 97}" for k in range(30))
             for i in range(60)]
    for name, part in (("trusted.jsonl", texts[:20]), ("dataset/pretrain_hq.jsonl", texts)):
        (tmp_path / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part),
                                     encoding="utf-8")
    save_tokenizer(train_tokenizer(texts, 300), tmp_path / "out" / "tokenizer.json")
    run(train_scorer_cmd, tmp_path, extra=["--steps", "3"])  # the page's 300 take minutes
    out = run(prepare_cmd, tmp_path)
    prepared = tmp_path / re.search(r"prepared data: (\S+)", out).group(1)
    meta = json.loads((prepared / "meta.json").read_text(encoding="utf-8"))
    assert meta["options"]["order"] == "similar" and meta["options"]["quality"]["keep"] == 0.7
    assert "quality cut" in out and (prepared / "train.scores.npy").exists()


def test_every_page_with_commands_has_its_test():
    """A new ```bash block in a page no test reads would be a command nobody runs."""
    tested = {"README.md", "README_zh.md", "docs/flags.md", "docs/report.md",
              "docs/performance.md", "docs/quality.md", "docs/compatibility.md",
              "docs/data.md", "docs/benchmarks.md", "docs/memory.md",
              "docs/architectures.md", "docs/data_levers.md"}
    with_commands = {page for page in PAGES if bash_blocks(page)}
    assert with_commands <= tested, sorted(with_commands - tested)
    # data.md's first block downloads the benchmark's texts; the others are run above
    assert len(bash_blocks("docs/data.md", per_block=True)) == 3


def test_readme_is_a_first_page():
    lines = README.splitlines()
    assert len(lines) <= 250
    first = "\n".join(lines[:40])
    assert "python train_pretrain.py --dim 192" in first
    assert "pip install -r requirements-dev.txt && python -m pytest -q tests" in first
    assert not re.search(r"\(\d+ lines\)", README), "line counts go stale"
    for page in PAGES:  # the shell lines a reader copies stay readable
        text = (ROOT / page).read_text(encoding="utf-8")
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            long = [line for line in block.splitlines() if len(line) > 100]
            assert not long, f"{page}: code lines over 100 columns: {long}"


def test_readme_zh_gives_the_same_commands():
    for section_en, section_zh in (("Set-up", "快速开始"),
                                   ("The full path, on real data", "完整流程：使用真实数据")):
        assert (bash_blocks("README_zh.md", section_zh)
                == bash_blocks("README.md", section_en))
    docs_en = set(re.findall(r"\]\((docs/[^)#\s]+)", README))
    docs_zh = set(re.findall(r"\]\((docs/[^)#\s]+)",
                             (ROOT / "README_zh.md").read_text(encoding="utf-8")))
    assert docs_en <= docs_zh, sorted(docs_en - docs_zh)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_pages_points_to_a_file():
    for page in PAGES:
        path = ROOT / page
        text = path.read_text(encoding="utf-8")
        links = [link for link in re.findall(r"\]\(([^)\s]+)\)", text)
                 if not re.match(r"[a-z]+://", link)]
        if page.startswith("README"):
            assert links, f"{page} links to nothing"  # the run report's example, at least
        for link in links:
            target, _, anchor = link.partition("#")
            target_path = (path.parent / target) if target else path
            assert target_path.is_file(), f"{page} links to {link}, which is not there"
            if anchor and target_path.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", target_path.read_text(encoding="utf-8"),
                                      flags=re.M)
                assert anchor in {slug(h) for h in headings}, f"{page}: no anchor {link}"


def test_architectures_page_commands_train_export_and_import(tmp_path):
    """docs/architectures.md's commands as written, on tiny shapes: every architecture
    trains (into a file name of its own), the DeepSeek-V3 one exports and imports back,
    MiniMind's trainer/ checkpoint (tests/fixtures: minimind-3's MoE) imports, the benchmark
    runs, and the speedrun's flags parse."""
    import speedrun

    tiny = ["--dim", "64", "--n_layers", "2", "--max_steps", "1", "--batch_size", "2",
            "--accumulation_steps", "1", "--max_seq_len", "64", "--eval_iters", "1",
            "--device", "cpu", "--no_report"]
    commands = bash_blocks("docs/architectures.md")
    training = [c for c in commands if c.startswith("python train_pretrain.py")]
    assert len(training) == 4
    for command in training:
        run(command, tmp_path, extra=tiny)
    names = sorted(p.name for p in (tmp_path / "out").glob("pretrain_64*.pth"))
    assert [n for n in names if "resume" not in n] == [
        "pretrain_64_dsmoe.pth", "pretrain_64_mla.pth", "pretrain_64_mla_dsmoe.pth",
        "pretrain_64_qknorm.pth"]
    export, back, minimind = [c for c in commands if "_hf.py" in c]
    run(export.replace("512", "64"), tmp_path)
    run(back.replace("512", "64"), tmp_path)
    # the model comes back; how it trained (the balancing knobs, the context) does not
    training_only = ("max_seq_len", "aux_loss_alpha", "bias_update_speed", "seq_aux")
    config, imported = (json.loads((tmp_path / "out" / name).read_text()) for name in
                        ("pretrain_64_mla_dsmoe.json", "imported/pretrain_64_mla_dsmoe.json"))
    assert {k: v for k, v in config.items() if k not in training_only} == {
        k: v for k, v in imported.items() if k not in training_only}
    (tmp_path / "minimind" / "out").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "minimind3_moe.pth",
                tmp_path / "minimind" / "out" / "pretrain_768.pth")
    (tmp_path / "work").mkdir()
    out = run(minimind, tmp_path / "work")
    assert "python eval_model.py --ckpt out/m3.pth" in out
    # the measurements: bench_arch.py runs, scaled down; the speedrun's flags parse
    (bench,) = [c for c in commands if "bench_arch.py" in c]
    out = run(bench, tmp_path, extra=["--dim", "64", "--n_layers", "2", "--moe_dim", "64",
                                      "--moe_layers", "2", "--batch", "2", "--seq_len", "32",
                                      "--repeats", "1", "--prompt", "4", "--new_tokens", "4"])
    assert "MLA, kv_lora_rank" in out and "DeepSeek MoE, routed" in out
    (speed,) = [c for c in commands if "speedrun.py" in c]
    args = speedrun.parse_args(shlex.split(speed)[2:])
    assert set(args.variants) >= {"base", "qk_norm", "mla", "dsmoe"}
    for flags in args.variants.values():
        train_pretrain.parse_args(shlex.split(args.shape) + shlex.split(flags))
