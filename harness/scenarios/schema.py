"""Validate a scenario document against ``scenario.schema.yaml``.

The schema is data (a JSON-Schema subset plus three extensions, described at
the top of the schema file); this module is the small interpreter for it.
Every error names the file, the line and the path of the value at fault::

    scenarios/commands/read.yaml:14: steps[2].read.offset: "4q" is not a size (use e.g. 4096, 64k)

Only the shape of one value at a time is checked here; rules that relate
values to each other are in :mod:`harness.scenarios.loader`.
"""

from __future__ import annotations

import difflib
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from reference_server.config import ConfigError, parse_size

from . import spec_names
from ._yaml import Lines, Path_, ScenarioError, show_path

SCHEMA_PATH = Path(__file__).with_name("scenario.schema.yaml")

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


@cache
def load_schema(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema as data (read once)."""
    with open(path, encoding="utf-8") as stream:
        schema = yaml.safe_load(stream)
    if not isinstance(schema, dict):
        raise ScenarioError(f"{path}: the schema must be a mapping")
    return schema


def describe(value: object) -> str:
    """A value as a message shows it: its type, and its text when short."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f'"{value}"' if len(value) < 60 else f'"{value[:57]}..."'
    return repr(value)


def _is_type(value: object, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _types_of(schema: dict[str, Any]) -> list[str] | None:
    kind = schema.get("type")
    if kind is None:
        return None
    return [kind] if isinstance(kind, str) else list(kind)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


class Validator:
    """Checks values against one schema; raises :class:`ScenarioError` at the first error."""

    def __init__(self, schema: dict[str, Any], lines: Lines) -> None:
        self.schema = schema
        self.definitions: dict[str, Any] = schema.get("definitions", {})
        self.lines = lines

    def fail(self, path: Path_, message: str) -> ScenarioError:
        return self.lines.error(path, f"{show_path(path)}: {message}")

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Follow ``$ref`` (merging sibling keys such as ``description``)."""
        while "$ref" in schema:
            ref = schema["$ref"]
            prefix = "#/definitions/"
            if not isinstance(ref, str) or not ref.startswith(prefix):
                raise ScenarioError(f"{SCHEMA_PATH}: unsupported $ref {ref!r}")
            target = self.definitions.get(ref[len(prefix):])
            if target is None:
                raise ScenarioError(f"{SCHEMA_PATH}: $ref {ref!r} names no definition")
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**target, **rest}
        return schema

    # --- the interpreter ---------------------------------------------------------------

    def check(self, schema: dict[str, Any], value: Any, path: Path_) -> Any:
        """Raise at the first error; return ``value`` with sizes turned into numbers."""
        schema = self.resolve(schema)
        if "oneOf" in schema:
            return self._one_of(schema, value, path)
        types = _types_of(schema)
        if types is not None and not any(_is_type(value, t) for t in types):
            wanted = " or ".join("a mapping" if t == "object" else "a list" if t == "array"
                                 else f"a {t}" if t != "null" else "nothing" for t in types)
            raise self.fail(path, f"expected {wanted}, got {describe(value)}")
        if "enum" in schema:
            choices = schema["enum"]
            if value not in choices:
                shown = ", ".join(str(c) for c in choices)
                hint = _suggest(value, [str(c) for c in choices]) if isinstance(value, str) else ""
                raise self.fail(path, f"{describe(value)} is not one of: {shown} {hint}".rstrip())
        if schema.get("x-size"):
            value = self._size(value, path)
        if "x-const" in schema:
            self._const(schema["x-const"], value, path)
        if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"],
                                                                              value):
            hint = schema.get("x-hint") or f"it must match {schema['pattern']}"
            raise self.fail(path, f"{describe(value)} is not allowed: {hint}")
        if _is_type(value, "number") and "minimum" in schema and value < schema["minimum"]:
            raise self.fail(path, f"{value} is below the minimum {schema['minimum']}")
        if _is_type(value, "number") and "maximum" in schema and value > schema["maximum"]:
            raise self.fail(path, f"{value} is above the maximum {schema['maximum']}")
        if isinstance(value, list):
            return self._array(schema, value, path)
        if isinstance(value, dict):
            if "x-actions" in schema:
                return self._step(schema, value, path)
            return self._object(schema, value, path)
        return value

    def _one_of(self, schema: dict[str, Any], value: Any, path: Path_) -> Any:
        # Choose the alternative by the value's type, so the message fits what was written.
        alternatives = [self.resolve(a) for a in schema["oneOf"]]
        fitting = []
        for alternative in alternatives:
            types = _types_of(alternative)
            if types is None:
                if "enum" in alternative:
                    fits = any(type(choice) is type(value) for choice in alternative["enum"])
                elif alternative.get("x-size") or "x-const" in alternative:
                    fits = _is_type(value, "integer") or isinstance(value, str)
                else:
                    fits = True
            else:
                fits = any(_is_type(value, t) for t in types)
            if fits:
                fitting.append(alternative)
        if not fitting:
            raise self.fail(path, f"{describe(value)} is not allowed here "
                                  f"({self._summary(alternatives)})")
        errors: list[ScenarioError] = []
        for alternative in fitting:
            try:
                return self.check(alternative, value, path)
            except ScenarioError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise self.fail(path, f"{describe(value)} is not allowed here "
                              f"({self._summary(alternatives)})")

    def _summary(self, alternatives: list[dict[str, Any]]) -> str:
        parts = []
        for alternative in alternatives:
            if "enum" in alternative:
                parts.append("one of " + ", ".join(str(c) for c in alternative["enum"]))
            elif alternative.get("x-size"):
                parts.append("a size")
            elif "x-const" in alternative:
                parts.append(f"a {alternative['x-const']} name")
            else:
                types = _types_of(alternative) or ["value"]
                parts.append(" or ".join("a mapping" if t == "object" else "a list"
                                         if t == "array" else f"a {t}" for t in types))
        return "expected " + "; or ".join(parts)

    def _size(self, value: Any, path: Path_) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.fail(path, f"expected a size (e.g. 4096, 64k, 4M), got {describe(value)}")
        try:
            return parse_size(value)
        except ConfigError as exc:
            raise self.fail(path, str(exc)) from None

    def _const(self, kind: str, value: Any, path: Path_) -> None:
        if kind not in spec_names.KINDS:
            raise ScenarioError(f"{SCHEMA_PATH}: x-const {kind!r} is not a constant type")
        if spec_names.lookup(kind, value) is not None:
            if isinstance(value, int) and value < 0:
                raise self.fail(path, f"{value} is negative")
            return
        names = sorted(spec_names.names_of(kind))
        if isinstance(value, str):
            hint = _suggest(value, names)
            raise self.fail(path, f"{describe(value)} is not one of the {kind} names "
                                  f"({hint}known: {', '.join(names)})")
        raise self.fail(path, f"expected a {kind} name such as {names[0]}, or a number; "
                              f"got {describe(value)}")

    def _array(self, schema: dict[str, Any], value: list[Any], path: Path_) -> list[Any]:
        if "minItems" in schema and len(value) < schema["minItems"]:
            raise self.fail(path, f"needs at least {schema['minItems']} item(s), has {len(value)}")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            raise self.fail(path, f"takes at most {schema['maxItems']} item(s), has {len(value)}")
        if schema.get("uniqueItems"):
            seen: list[Any] = []
            for index, item in enumerate(value):
                if item in seen:
                    raise self.fail((*path, index), f"{describe(item)} is listed twice")
                seen.append(item)
        if "items" in schema:
            return [self.check(schema["items"], item, (*path, index))
                    for index, item in enumerate(value)]
        return list(value)

    def _object(self, schema: dict[str, Any], value: dict[Any, Any], path: Path_) -> dict:
        properties: dict[str, Any] = schema.get("properties", {})
        extra = schema.get("additionalProperties", False)
        for key in value:
            if not isinstance(key, str):
                raise self.fail((*path, key), f"keys must be words, not {describe(key)}")
            if key not in properties and extra is False:
                known = sorted(properties)
                hint = _suggest(key, known)
                listing = f"known keys: {', '.join(known)}" if known else "it takes no keys"
                raise self.fail((*path, key), f"unknown key {key!r} ({hint}{listing})")
        for key in schema.get("required", []):
            if key not in value:
                raise self.fail(path, f"missing required key {key!r}")
        out = {}
        for key, item in value.items():
            if key in properties:
                out[key] = self.check(properties[key], item, (*path, key))
            elif isinstance(extra, dict):
                out[key] = self.check(extra, item, (*path, key))
            else:
                out[key] = item
        return out

    def _step(self, schema: dict[str, Any], value: dict[Any, Any], path: Path_) -> dict:
        actions: dict[str, Any] = schema["x-actions"]
        own: dict[str, Any] = schema.get("properties", {})
        present = [key for key in value if key in actions]
        if not present:
            unknown = [k for k in value if k not in own and k != "expect"]
            hint = _suggest(str(unknown[0]), sorted(actions)) if unknown else ""
            what = f"unknown action {unknown[0]!r} ({hint}" if unknown else "no action ("
            raise self.fail(path, f"a step needs exactly one action: {what}"
                                  f"actions: {', '.join(actions)})")
        if len(present) > 1:
            raise self.fail((*path, present[1]), f"one action per step, but this step has "
                                                 f"{present[0]!r} and {present[1]!r}")
        action = present[0]
        spec = actions[action]
        for key in value:
            if key in (action, "expect") or key in own:
                continue
            hint = _suggest(str(key), [*own, "expect"])
            raise self.fail((*path, key), f"unknown key {key!r} beside {action!r} "
                                          f"({hint}allowed: {', '.join([*own, 'expect'])})")
        args_schema = self.resolve(spec.get("args", {"type": ["object", "null"]}))
        out = {action: self.check(args_schema, value[action], (*path, action))}
        if "expect" in value:
            if "expect" not in spec:
                raise self.fail((*path, "expect"), f"{action!r} takes no expect")
            out["expect"] = self.check(spec["expect"], value["expect"], (*path, "expect"))
        for key in own:
            if key in value:
                out[key] = self.check(own[key], value[key], (*path, key))
        return out


def validate(document: Any, lines: Lines, schema: dict[str, Any] | None = None) -> Any:
    """Raise :class:`ScenarioError` (``file:line: path: what``) unless ``document`` fits.

    Returns the document with every size (``"64k"``) turned into a number of bytes.
    """
    schema = schema or load_schema()
    return Validator(schema, lines).check(schema, document, ())


__all__ = ["SCHEMA_PATH", "Validator", "describe", "load_schema", "validate"]
