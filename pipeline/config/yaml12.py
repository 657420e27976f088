"""YAML 1.2 for params files, on PyYAML: the core schema (what DVC's ruamel writes), and a key given twice in one
mapping is an error, named with its dotted path. PyYAML alone implements YAML 1.1, where `1:30` is 90 (base 60) and
`no` is false."""

from __future__ import annotations

import re
import reprlib
from typing import Any

import yaml


class YamlError(ValueError):
    """The text is not YAML 1.2 we accept; one line."""


_REPR = reprlib.Repr()  # values in messages: one line, long strings, lists and integers shortened
_REPR.maxstring = _REPR.maxother = 60


def show(value: Any) -> str:
    return _REPR.repr(value)


def key_name(key: Any) -> str:
    return key if isinstance(key, str) and key.isprintable() and key else show(key)


# YAML 1.2 core schema, what DVC's ruamel writes: `1e-4` is a float; `1:30` (base 60), `1_000`, `0b1`, yes/no/on/off
# and dates stay strings, so a typed key refuses them. PyYAML alone implements YAML 1.1.
_NULL_RE = re.compile(r"(?:~|null|Null|NULL|)\Z")
_BOOL_RE = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")
_INT_RE = re.compile(r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT_RE = re.compile(r"(?:[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN))\Z")
_MAX_DIGITS = 100  # a longer integer exceeds every bound (and Python refuses to read one over 4300 digits)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core resolvers; a key given twice in one mapping is an error."""

    yaml_implicit_resolvers: dict = {}
    yaml_constructors = {tag: f for tag, f in yaml.SafeLoader.yaml_constructors.items()  # core tags only
                         if tag is None or tag.rsplit(":", 1)[-1] in ("null", "str", "seq", "map")}

    def __init__(self, stream: str):
        super().__init__(stream)
        self.keys: dict[int, str] = {}  # id(node) -> the dotted key whose value it is, e.g. train.seed

    def key_of(self, node: yaml.Node) -> str:
        return self.keys.get(id(node), f"the value at line {node.start_mark.line + 1}")

    def construct_sequence(self, node: yaml.Node, deep: bool = False) -> list:
        for i, item in enumerate(node.value if isinstance(node, yaml.SequenceNode) else ()):
            self.keys[id(item)] = f"{self.keys.get(id(node), '')}[{i}]"
        return super().construct_sequence(node, deep)

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        prefix = self.keys[id(node)] + "." if id(node) in self.keys else ""
        out, lines = {}, {}
        for key_node, value_node in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                seen = lines.get(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "found an unhashable key",
                                                        key_node.start_mark) from None
            if seen:
                raise YamlError(f"duplicate key {prefix}{key_name(key)} (lines {seen} and {line})")
            lines[key] = line
            self.keys[id(value_node)] = prefix + key_name(key)
            out[key] = self.construct_object(value_node, deep=deep)
        return out


def _scalar(loader: _Loader, node: yaml.Node, pattern: re.Pattern, kind: str) -> str:
    """The node's text, which must spell a YAML 1.2 `kind` (checked again for an explicit tag such as `!!int 1:30`)."""
    text = loader.construct_scalar(node)
    if not pattern.match(text):
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a YAML 1.2 {kind}", node.start_mark)
    return text


def _construct_int(loader: _Loader, node: yaml.Node) -> int:
    text = _scalar(loader, node, _INT_RE, "integer")
    if len(text) > _MAX_DIGITS:
        raise YamlError(f"{loader.key_of(node)} is too large: an integer of {len(text)} digits")
    base = {"0o": 8, "0x": 16}.get(text[:2], 10)
    return int(text[2:] if base != 10 else text, base)


def _construct_float(loader: _Loader, node: yaml.Node) -> float:
    text = _scalar(loader, node, _FLOAT_RE, "float").lower()
    return float(text.replace(".", "") if text.lstrip("+-") in (".inf", ".nan") else text)  # float() reads inf, nan


_Loader.add_implicit_resolver("tag:yaml.org,2002:null", _NULL_RE, [*"~nN", ""])
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_RE, list("tTfF"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT_RE, list("-+0123456789"))  # before float: 12 is both
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+.0123456789"))
_Loader.add_constructor("tag:yaml.org,2002:bool", lambda lo, n: _scalar(lo, n, _BOOL_RE, "boolean").lower() == "true")
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)


def load(text: str, what: str) -> Any:
    """`text` read as YAML 1.2; any failure is a one-line YamlError that says `what` was read."""
    try:
        return yaml.load(text, Loader=_Loader)
    except YamlError:
        raise
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = (str(e.problem or e.context or type(e).__name__).splitlines() or [""])[0]
        raise YamlError(f"{what} is not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise YamlError(f"{what} is not valid YAML: nested too deeply") from None
    except (yaml.YAMLError, ValueError) as e:
        problem = (str(e).splitlines() or [type(e).__name__])[0]
        raise YamlError(f"{what} is not valid YAML: {problem}") from None
