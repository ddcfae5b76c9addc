"""``results.json``: the results store, one JSON document per run.

The workers of a run append one line per case to ``results*.jsonl`` as they
finish (crash-safe, several writers); when the run ends, the whole of it is
written once as ``results.json``: what ran where (environment, every peer and
its exact package), every case with its verdict, findings, steps, timings and
evidence paths, and the counts.  Reports and ``nbd-harness report --diff`` read
that file.  Its format is versioned (``format``) and described by the JSON
Schema ``harness/report/results.schema.json`` (documented in
``docs/results-format.md``).

Evidence paths are relative to the directory holding ``results.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.matrix.results import (
    CaseResult,
    ResultsError,
    latest_per_case,
    load_results,
    load_runs,
    result_files,
)

from ._summary import pair_label, summarize

RESULTS_JSON = "results.json"
SCHEMA_NAME = "nbd-harness-results"
FORMAT = 1
"""The format of ``results.json``; a reader refuses a newer one (its meaning may have changed)."""
SCHEMA_FILE = Path(__file__).with_name("results.schema.json")


@dataclass
class RunResults:
    """A run's results as the store holds them."""

    directory: Path
    """Where the evidence paths are relative to (the directory of ``results.json``)."""
    cases: list[CaseResult]
    runs: list[dict[str, Any]] = field(default_factory=list)
    """What produced them: one entry per run (a merged set lists every shard's)."""
    environment: dict[str, Any] = field(default_factory=dict)
    peers: list[dict[str, Any]] = field(default_factory=list)
    generated: str = ""

    def case(self, case_id: str) -> CaseResult | None:
        return next((case for case in self.cases if case.case_id == case_id), None)

    def peer(self, spec: str) -> dict[str, Any]:
        """The peer entry of ``spec`` (a bare one when the store does not list it)."""
        for entry in self.peers:
            if entry.get("spec") == spec:
                return entry
        return {"spec": spec}


def _case_document(result: CaseResult) -> dict[str, Any]:
    document = result.to_dict()
    document.pop("format", None)
    document["pair"] = pair_label(result)
    return document


def results_document(results: RunResults) -> dict[str, Any]:
    """The JSON document of ``results`` (what :func:`write_results` writes)."""
    summary = summarize(results.cases)
    return {
        "schema": SCHEMA_NAME,
        "format": FORMAT,
        "generated": results.generated or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": list(results.runs),
        "environment": dict(results.environment),
        "peers": list(results.peers),
        "summary": {"total": summary.total, "ok": summary.ok, "verdicts": summary.counts},
        "cases": [_case_document(result) for result in results.cases],
    }


def write_results(results: RunResults) -> Path:
    """Write ``results.json`` into ``results.directory``; return its path."""
    results.directory.mkdir(parents=True, exist_ok=True)
    path = results.directory / RESULTS_JSON
    text = json.dumps(results_document(results), indent=1, sort_keys=True) + "\n"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)  # a reader never sees half a file
    return path


def _from_document(document: Any, path: Path) -> RunResults:
    if not isinstance(document, dict) or document.get("schema") != SCHEMA_NAME:
        raise ResultsError(f"{path}: not an nbd-harness results file (no \"schema\": "
                           f"\"{SCHEMA_NAME}\")")
    version = document.get("format")
    if not isinstance(version, int) or version > FORMAT:
        raise ResultsError(f"{path}: results format {version!r} is newer than this harness "
                           f"reads ({FORMAT}): update nbd-harness")
    cases = document.get("cases")
    if not isinstance(cases, list):
        raise ResultsError(f"{path}: \"cases\" is missing or not a list")
    loaded = []
    for number, case in enumerate(cases):
        try:
            loaded.append(CaseResult.from_dict(case))
        except (TypeError, ValueError) as exc:
            raise ResultsError(f"{path}: cases[{number}] is not a case result: {exc}") from None
    return RunResults(directory=path.parent, cases=loaded, runs=list(document.get("runs", [])),
                      environment=dict(document.get("environment", {})),
                      peers=list(document.get("peers", [])),
                      generated=str(document.get("generated", "")))


def load_run(path: str | Path) -> RunResults:
    """Read a run's results: a ``results.json`` file, or a result directory.

    A directory is read from its ``results.json``; a directory without one (a
    run that was interrupted, or shards not yet merged) from its
    ``results*.jsonl`` and ``run.json``.  Raises :class:`ResultsError` with the
    reason when the path holds no results.
    """
    path = Path(path)
    if path.is_dir():
        if (path / RESULTS_JSON).is_file():
            path = path / RESULTS_JSON
        elif result_files(path):
            return RunResults(directory=path, cases=latest_per_case(load_results(path)),
                              runs=load_runs(path))
        else:
            raise ResultsError(f"{path}: no {RESULTS_JSON} (nor results.jsonl) in it: not a "
                               "result directory of `nbd-harness run`")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: unreadable: {exc}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: not JSON ({exc.msg} at line {exc.lineno}, column "
                           f"{exc.colno}): a truncated or damaged results file?") from None
    return _from_document(document, path)


__all__ = [
    "FORMAT",
    "RESULTS_JSON",
    "SCHEMA_FILE",
    "SCHEMA_NAME",
    "RunResults",
    "load_run",
    "results_document",
    "write_results",
]
