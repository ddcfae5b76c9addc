"""The results store: one JSON line per case, evidence beside it, shards merged into one set.

A result directory holds::

    results.jsonl           one CaseResult per line (several writers: results-gw0.jsonl ...);
                            gzip'd (results.jsonl.gz) once results.json holds the whole run
    run.json                what produced it: command, shard, peers, wall time (one per shard)
    cases/SLUG/             evidence of each case: capture.pcapng, wire.txt, findings.json,
                            peer logs, steps.json

Evidence paths in a result are relative to the result directory, so a directory
can be copied, archived by CI and merged with the directories of other shards
(:func:`merge_results`) without rewriting anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.verdict import Verdict

RESULTS_GLOB = "results*.jsonl"
RESULTS_FILE = "results.jsonl"
COMPRESSED_SUFFIX = ".gz"
RUN_FILE = "run.json"
CASES_DIR = "cases"
FORMAT_VERSION = 1


class ResultsError(UserError, ValueError):
    """A result directory that cannot be read or merged; the message says which and why."""


def case_slug(case_id: str) -> str:
    """A directory name for a case id: ``ctx[a@1-vs-b@2]`` -> ``ctx_a@1-vs-b@2_``."""
    return re.sub(r"[^A-Za-z0-9.@+=-]", "_", case_id)


@dataclass(frozen=True)
class CaseResult:
    """Everything one case came to, JSON-ready.

    ``verdict`` is the final word (see :func:`harness.matrix.verdict.judge`),
    ``observed`` what the steps and the wire checks came to, ``expected`` what
    the matrix data predicted (None when nothing was: an external server).
    ``findings`` are :meth:`Finding.to_dict` dicts; ``sessions`` say what each
    connection negotiated (from the reference server's session records, or
    from the decoded capture); ``evidence`` maps a name (``capture``,
    ``wire``, ``server-log``...) to a path relative to the result directory.
    """

    case_id: str
    scenario: str
    role: str
    """The side under test: ``server``, ``client`` or ``both``."""
    server: str
    client: str
    verdict: str
    observed: str
    expected: str | None
    detail: str = ""
    description: str = ""
    spec: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    expectation: str = ""
    """Why the data predicts ``expected`` (e.g. "qemu 2.10 lacks structured-replies")."""
    duration: float = 0.0
    started: float = 0.0
    findings: tuple[dict[str, Any], ...] = ()
    steps: tuple[dict[str, Any], ...] = ()
    sessions: tuple[dict[str, Any], ...] = ()
    evidence: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    """What each peer reported as its version (``server``, ``client``)."""
    shard: str = ""
    worker: str = ""
    group: str = ""
    """The scenario's group (``options``, ``contexts``...): its directory in ``scenarios/``."""

    @property
    def final(self) -> Verdict:
        return Verdict.parse(self.verdict)

    @property
    def ok(self) -> bool:
        return self.final.benign

    def mandatory_findings(self) -> list[dict[str, Any]]:
        """Findings at MUST / MUST NOT level."""
        return [f for f in self.findings if f.get("level") in ("MUST", "MUST NOT")]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["format"] = FORMAT_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("spec", "features", "findings", "steps", "sessions"):
            if key in values:
                values[key] = tuple(values[key] or ())
        return cls(**values)


class ResultStore:
    """Appends results to ``directory/NAME`` (one JSON line per case), safe across processes."""

    def __init__(self, directory: Path, name: str = RESULTS_FILE) -> None:
        self.directory = Path(directory)
        self.path = self.directory / name

    def case_dir(self, case_id: str) -> Path:
        """The evidence directory of a case (created)."""
        path = self.directory / CASES_DIR / case_slug(case_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def append(self, result: CaseResult) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(result.to_dict(), sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as stream:
            # One write under an exclusive lock: lines of concurrent writers never interleave.
            fcntl.flock(stream, fcntl.LOCK_EX)
            try:
                stream.write(line)
                stream.flush()
            finally:
                fcntl.flock(stream, fcntl.LOCK_UN)

    def write_run(self, info: dict[str, Any]) -> Path:
        """Write ``run.json`` (what produced this directory)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / RUN_FILE
        path.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        return path


def result_files(directory: Path) -> list[Path]:
    """The line files of ``directory``: ``results*.jsonl``, and the gzip'd ones of a finished
    run (:func:`compress_result_lines`)."""
    directory = Path(directory)
    return sorted([*directory.glob(RESULTS_GLOB),
                   *directory.glob(RESULTS_GLOB + COMPRESSED_SUFFIX)])


def compress_result_lines(directory: Path) -> None:
    """Gzip the line files once the run's ``results.json`` holds every result: they stay
    readable (:func:`load_results`, ``run --merge``), at a tenth of the size."""
    for path in Path(directory).glob(RESULTS_GLOB):
        target = path.with_name(path.name + COMPRESSED_SUFFIX)
        if target.exists():  # a second run in the same directory: keep both, read both
            target = path.with_name(f"{path.stem}-{time.strftime('%Y%m%d%H%M%S')}.jsonl"
                                    + COMPRESSED_SUFFIX)
        with open(path, "rb") as source, gzip.open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
        path.unlink()


def _read_lines(path: Path) -> Iterator[CaseResult]:
    opener = gzip.open if path.suffix == COMPRESSED_SUFFIX else open
    with opener(path, "rt", encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                yield CaseResult.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise ResultsError(f"{path}:{number}: not a case result: {exc}") from None


def load_results(directory: Path) -> list[CaseResult]:
    """Every result in ``directory`` (all ``results*.jsonl`` files), in file order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: no such result directory")
    files = result_files(directory)
    if not files:
        raise ResultsError(f"{directory}: no {RESULTS_FILE} in it (not a result directory)")
    results: list[CaseResult] = []
    for path in files:
        results.extend(_read_lines(path))
    return results


def load_runs(directory: Path) -> list[dict[str, Any]]:
    """The run descriptions of ``directory`` (a merged directory lists every shard's)."""
    path = Path(directory) / RUN_FILE
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"{path}: unreadable: {exc}") from None
    return list(info.get("shards", [info]))


def latest_per_case(results: Iterable[CaseResult]) -> list[CaseResult]:
    """One result per case id (the latest started wins: a re-run shard replaces the old)."""
    chosen: dict[str, CaseResult] = {}
    for result in results:
        current = chosen.get(result.case_id)
        if current is None or result.started >= current.started:
            chosen[result.case_id] = result
    return sorted(chosen.values(), key=lambda r: r.case_id)


def merge_results(sources: Iterable[Path], destination: Path) -> list[CaseResult]:
    """Merge the result directories of several shards into ``destination``.

    Each case's evidence directory is copied along; a case present in several
    sources keeps its latest run.  ``destination`` gets one ``results.jsonl``
    and a ``run.json`` listing every source's runs.  Returns the merged results.
    """
    destination = Path(destination)
    sources = [Path(source) for source in sources]
    if not sources:
        raise ResultsError("nothing to merge: give at least one result directory")
    loaded: list[tuple[Path, CaseResult]] = []
    runs: list[dict[str, Any]] = []
    for source in sources:
        if source.resolve() == destination.resolve():
            raise ResultsError(f"{source}: the merge destination cannot also be a source")
        loaded.extend((source, result) for result in load_results(source))
        runs.extend(load_runs(source))
    origin = {id(result): source for source, result in loaded}
    merged = latest_per_case(result for _, result in loaded)
    destination.mkdir(parents=True, exist_ok=True)
    store = ResultStore(destination)
    with contextlib.suppress(FileNotFoundError):
        store.path.unlink()
    for result in merged:
        source = origin[id(result)]
        for relative in set(result.evidence.values()):
            src = source / relative
            dst = destination / relative
            if src.exists() and src.resolve() != dst.resolve():
                dst.parent.mkdir(parents=True, exist_ok=True)
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                else:
                    shutil.copy2(src, dst)
        store.append(result)
    store.write_run({"merged": time.time(), "sources": [os.fspath(s) for s in sources],
                     "shards": runs})
    return merged


__all__ = [
    "CASES_DIR",
    "RESULTS_FILE",
    "RUN_FILE",
    "CaseResult",
    "ResultStore",
    "ResultsError",
    "case_slug",
    "compress_result_lines",
    "latest_per_case",
    "load_results",
    "load_runs",
    "merge_results",
    "result_files",
]
