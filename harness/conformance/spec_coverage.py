"""The spec's normative sentences, and which rules enforce them.

Reads ``proto.md`` and ``proto-extended-headers.md`` (markdown), cuts each
section into sentences, keeps the normative ones (those with MUST, MUST NOT,
SHOULD, SHOULD NOT, REQUIRED, SHALL, RECOMMENDED or MAY NOT) and marks each
with the rules whose ``sentence`` it contains, within the same section.  The
result renders as ``docs/conformance-rules.md`` (``scripts/gen-rules-table``).

Text is compared *normalised*: whitespace collapsed, code backticks and
``*emphasis*`` markers dropped (a ``*`` between two word characters, as in
``n*4``, stays).  That is the only liberty taken with the spec's words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.conformance._rule import Rule

SPEC_FILES = ("proto.md", "proto-extended-headers.md")
"""The two spec files, as copied under ``docs/spec/``."""

_KEYWORDS = re.compile(
    r"\b(MUST NOT|MUST|SHOULD NOT|SHOULD|REQUIRED|SHALL NOT|SHALL|"
    r"RECOMMENDED|MAY NOT)\b"
)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_UNIT_START = re.compile(r"^\s*(?:[-*+]\s|\d+\.\s|[SC]:\s)")
_SENTENCE_END = re.compile(r"(?<!e\.g\.)(?<!i\.e\.)(?<=[.!?])\s+(?=[A-Z`(*'\"])")
_EMPHASIS = re.compile(r"(?<![\w*])\*+(?=\S)|(?<=\S)\*+(?![\w*])")


def normalise(text: str) -> str:
    """Whitespace collapsed, backticks and emphasis asterisks removed."""
    text = text.replace("`", "")
    text = _EMPHASIS.sub("", text)
    return " ".join(text.split())


def heading_text(raw: str) -> str:
    """A markdown heading as a section name: ``"`base:allocation` metadata context"`` →
    ``"base:allocation metadata context"``."""
    return normalise(raw)


@dataclass(frozen=True)
class SpecSentence:
    """One normative sentence of a spec file."""

    file: str
    line: int
    section: str
    text: str
    """Normalised text."""
    keywords: tuple[str, ...]


@dataclass
class SpecFile:
    """A spec file cut into sections (heading -> normalised text) and sentences."""

    name: str
    sections: dict[str, str] = field(default_factory=dict)
    sentences: list[SpecSentence] = field(default_factory=list)


def read_spec(path: str | Path) -> SpecFile:
    """Parse one markdown spec file."""
    path = Path(path)
    spec = SpecFile(path.name)
    section = ""
    units: list[tuple[int, list[str]]] = []  # (first line number, lines) per unit
    section_lines: dict[str, list[str]] = {}

    def flush() -> None:
        for line_number, lines in units:
            text = normalise(" ".join(line.strip() for line in lines))
            for sentence in _split_sentences(text):
                keywords = tuple(dict.fromkeys(_KEYWORDS.findall(sentence)))
                if keywords and '"MUST"' not in sentence:  # not the RFC 2119 boilerplate
                    spec.sentences.append(
                        SpecSentence(spec.name, line_number, section, sentence, keywords)
                    )
        units.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        heading = _HEADING.match(line)
        if heading:
            flush()
            section = heading_text(heading.group(2))
            section_lines.setdefault(section, [])
            continue
        section_lines.setdefault(section, []).append(line)
        if not line.strip():
            flush()
        elif _UNIT_START.match(line) or not units:
            units.append((number, [line]))
        else:
            units[-1][1].append(line)
    flush()
    spec.sections = {name: normalise(" ".join(lines)) for name, lines in section_lines.items()}
    return spec


def _split_sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


def read_specs(directory: str | Path) -> list[SpecFile]:
    """Both spec files from ``directory`` (``docs/spec`` in the repository)."""
    return [read_spec(Path(directory) / name) for name in SPEC_FILES]


def cited_in(rule: Rule, specs: Sequence[SpecFile]) -> list[str]:
    """Names of the spec files where ``rule.sentence`` appears under ``rule.section``."""
    wanted = normalise(rule.sentence)
    return [s.name for s in specs if wanted in s.sections.get(rule.section, "\0")]


def enforcing(sentence: SpecSentence, rules: Iterable[Rule]) -> list[Rule]:
    """The rules whose sentence is part of ``sentence`` (same section)."""
    return [
        r for r in rules if r.section == sentence.section and normalise(r.sentence) in sentence.text
    ]


@dataclass(frozen=True)
class Coverage:
    """Counts for one spec file."""

    file: str
    normative: int
    covered: int
    by_keyword: dict[str, tuple[int, int]]
    """Strongest keyword -> (sentences, covered)."""


def _strongest(keywords: Sequence[str]) -> str:
    order = (
        "MUST NOT",
        "MUST",
        "SHALL NOT",
        "SHALL",
        "REQUIRED",
        "SHOULD NOT",
        "SHOULD",
        "RECOMMENDED",
        "MAY NOT",
    )
    return min(keywords, key=order.index)


def coverage(spec: SpecFile, rules: Sequence[Rule]) -> Coverage:
    by_keyword: dict[str, list[int]] = {}
    covered = 0
    for sentence in spec.sentences:
        hit = bool(enforcing(sentence, rules))
        covered += hit
        counts = by_keyword.setdefault(_strongest(sentence.keywords), [0, 0])
        counts[0] += 1
        counts[1] += hit
    return Coverage(
        spec.name,
        len(spec.sentences),
        covered,
        {k: (v[0], v[1]) for k, v in by_keyword.items()},
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rules: Sequence[Rule], specs: Sequence[SpecFile]) -> str:
    """``docs/conformance-rules.md``: the rules, then per spec file its normative sentences."""
    lines = [
        "# Conformance rules and spec coverage",
        "",
        "Generated by `scripts/gen-rules-table` from the rules in `harness/conformance/` and the",
        "spec copies in `docs/spec/`. Do not edit by hand.",
        "",
        f"## Rules ({len(rules)})",
        "",
        "Each rule enforces one sentence of the spec, quoted verbatim from the section named.",
        "MUST / MUST NOT findings make `nbd-harness lint` exit 1.",
        "",
        "| id | level | role | section | sentence | checks |",
        "|---|---|---|---|---|---|",
    ]
    for item in rules:
        lines.append(
            f"| `{item.id}` | {item.level} | {item.role} | {_cell(item.section)} | "
            f"{_cell(normalise(item.sentence))} | {_cell(item.summary)} |"
        )
    layout = [
        r
        for r in rules
        if not any(r in enforcing(s, rules) for spec in specs for s in spec.sentences)
    ]
    if layout:
        lines += [
            "",
            "These rules cite a statement without a key word (a wire layout, a list of allowed",
            "values), so no normative sentence below names them: "
            + ", ".join(f"`{r.id}`" for r in layout)
            + ".",
        ]
    for spec in specs:
        stats = coverage(spec, rules)
        lines += [
            "",
            f"## Coverage of `{spec.name}`",
            "",
            f"{stats.covered} of {stats.normative} normative sentences have a rule.",
            "",
            "| keyword | sentences | with a rule |",
            "|---|---|---|",
        ]
        for keyword, (total, hit) in sorted(stats.by_keyword.items()):
            lines.append(f"| {keyword} | {total} | {hit} |")
        lines += [
            "",
            "(line: where the sentence's paragraph or list item starts)",
            "",
            "| line | section | sentence | rules |",
            "|---|---|---|---|",
        ]
        for sentence in spec.sentences:
            ids = ", ".join(f"`{r.id}`" for r in enforcing(sentence, rules)) or "not covered"
            lines.append(
                f"| {sentence.line} | {_cell(sentence.section)} | {_cell(sentence.text)} | {ids} |"
            )
    return "\n".join(lines) + "\n"


def summary(rules: Sequence[Rule], specs: Sequence[SpecFile]) -> list[str]:
    """One line per spec file with its counts (what the script prints)."""
    out = [f"{len(rules)} rules"]
    for spec in specs:
        stats = coverage(spec, rules)
        out.append(f"{spec.name}: {stats.covered} of {stats.normative} normative sentences covered")
    return out
