"""Fuzz the params parser: 100 files mutated from the repo's params.yaml, each invalid by construction, must each
stop the prepare stage with exit 1, one `error: params.yaml: ...` line naming the key or the problem, and no output."""

from __future__ import annotations

import dataclasses
import os
import random
import re
import subprocess
import sys
import typing
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

from pipeline.commands import runner as cli
from pipeline.config import METRICS, Params
from stages import prepare

BASE = (REPO / "params.yaml").read_text()
LINES = BASE.splitlines()


def _fields() -> dict[str, tuple[typing.Any, dict]]:
    """`section.key` -> (annotation, rule) for every param."""
    out = {}
    for section in dataclasses.fields(Params):
        cls = type(section.default_factory())
        hints = typing.get_type_hints(cls)
        out.update({f"{section.name}.{f.name}": (hints[f.name], dict(f.metadata)) for f in dataclasses.fields(cls)})
    return out


def _layout() -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """Line index of each `section.key` in BASE, and each section's [header, end) line range."""
    keys, spans, section = {}, {}, None
    for i, line in enumerate(LINES):
        if m := re.match(r"(\w+):\s*(#.*)?$", line):
            section, spans[m[1]] = m[1], (i, i + 1)
        elif section and line.startswith(" "):
            spans[section] = (spans[section][0], i + 1)
            if m := re.match(r"  (\w+):", line):
                keys[f"{section}.{m[1]}"] = i
    return keys, spans


FIELDS = _fields()
KEY_LINES, SPANS = _layout()


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _set(key: str, value: str) -> str:
    lines = list(LINES)
    lines[KEY_LINES[key]] = f"  {key.split('.')[1]}: {value}"
    return _text(lines)


def _insert(at: int, *new: str) -> str:
    return _text(LINES[:at] + list(new) + LINES[at:])


def _without(section: str) -> list[str]:
    start, end = SPANS[section]
    return LINES[:start] + LINES[end:]


def _keys_of(kind: typing.Callable[[typing.Any, dict], bool]) -> list[str]:
    return [k for k, (ann, meta) in FIELDS.items() if kind(ann, meta)]


# Each category: rng -> (file text or bytes, what the one error line must contain).
Mutation = tuple[str | bytes, str]

WRONG = {int: ["1.5", "'12'", "true", "[1]", "{a: 1}", "~", "twelve"],
         float: ["fast", "true", "[0.1]", "{a: 1}", "~", "'0.1'"],
         int | str: ["1.5", "'12'", "true", "[1]", "~", "twelve"],  # an integer or auto
         float | str: ["fast", "true", "[0.1]", "~", "'0.1'"],  # a number or auto
         bool: ["1", "0", "'true'", "maybe", "[true]", "~", "1.0"],
         bool | str: ["1", "0", "'true'", "maybe", "[true]", "~", "1.0"],  # true, false or auto
         str: ["[a]", "{a: b}", "7", "1.5", "~"],
         str | None: ["[a]", "{a: b}", "7", "1.5", "false"],
         tuple[str, ...]: ["7", "{fid: 1}", "[]", "[fid, [kid]]", "~", "true"]}


def wrong_type(rng: random.Random) -> Mutation:
    key = rng.choice(list(FIELDS))
    return _set(key, rng.choice(WRONG[FIELDS[key][0]])), f"params.yaml: {key} must be"


def _out_of_range(key: str) -> list[str]:
    kind, meta = FIELDS[key]
    values = []
    if kind in (int, float):
        step = 1 if kind is int else 0.5
        values += [str(meta["ge"] - step)] if meta["ge"] is not None else []
        values += [str(meta["gt"])] if meta["gt"] is not None else []
        values += [str(meta["le"] + step)] if meta["le"] is not None else []
        values += [".nan", ".inf", "-.inf", ".NaN", "-.Inf"]
    if meta["choices"]:
        values.append({int: "129", str: "bogus-choice", tuple[str, ...]: "[fid, lpips]"}[kind])
    return values


def out_of_range(rng: random.Random) -> Mutation:
    key = rng.choice([k for k in FIELDS if _out_of_range(k)])
    return _set(key, rng.choice(_out_of_range(key))), f"params.yaml: {key} must be"


def _misspell(name: str, rng: random.Random) -> str:
    i = rng.randrange(len(name) - 1)
    return rng.choice([name[:i] + name[i + 1] + name[i] + name[i + 2:], name[:i] + name[i + 1:],
                       name[:i] + name[i] * 2 + name[i:], name.replace("_", "-") + "s", name + "_x", name.upper()])


def unknown_key(rng: random.Random) -> Mutation:
    key = rng.choice(list(KEY_LINES))
    section, name = key.split(".")
    bad = name
    while f"{section}.{bad}" in FIELDS:
        bad = _misspell(name, rng) if rng.random() < 0.8 else rng.choice(list(FIELDS)).split(".")[1]
    lines, at = list(LINES), KEY_LINES[key]
    line = lines[at].replace(f"  {name}:", f"  {bad}:", 1)
    if rng.random() < 0.5:
        lines[at] = line  # in place of the real key
    else:
        lines.insert(at + rng.choice([0, 1]), line)  # next to it
    return _text(lines), f"params.yaml: unknown key {section}.{bad}"


def unknown_section(rng: random.Random) -> Mutation:
    section = rng.choice(list(SPANS))
    bad = section
    while bad in SPANS:
        bad = _misspell(section, rng)
    lines = list(LINES)
    choice = rng.randrange(3)
    if choice == 0:  # the header misspelt
        lines[SPANS[section][0]] = f"{bad}:"
    elif choice == 1:  # an extra section
        lines += [f"{bad}:", "  value: 1"]
    else:  # a key outdented to the top level
        bad = rng.choice(list(KEY_LINES)).split(".")[1]
        lines.insert(rng.choice([start for start, _ in SPANS.values()] + [len(lines)]), f"{bad}: 1")
    return _text(lines), f"params.yaml: unknown section {bad}"


def missing_section(rng: random.Random) -> Mutation:
    section = rng.choice(list(SPANS))
    return _text(_without(section)), f"params.yaml: section {section} is missing"


def empty(rng: random.Random) -> Mutation:
    texts = ["", "\n", "   \n\n  \n", "# params\n", _text(["# " + line for line in LINES]), "---\n",
             "--- # nothing here\n", "~\n", "null\n"]
    return rng.choice(texts), "is empty"


def non_yaml(rng: random.Random) -> Mutation:
    key_line = rng.choice(list(KEY_LINES.values()))
    texts = [
        BASE[: BASE.index("prc]")],  # truncated inside a flow list
        "key: value: other\n",
        _text(LINES[:key_line] + [LINES[key_line].replace("  ", "\t", 1)] + LINES[key_line + 1:]),  # tab indent
        "{{{ not yaml }}}\n",
        BASE.replace("uri: sqlite:///mlflow.db", 'uri: "sqlite:///mlflow.db'),
        "%YAML 2.0\n---\n" + BASE,
        BASE.replace("model_name: auto", "model_name: @auto"),
        "[" * 3000 + "]" * 3000,
        BASE.replace("dataset: digits", "dataset: dig\x00its"),
        BASE + "---\n" + BASE,
        BASE.replace("  root: data/raw", "  root: [data/raw"),
        "data:\n  root: x\n  - y\n",  # ("   - y", deeper, would be valid: the plain scalar "x - y")
        "train: !!python/object/apply:os.system ['true']\n",
        "train: !!int 1:30\n",
    ]
    return rng.choice(texts), "is not valid YAML"


def top_level_list(rng: random.Random) -> Mutation:
    texts = ["- data\n- model\n", "[data, model, train]\n", "-\n" + "".join("  " + line + "\n" for line in LINES),
             "42\n", "params\n", "true\n", "'data: {}'\n"]
    return rng.choice(texts), "params.yaml: the top level must be a mapping of sections"


def duplicate_section(rng: random.Random) -> Mutation:
    section = rng.choice(list(SPANS))
    start, end = SPANS[section]
    block = LINES[start:end] if rng.random() < 0.5 else [f"{section}:", "  " + rng.choice(
        [k for k in KEY_LINES if k.startswith(section + ".")]).split(".")[1] + ": ~"]
    at = rng.choice([s for s, _ in SPANS.values() if s > start] + [len(LINES)])
    return _insert(at, *block), f"params.yaml: duplicate key {section} (lines {start + 1} and {at + 1})"


def duplicate_key(rng: random.Random) -> Mutation:
    key = rng.choice(list(KEY_LINES))
    section = key.split(".")[0]
    line = KEY_LINES[key]
    at = rng.randrange(line + 1, SPANS[section][1] + 1)  # later in the same section
    return _insert(at, LINES[line]), f"params.yaml: duplicate key {key} (lines {line + 1} and {at + 1})"


def non_utf8(rng: random.Random) -> Mutation:
    data = BASE.encode()
    bad = rng.choice([b"\xff", b"\xfe", b"\xc3(", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe9"])
    at = rng.randrange(len(data))
    texts = [data[:at] + bad + data[at:], BASE.encode("utf-16"), BASE.replace("# One", "# Réf").encode("latin-1")]
    return rng.choice(texts), "is not UTF-8 text: byte 0x"


def huge_int(rng: random.Random) -> Mutation:
    key = rng.choice(_keys_of(lambda ann, meta: ann in (int, float)))
    if FIELDS[key][0] is int:
        value = str(rng.choice([10 ** rng.randint(12, 40), 2**63, 2**64 + 1, 10**14, -(10**20)]))
    else:  # a finite float has no upper bound: an integer beyond any float
        value = rng.choice(["", "-"]) + "1" + "0" * rng.randint(309, 400)
    value = "9" * rng.randint(101, 6000) if rng.random() < 0.2 else value  # past Python's 4300-digit int()
    return _set(key, value), f"params.yaml: {key} "


def yaml11(rng: random.Random) -> Mutation:
    key = rng.choice(_keys_of(lambda ann, meta: ann in (int, float, bool)))
    spellings = {int: ["1:30", "1_000", "0b101", "2:00:00", "+1_0", "0b1"],
                 float: ["1:30.5", "1_0.5", "0.000_1", "1:00"],
                 bool: ["yes", "no", "on", "off", "Yes", "NO", "y", "n", "On"]}[FIELDS[key][0]]
    return _set(key, rng.choice(spellings)), f"params.yaml: {key} must be"


def duplicate_list_item(rng: random.Random) -> Mutation:
    items = rng.sample(METRICS, rng.randint(1, len(METRICS)))
    items.insert(rng.randrange(len(items) + 1), rng.choice(items))
    value = f"[{', '.join(items)}]" if rng.random() < 0.5 else "\n" + "\n".join(f"  - {m}" for m in items)
    return _set("eval.metrics", value), "params.yaml: eval.metrics lists"


CATEGORIES: dict[str, Callable[[random.Random], Mutation]] = {f.__name__: f for f in (
    wrong_type, out_of_range, unknown_key, unknown_section, missing_section, empty, non_yaml, top_level_list,
    duplicate_section, duplicate_key, non_utf8, huge_int, yaml11, duplicate_list_item)}
N_FILES = 100


def _mutations() -> list[tuple[str, str | bytes, str]]:
    rng = random.Random(0)
    names = list(CATEGORIES)
    return [(names[i % len(names)], *CATEGORIES[names[i % len(names)]](rng)) for i in range(N_FILES)]


MUTATIONS = _mutations()


def _write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def _assert_one_error_line(output: str, expect: str) -> None:
    assert "Traceback" not in output, output
    assert output.endswith("\n") and len(output.splitlines()) == 1, output
    assert output.startswith("error: params.yaml: ") and expect in output, (expect, output)


def test_the_mutations_cover_every_category():
    counts = Counter(category for category, _, _ in MUTATIONS)
    assert len(MUTATIONS) == N_FILES and set(counts) == set(CATEGORIES)
    assert min(counts.values()) >= N_FILES // len(CATEGORIES), counts
    assert len({content for _, content, _ in MUTATIONS}) >= 80  # the rng varies them, not 14 copies
    assert all(content != BASE for _, content, _ in MUTATIONS)


@pytest.mark.parametrize("i", range(N_FILES), ids=[f"{i:03d}-{m[0]}" for i, m in enumerate(MUTATIONS)])
def test_a_mutated_params_file_stops_the_stage_with_one_line(i, tmp_path, capsys):
    _, content, expect = MUTATIONS[i]
    path, out = _write(tmp_path / "params.yaml", content), tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        cli.run(prepare.main, ["--params", str(path), "--out", str(out)])
    captured = capsys.readouterr()
    assert e.value.code == 1 and captured.out == ""
    _assert_one_error_line(captured.err, expect)
    assert not out.exists()


@pytest.mark.slow  # a fresh Python process: the full suite runs it
def test_mutated_files_fail_the_same_way_in_a_fresh_process(tmp_path):
    """Through `python -m stages.prepare`, all output counted: no import-time warning may join the one line."""
    picked = {category: (content, expect) for category, content, expect in MUTATIONS
              if category in ("non_utf8", "duplicate_key", "yaml11")}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = {}
    for category, (content, _) in picked.items():
        path = _write(tmp_path / f"{category}.yaml", content)
        cmd = [sys.executable, "-m", "stages.prepare", "--params", str(path), "--out", str(tmp_path / category)]
        procs[category] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.STDOUT, text=True)
    for category, proc in procs.items():
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 1, output
        _assert_one_error_line(output, picked[category][1])
        assert not (tmp_path / category).exists()


def test_the_unmutated_params_file_is_accepted(tmp_path, capsys):
    cli.run(prepare.main, ["--params", str(REPO / "params.yaml"), "--out", str(tmp_path / "out")])
    assert capsys.readouterr().out.startswith("prepared digits: ")
    assert (tmp_path / "out" / "meta.json").exists()
