"""Strict parsing of params.yaml into the frozen dataclasses of `pipeline.config.schema`: the only reader of it.

Defaults <- YAML <- command-line overrides. An unknown key, a wrong type or an out-of-range value raises
`ParamsError` with one line naming the key, the rule and the value, before any work starts. Files and overrides
are read as YAML 1.2 (core schema, as DVC's ruamel writes them), not PyYAML's YAML 1.1.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipeline.config import yaml12
from pipeline.config.schema import APA_LOSSES, AUTO, AUTO_NUM_SAMPLES, AUTO_STEPS, Params
from pipeline.errors import ParamsError


def _describe(kind: Any) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, str(kind))


def _rule_text(kind: Any, meta: dict, value: Any) -> str:
    """`an integer >= 1` for a value under its lower bound; the whole range, `an integer >= 1 <= 1000`, for one
    above its upper bound (the int caps are far from any real value, so they are named only when hit)."""
    parts = [_describe(kind)]
    for op, sym in (("ge", ">="), ("gt", ">"), ("le", "<=")):
        bound = meta.get(op)
        if bound is not None and (op != "le" or value > bound):  # an int bound in full: 4294967295, not 4.29e+09
            parts.append(f"{sym} {bound}" if isinstance(bound, int) else f"{sym} {bound:g}")
    return " ".join(parts)


def _coerce(key: str, kind: Any, value: Any, meta: dict) -> Any:
    """Check one value against its annotation and rule; return it in canonical form."""
    if meta.get("auto") and value == AUTO:
        return value
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        if value is None and type(None) in args:  # `int | str` (a number or auto) is not optional
            return None
        return _coerce(key, next(a for a in args if a is not type(None)), value, meta)
    if origin is tuple:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ParamsError(f"params.yaml: {key} must be a non-empty list, got {yaml12.show(value)}")
        out = tuple(_coerce(key, str, v, meta) for v in items)
        repeated = [v for i, v in enumerate(out) if v in out[:i]]
        if repeated:
            raise ParamsError(f"params.yaml: {key} lists {repeated[0]!r} twice, got {yaml12.show(list(out))}")
        return out
    choices = meta.get("choices")
    if kind is str and isinstance(value, bool) and choices and str(value).lower() in choices:
        value = str(value).lower()  # `conditional: true` is a YAML boolean; the field spells it as a choice
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[kind]
    if not ok:
        rule = f"one of {', '.join(map(str, choices))}" if choices else _describe(kind)
        rule += f" or {AUTO}" if meta.get("auto") else ""
        raise ParamsError(f"params.yaml: {key} must be {rule}, got {yaml12.show(value)}")
    if kind is float:
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise ParamsError(f"params.yaml: {key} must be a finite number, got {yaml12.show(value)}")
        value = number
    if choices and value not in choices:
        raise ParamsError(f"params.yaml: {key} must be one of {', '.join(map(str, choices))}, got {yaml12.show(value)}")
    lo_ge, lo_gt, hi = meta.get("ge"), meta.get("gt"), meta.get("le")
    if (lo_ge is not None and value < lo_ge) or (lo_gt is not None and value <= lo_gt) or (
        hi is not None and value > hi
    ):
        raise ParamsError(f"params.yaml: {key} must be {_rule_text(kind, meta, value)}, got {yaml12.show(value)}")
    return value


def _build(cls: type, section: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: {section} must be a mapping of keys, got {yaml12.show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ParamsError(
                f"params.yaml: unknown key {section}.{yaml12.key_name(key)} (known: {', '.join(sorted(fields))})"
            )
    values = {k: _coerce(f"{section}.{k}", hints[k], v, dict(fields[k].metadata)) for k, v in raw.items()}
    return cls(**values)


def _auto_bound(count: int | str, autos: dict, bound=min) -> tuple[int, str]:
    """A count that may be `auto`: the smallest (or, with bound=max, largest) it can resolve to, and how a message
    names it. `Params.resolved` checks the steps again against the count they resolve to."""
    if count != AUTO:
        return count, str(count)
    value = bound(autos.values())
    return value, f"{AUTO}: {value} or {'more' if bound is min else 'less'}"


def _check_combinations(p: Params) -> None:
    penalties = p.gradient_penalties()
    if penalties and p.model.d_norm == "batch":
        raise ParamsError(
            f"params.yaml: model.d_norm=batch cannot be used with {penalties[0]}: BatchNorm mixes samples, "
            "so the per-sample gradient penalty is wrong; use auto, layer, instance or none"
        )
    end, (steps, named) = p.train.cond_ramp_end_steps, _auto_bound(p.train.steps, AUTO_STEPS, max)
    if end and not p.train.cond_ramp_start_steps <= end <= steps:
        raise ParamsError(
            f"params.yaml: train.cond_ramp_end_steps must be 0 or between train.cond_ramp_start_steps "
            f"({p.train.cond_ramp_start_steps}) and train.steps ({named}), got {end}"
        )
    if p.model.skip_excitation and (p.model.arch != "dcgan" or p.data.image_size < 32):
        raise ParamsError(
            f"params.yaml: model.skip_excitation=true needs model.arch=dcgan and data.image_size >= 32 (it gates "
            f"G's 16x16 and larger feature maps), got {p.model.arch} at {p.data.image_size} px"
        )
    if p.train.loss == "wgan" and p.model.spectral_norm:
        raise ParamsError(
            "params.yaml: model.spectral_norm=true cannot be used with train.loss=wgan: weight clipping would clamp "
            "the unnormalised weights that spectral norm rescales anyway; use one Lipschitz constraint"
        )
    if p.train.apa and p.train.loss not in APA_LOSSES:
        raise ParamsError(
            f"params.yaml: train.apa=true needs train.loss {' or '.join(APA_LOSSES)}, got {p.train.loss}: its p "
            "follows E[sign D(x_real)], which has no fixed boundary at 0 under a shift-invariant or least-squares D"
        )
    if p.train.batch_size % p.train.grad_accum_steps:
        raise ParamsError(
            f"params.yaml: train.batch_size must be divisible by train.grad_accum_steps "
            f"({p.train.grad_accum_steps}), got {p.train.batch_size}"
        )
    if (problem := userinfo_problem(p.tracking.uri)) is not None:
        raise ParamsError(f"params.yaml: tracking.uri {problem}")
    samples, named = _auto_bound(p.eval.num_samples, AUTO_NUM_SAMPLES)
    if p.eval.kid_subset_size != AUTO and p.eval.kid_subset_size > samples:  # auto fits the counts it meets
        raise ParamsError(
            f"params.yaml: eval.kid_subset_size must be <= eval.num_samples ({named}), got {p.eval.kid_subset_size}"
        )


CREDENTIALS_HELP = ("give them as MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or in ~/.mlflow/credentials "
                    "([mlflow] mlflow_tracking_username, mlflow_tracking_password)")


def without_userinfo(uri: str) -> str:
    """`uri` with any user:password@ removed: safe to print or keep."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def userinfo_problem(uri: str) -> str | None:
    """Why a tracking URI may not be used: it carries credentials (http://user:password@host), which would be kept
    in params.yaml, git, dvc.lock, DVC's caches and the run's params. None when it carries none."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return None
    return (f"must not carry credentials ({parts.scheme}://USER:PASSWORD@...: they would be kept in git, dvc.lock "
            f"and MLflow); use {without_userinfo(uri)} and {CREDENTIALS_HELP}")


def _load_yaml(text: str, what: str) -> Any:
    try:
        return yaml12.load(text, what)
    except yaml12.YamlError as e:
        raise ParamsError(f"params.yaml: {e}") from None


SECTIONS = tuple(f.name for f in dataclasses.fields(Params))


def _check_sections(raw: Any) -> None:
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: the top level must be a mapping of sections, got {yaml12.show(raw)}")
    for name in raw:
        if name not in SECTIONS:
            raise ParamsError(f"params.yaml: unknown section {yaml12.key_name(name)} (known: {', '.join(SECTIONS)})")


def parse_params(raw: Any, overrides: typing.Iterable[str] = ()) -> Params:
    """Validate a parsed YAML mapping (plus `section.key=value` overrides) into `Params`; absent sections and keys
    take their defaults."""
    raw = {} if raw is None else raw
    _check_sections(raw)
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ParamsError(f"params.yaml: override must look like section.key=value, got {item!r}")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ParamsError(f"params.yaml: {section} must be a mapping of keys, got {yaml12.show(raw[section])}")
        raw[section][name] = _load_yaml(text, f"override {item!r}")
    _check_sections(raw)
    built = {f.name: _build(type(f.default_factory()), f.name, raw.get(f.name)) for f in dataclasses.fields(Params)}
    params = Params(**built)
    _check_combinations(params)
    return params


def load_params(path: str | Path = "params.yaml", overrides: typing.Iterable[str] = ()) -> Params:
    """Read a params file (UTF-8, YAML 1.2, every section present: a truncated file must not train on defaults),
    then apply the overrides. Any problem with the file's content is a one-line `ParamsError`."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params.yaml: file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParamsError(f"params.yaml: cannot read {path}: {e.strerror or type(e).__name__}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ParamsError(f"params.yaml: {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at line {line} "
                          f"(byte offset {e.start})") from None
    raw = _load_yaml(text, str(path))
    if raw is None:
        raise ParamsError(f"params.yaml: {path} is empty: it sets no sections")
    _check_sections(raw)
    for name in SECTIONS:
        if name not in raw:
            raise ParamsError(f"params.yaml: section {name} is missing from {path} (a params file sets all of "
                              f"{', '.join(SECTIONS)})")
        if raw[name] is None:
            raise ParamsError(f"params.yaml: section {name} is empty in {path}; write `{name}: {{}}` for its defaults")
    return parse_params(raw, overrides)


def write_resolved(params: Params, path: str | Path) -> None:
    """Write the resolved config next to the outputs, as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(params.to_dict(), indent=2) + "\n")
