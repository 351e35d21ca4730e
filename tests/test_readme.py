"""The README's commands run as written (scaled down where a CPU test must be quick)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import train_pretrain

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_data  # noqa: E402
README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(section: str, per_block=False):
    """The commands of every ```bash block in a `## section` of the README: continuation
    lines joined, comments dropped, `a && b` split into a and b. per_block: one list of
    commands per block."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", body, flags=re.S):
        commands = []
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands += [c.strip() for c in line.split("&&")]
        blocks.append(commands)
    return blocks if per_block else [c for commands in blocks for c in commands]


def run(command: str, cwd: Path, extra=(), stdin=""):
    """Run a README command with this Python; project scripts are found in the repository.
    `echo TEXT | command` feeds TEXT on stdin; globs expand in cwd, as a shell would."""
    if command.startswith("echo ") and " | " in command:
        echo, command = command.split(" | ", 1)
        stdin = shlex.split(echo)[1] + "\n"
    argv = []
    for arg in shlex.split(command):
        argv += sorted(str(p.relative_to(cwd)) for p in cwd.glob(arg)) if "*" in arg else [arg]
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
    install_and_run, install_and_test = bash_blocks("Set-up")[:3], bash_blocks("Set-up")[3:]
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

    # the examples of "Scripts and flags", on the model just trained
    for command in bash_blocks("Scripts and flags"):
        if command.startswith("pip install matplotlib"):
            continue  # a test dependency already
        extra = ["--max_new_tokens", "4"] if "eval_model.py" in command else []
        run(command, tmp_path, extra=extra)
    assert (tmp_path / "out" / "imported" / "pretrain_192.pth").exists()
    # the run wrote its report; the README's commands write it again, and the others
    (log,) = (tmp_path / "out" / "logs").glob("pretrain_192_*.jsonl")
    report = tmp_path / "out" / "reports" / log.stem / "report.md"
    report.unlink()
    for command in bash_blocks("Is my run healthy? The run report"):
        if not command.startswith("pip install matplotlib"):
            run(command, tmp_path)
    assert "bits per byte" in report.read_text()
    assert (tmp_path / "out" / "reports" / "all" / "loss.png").stat().st_size > 0
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_full_path_on_minimind_format_data(tmp_path):
    (tmp_path / "dataset").mkdir()  # MiniMind-format lines from the project's one generator
    bench_data.write_corpus(tmp_path / "dataset" / "pretrain_hq.jsonl", 150_000)
    # what makes the GPU-sized commands fit a CPU test: a few tiny steps on two processes
    small_run = ["--max_steps", "1", "--batch_size", "2", "--accumulation_steps", "1",
                 "--max_seq_len", "64", "--eval_iters", "1"]
    steps = bash_blocks("The full path, on real data")
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
        elif "eval_model.py" in command:
            run(command, tmp_path, extra=["--max_new_tokens", "4"], stdin="")
        else:
            run(command, tmp_path)
    assert (tmp_path / "out" / "hf-512" / "model.safetensors").exists()


def test_performance_commands(tmp_path):
    """The CPU benchmark commands run, scaled down to a tiny model; the GPU ones need a GPU
    to run as written, so here their flags must at least parse."""
    import bench

    gpu_commands, cpu_commands = bash_blocks("Performance", per_block=True)[:2]
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


def test_every_relative_link_of_both_readmes_points_to_a_file():
    for name in ("README.md", "README_zh.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        links = [link for link in re.findall(r"\]\(([^)#\s]+)\)", text)
                 if not re.match(r"[a-z]+://", link)]
        assert links, f"{name} links to nothing"  # the run report's example, at least
        missing = [link for link in links if not (ROOT / link).is_file()]
        assert not missing, f"{name} links to files that are not there: {missing}"
