"""docs/configuration.md documents every configuration key — with its type and default — and
nothing else: checked against the configuration's definition (``gateway/config.py``) and
``config.yaml``, which must agree with each other too."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import yaml

from gateway.config import Config

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*([^|]+?)\s*\|\s*([^|]+?)\s*\|")


def type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return f"{type_name(inner)} or null"
    if origin is list:
        return f"list of {type_name(typing.get_args(hint)[0])}s"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "mapping"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}[hint]


def defined_keys() -> dict[str, tuple[str, object]]:
    """Every leaf key of the configuration: its type and default, from the dataclasses."""
    keys = {}

    def walk(cls, instance, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            value = getattr(instance, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], value, f"{prefix}{f.name}.")
            else:
                keys[prefix + f.name] = (type_name(hints[f.name]), value)

    walk(Config, Config(), "")
    return keys


def yaml_keys() -> dict[str, object]:
    found = {}
    mappings = {key for key, (kind, _) in defined_keys().items() if kind.startswith("mapping")}

    def walk(node: dict, prefix: str) -> None:
        for name, value in node.items():
            if isinstance(value, dict) and value and prefix + name not in mappings:
                walk(value, f"{prefix}{name}.")
            else:
                found[prefix + name] = value

    walk(yaml.safe_load((ROOT / "config.yaml").read_text()), "")
    return found


def documented() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        match = ROW.match(line)
        if match and match.group(1) != "key":
            key, kind, default = match.groups()
            assert key not in rows, f"{key} documented twice"
            rows[key] = (kind, default.strip("`"))
    return rows


def _row(key: str, kind: str, default, meaning: str) -> str:
    shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
    return f"| `{key}` | {kind} | `{shown}` | {meaning} |"


def test_config_yaml_lists_every_key_with_its_default():
    defined, listed = defined_keys(), yaml_keys()
    assert set(listed) == set(defined)
    for key, (_, default) in defined.items():
        assert listed[key] == default, key


def yaml_comments() -> dict[str, str]:
    """The comment on each key's line of config.yaml (what the key means), by dotted path."""
    comments, path = {}, []
    for line in (ROOT / "config.yaml").read_text().splitlines():
        match = re.match(r"(\s*)([a-z_]+):([^#]*)(?:#\s*(.*))?$", line)
        if match:
            depth = len(match.group(1)) // 2
            path = path[:depth] + [match.group(2)]
            comments[".".join(path)] = (match.group(4) or "").strip()
    return comments


def test_every_key_is_documented_with_its_type_and_default():
    defined, rows = defined_keys(), documented()
    missing = sorted(set(defined) - set(rows))
    comments = yaml_comments()
    ready = "\n".join(_row(key, *defined[key], comments.get(key, "")) for key in missing)
    assert not missing, (f"not in docs/configuration.md: {missing}; rows to add, in their "
                         f"section's table:\n{ready}")
    for key, (kind, default) in defined.items():
        doc_kind, doc_default = rows[key]
        assert doc_kind == kind, (key, doc_kind, kind)
        assert yaml.safe_load(doc_default) == default, (key, doc_default, default)


def test_nothing_is_documented_that_does_not_exist():
    defined = defined_keys()
    peer_fields = {f"peers.<AE>.{f.name}" for f in dataclasses.fields(
        typing.get_type_hints(Config)["peers"].__args__[1])}
    extra = set(documented()) - set(defined) - peer_fields
    assert not extra, f"documented but not configuration keys: {sorted(extra)}"


def test_the_checker_reads_the_tables():
    """Not vacuous: the documentation's rows are found, and a wrong default would show."""
    rows = documented()
    assert len(rows) >= len(defined_keys())
    assert yaml.safe_load(rows["rest.port"][1]) == 8080
    assert rows["redis.sentinel.hosts"][0] == "list of strings"
