"""docs/protocol.md and docs/asyncapi.yaml, loaded, and a small JSON Schema checker for their payloads.

Shared by the docs test and the fuzz test (which checks every reply against the documented schema).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_MD = ROOT / "docs" / "protocol.md"
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"


# ---- the documents, loaded -----------------------------------------------------------


@cache
def markdown() -> str:
    return PROTOCOL_MD.read_text()


@cache
def md_examples() -> list[tuple[str, dict[str, Any]]]:
    """(direction, message) for every ```json client / ```json server block of protocol.md."""
    out = []
    for direction, body in re.findall(r"```json (client|server)\n(.*?)```", markdown(), re.S):
        out.append((direction, json.loads(body)))
    return out


@cache
def api() -> dict[str, Any]:
    return yaml.safe_load(ASYNCAPI.read_text())


def deref(node: Any) -> Any:
    """Follows local `$ref`s ('#/a/b/c') until a node without one."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = api()
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def operation_messages(action: str) -> dict[str, set[str]]:
    """channel key -> names of the messages in its operations with `action` (send = server pushes)."""
    out: dict[str, set[str]] = {}
    channels = api()["channels"]
    for op in api()["operations"].values():
        if op["action"] != action:
            continue
        channel = next(k for k, v in channels.items() if v is deref(op["channel"]))
        out.setdefault(channel, set()).update(deref(m)["name"] for m in op["messages"])
    return out


def api_message(name: str, direction: str) -> dict[str, Any]:
    """The components message for a type name; `direction` is 'client' or 'server'."""
    return api()["components"]["messages"][f"{direction}.{name}"]


def payload_schema(name: str, direction: str) -> dict[str, Any]:
    return deref(api_message(name, direction)["payload"])


# ---- a small JSON Schema checker (the keywords asyncapi.yaml uses) ----------------------


def violations(value: Any, sch: dict[str, Any], path: str = "$", floats: bool = False) -> list[str]:
    """How `value` breaks `sch`. With `floats`, a `number` must be a float, as the server sends every
    one (protocol.md §1 "Formats"): an app's typed decoder may take `15` for an integer field."""
    sch = deref(sch)
    errs: list[str] = []
    if "oneOf" in sch:
        if sum(not violations(value, s, path, floats) for s in sch["oneOf"]) != 1:
            errs.append(f"{path}: matches not exactly one of oneOf")
        return errs
    if "const" in sch and value != sch["const"]:
        errs.append(f"{path}: {value!r} != const {sch['const']!r}")
    if "enum" in sch and value not in sch["enum"]:
        errs.append(f"{path}: {value!r} not in {sch['enum']}")
    kind = sch.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, float) if floats else isinstance(v, int | float) and not isinstance(v, bool),
        "null": lambda v: v is None,
    }
    if kind is not None and not checks[kind](value):
        return [*errs, f"{path}: {value!r} is not {kind}"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in sch and value < sch["minimum"]:
            errs.append(f"{path}: {value} < {sch['minimum']}")
        if "maximum" in sch and value > sch["maximum"]:
            errs.append(f"{path}: {value} > {sch['maximum']}")
    if isinstance(value, str):
        if "maxLength" in sch and len(value) > sch["maxLength"]:
            errs.append(f"{path}: longer than {sch['maxLength']}")
        if "minLength" in sch and len(value) < sch["minLength"]:
            errs.append(f"{path}: shorter than {sch['minLength']}")
        if "pattern" in sch and not re.search(sch["pattern"], value):
            errs.append(f"{path}: does not match {sch['pattern']}")
    if isinstance(value, dict):
        props = sch.get("properties", {})
        errs += [f"{path}.{k}: required" for k in sch.get("required", []) if k not in value]
        if sch.get("additionalProperties") is False:
            errs += [f"{path}.{k}: not in the schema" for k in value if k not in props]
        for k, v in value.items():
            if k in props:
                errs += violations(v, props[k], f"{path}.{k}", floats)
    if isinstance(value, list):
        if "minItems" in sch and len(value) < sch["minItems"]:
            errs.append(f"{path}: fewer than {sch['minItems']} items")
        if "maxItems" in sch and len(value) > sch["maxItems"]:
            errs.append(f"{path}: more than {sch['maxItems']} items")
        items = sch.get("items")
        if isinstance(items, list):  # a tuple (draft-07 form): one schema per position
            for i, (v, s) in enumerate(zip(value, items, strict=False)):
                errs += violations(v, s, f"{path}[{i}]", floats)
        elif items is not None:
            for i, v in enumerate(value):
                errs += violations(v, items, f"{path}[{i}]", floats)
    return errs
