"""A fuzz failure as files: a scenario YAML that ``scenarios run`` replays, and its pcapng.

The scenario lists the shrunk example's steps exactly as the fuzzer played them,
the features they need (``requires``, with an ``unsupported`` fallback, as the
loader insists) and the export's size; its ``description`` says what went wrong
and the spec section of the finding, when there is one, is cited.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import yaml

from harness.scenarios import Scenario, Step, load_scenario
from harness.scenarios.features import step_needs
from harness.scenarios.loader import spec_headings

from .machine import Failure

BASE_SECTIONS = ("Transmission", "Option types")


def scenario_document(name: str, description: str, steps: list[Step], *, size: int,
                      export: str, sections: tuple[str, ...] = BASE_SECTIONS) -> dict[str, Any]:
    """The scenario file's document for ``steps`` against an export of ``size`` bytes."""
    needs: set[str] = set()
    contexts: list[str] = []
    for step in steps:
        if step.action == "connect":
            contexts = list(step.args.get("contexts") or [])
        needs |= step_needs(step.action, step.args, contexts, step.expect)
    known = spec_headings()
    document: dict[str, Any] = {
        "name": name,
        "description": description,
        "spec": [section for section in dict.fromkeys(sections) if section in known]
        or list(BASE_SECTIONS),
        "tags": ["fuzz"],
        "roles": ["server"],
        "export": {"name": export, "size": size},
        "steps": [step.as_dict() for step in steps] or [{"connect": {}}],
    }
    if needs:
        document["requires"] = {"server": sorted(needs)}
        document["fallback"] = {"outcome": "unsupported",
                                "why": "the server lacks a feature the fuzzer used"}
    return document


def write_document(document: dict[str, Any], path: Path) -> Scenario:
    """Write ``document`` as YAML at ``path`` and load it back (validated) as a Scenario."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=100))
    return load_scenario(path)


def failure_name(failure: Failure) -> str:
    """A stable file name: the kind and a short hash of the steps."""
    digest = hashlib.sha256(repr([s.as_dict() for s in failure.steps]).encode()).hexdigest()
    return f"fuzz-{failure.kind}-{digest[:8]}"


def write_failure(failure: Failure, out_dir: Path, *, size: int, export: str,
                  peer: str) -> tuple[Path, Path | None]:
    """The failure's scenario YAML and pcapng in ``out_dir``; their paths."""
    name = failure_name(failure)
    sections = tuple(f.section for f in failure.findings[:1]) + BASE_SECTIONS
    first_line = failure.detail.splitlines()[0] if failure.detail else failure.kind
    description = f"fuzz ({peer}): {failure.kind}: {first_line}"[:300]
    document = scenario_document(name, description, failure.steps, size=size, export=export,
                                 sections=sections)
    path = out_dir / f"{name}.yaml"
    write_document(document, path)
    capture = None
    if failure.pcapng is not None and failure.pcapng.exists():
        capture = out_dir / f"{name}.pcapng"
        shutil.copyfile(failure.pcapng, capture)
    return path, capture


__all__ = ["failure_name", "scenario_document", "write_document", "write_failure"]
