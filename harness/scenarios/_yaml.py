"""YAML documents with the line of every value, from ``yaml.compose`` nodes.

:func:`read_document` turns a YAML file into plain Python values (dicts,
lists, strings, numbers, booleans, None) plus a :class:`Lines` index from
each value's path (``("steps", 3, "read", "offset")``) to its line, so every
later error can say ``file:line: what is wrong``.

Two YAML 1.1 traps are closed here: ``on``/``off``/``yes``/``no`` stay
strings (only ``true``/``false`` are booleans; ``tls: off`` means "off"), and
a key given twice in one mapping is an error instead of the last one winning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import UserError

Path_ = tuple[str | int, ...]
"""Where a value sits in a document: mapping keys and list indexes."""

_BOOL_TAG = "tag:yaml.org,2002:bool"
_STR_TAG = "tag:yaml.org,2002:str"


class ScenarioError(UserError, ValueError):
    """A scenario file that cannot be used; the message starts with ``file:line:``."""


@dataclass
class Lines:
    """The 1-based line of every value of one document, by path."""

    source: str
    by_path: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int:
        """The line of ``path``, or of its nearest enclosing value that has one."""
        path = tuple(path)
        while path:
            if path in self.by_path:
                return self.by_path[path]
            path = path[:-1]
        return self.by_path.get((), 1)

    def error(self, path: Path_, message: str) -> ScenarioError:
        """A :class:`ScenarioError` ``source:line: message`` for the value at ``path``."""
        return ScenarioError(f"{self.source}:{self.line(path)}: {message}")


def show_path(path: Path_) -> str:
    """``steps[3].read.offset`` for ``("steps", 3, "read", "offset")``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(document)"


class _Constructor(yaml.constructor.SafeConstructor):
    """Scalars only: PyYAML's safe rules, minus YAML 1.1's ``on``/``off`` booleans."""


def _scalar(constructor: _Constructor, node: yaml.ScalarNode) -> Any:
    if node.tag == _BOOL_TAG and node.value.lower() not in ("true", "false"):
        return node.value
    return constructor.construct_object(node, deep=True)


def _walk(
    node: yaml.Node, path: Path_, lines: Lines, constructor: _Constructor
) -> Any:
    lines.by_path[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ScenarioError(
                    f"{lines.source}:{key_node.start_mark.line + 1}: a mapping key must be "
                    "a plain word, not a list or mapping"
                )
            key = _scalar(constructor, key_node)
            if key in out:
                raise ScenarioError(
                    f"{lines.source}:{key_node.start_mark.line + 1}: key {key!r} is given "
                    f"twice in {show_path(path)} (first on line "
                    f"{lines.by_path[(*path, key)]})"
                )
            lines.by_path[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _walk(value_node, (*path, key), lines, constructor)
            # Keep the key's line for the value when the value starts on a later line
            # (a nested block): messages then point at the key the user wrote.
            lines.by_path[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _walk(item, (*path, index), lines, constructor)
            for index, item in enumerate(node.value)
        ]
    assert isinstance(node, yaml.ScalarNode)
    return _scalar(constructor, node)


def parse_text(text: str, source: str) -> tuple[Any, Lines]:
    """The value of one YAML document and its :class:`Lines`; raise :class:`ScenarioError`."""
    lines = Lines(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = exc.problem or exc.context or "not valid YAML"
        if "another document" in problem:
            raise ScenarioError(f"{where}: holds more than one YAML document (one scenario "
                                "per file)") from None
        raise ScenarioError(f"{where}: not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{source}:1: not valid YAML: {exc}") from None
    if node is None:
        raise ScenarioError(f"{source}:1: the file is empty")
    try:
        value = _walk(node, (), lines, _Constructor())
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 1
        raise ScenarioError(f"{source}:{line}: {exc.problem}") from None
    return value, lines


def read_document(path: Path, source: str | None = None) -> tuple[Any, Lines]:
    """Read and parse ``path``; ``source`` is the name messages use (default: the path)."""
    name = source or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(f"{name}: no such file") from None
    except UnicodeDecodeError:
        raise ScenarioError(f"{name}:1: the file is not UTF-8") from None
    except OSError as exc:
        raise ScenarioError(f"{name}: cannot read: {exc.strerror}") from None
    return parse_text(text, name)


__all__ = ["Lines", "ScenarioError", "parse_text", "read_document", "show_path"]
