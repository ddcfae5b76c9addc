"""The pytest plugin: the interop matrix as pytest items (registered as ``nbd_harness``).

Nothing happens unless ``--nbd-matrix`` is given, so the project's own test
suite is untouched.  With it, every scenario file under ``scenarios/`` is a
collector whose items are its cases::

    pytest --nbd-matrix -n auto                       # the default matrix
    pytest --nbd-matrix --nbd-server qemu-nbd@7.2 -k allocation-depth
    pytest --nbd-matrix -m "structured-replies and server-role"

Item ids read ``scenarios/contexts/allocation-depth.yaml::allocation-depth[qemu-nbd@7.2-vs-
reference-client]``.  Markers: each feature the scenario requires (its id from
``matrix/features.toml``, e.g. ``allocation-depth``), ``spec-<section>`` per spec
section it cites, ``server-role`` / ``client-role``, ``group-<folder>``.

Verdicts: ``pass``, and the ``unsupported`` / ``expected-fallback`` the data
predicts, pass; ``fail`` fails the item; ``error`` (the harness or the
environment broke) is reported as a pytest ERROR, never as a pass or a skip.
Safe under pytest-xdist: each worker appends to its own results file in the
result directory (``--nbd-out``, default ``reports/pytest-matrix`` of the checkout, or of
the current directory for an installed package) and every
case has its own evidence directory; ports are chosen by the kernel.  The
controller renders the reports at the end.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.paths import REPORTS_DIR, default_out_help

if TYPE_CHECKING:
    from harness.matrix.cases import Case, Expansion
    from harness.matrix.results import CaseResult, ResultStore

# pytest loads this plugin in every session of this environment, the project's own test
# suite included: what only --nbd-matrix needs (the matrix, the scenarios, the reports)
# is imported inside the hooks that use it.

DEFAULT_OUT = REPORTS_DIR / "pytest-matrix"
_VERDICT_PROPERTY = "nbd_verdict"


class CaseFailed(Exception):
    """A case came to ``fail``: an expectation or a MUST broke, or the data predicted otherwise."""


class CaseError(Exception):
    """A case came to ``error``: the harness or the environment broke."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nbd-harness", "NBD interop matrix (nbd-harness)")
    group.addoption("--nbd-matrix", action="store_true",
                    help="collect the interop matrix (scenarios x peers x versions) as items")
    group.addoption("--nbd-scenario", action="append", default=[], metavar="NAME",
                    help="only these scenarios (name, group/name, group or glob; repeatable)")
    group.addoption("--nbd-scenarios-dir", default=None, metavar="DIR",
                    help="read scenarios from DIR instead of the repository's scenarios/")
    group.addoption("--nbd-server", action="append", default=[], metavar="PEER[@VER]",
                    help="servers to test (repeatable; default: every installed one + profiles)")
    group.addoption("--nbd-client", action="append", default=[], metavar="PEER[@VER]",
                    help="clients to test (repeatable; default: every installed one + "
                    "reference-client)")
    group.addoption("--nbd-profiles", choices=("relevant", "all", "distinct", "none"),
                        default="relevant",
                    help="reference-server profiles in the default server set")
    group.addoption("--nbd-out", default=None, metavar="DIR",
                    help=f"result directory (default: {default_out_help('pytest-matrix')})")
    group.addoption("--nbd-timeout", type=float, default=180.0, metavar="SECONDS",
                    help="time limit of each case")


def _enabled(config: pytest.Config) -> bool:
    return bool(config.getoption("--nbd-matrix", default=False))


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _out(config: pytest.Config) -> Path:
    configured = config.getoption("--nbd-out")
    return (Path(configured) if configured else DEFAULT_OUT).absolute()


def _library(config: pytest.Config) -> Path:
    from harness.scenarios import LIBRARY

    configured = config.getoption("--nbd-scenarios-dir")
    return Path(configured).absolute() if configured else LIBRARY


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        # `pytest --nbd-matrix` alone runs the matrix, not the project's own tests.
        config.args = [os.fspath(_library(config))]
    for line in ("server-role: a server under test, driven by the reference client",
                 "client-role: a real client under test, against the reference server"):
        config.addinivalue_line("markers", line)
    if not _is_worker(config):
        _fresh(_out(config))
    config.stash[_STATE] = _State()


def _fresh(out: Path) -> None:
    """Start a fresh result set in ``out``: only what a previous session wrote there goes."""
    from harness.matrix.results import CASES_DIR, RUN_FILE

    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("results*.jsonl"):
        stale.unlink()
    (out / RUN_FILE).unlink(missing_ok=True)
    shutil.rmtree(out / CASES_DIR, ignore_errors=True)


class _State:
    """Per-session state: the expansion (lazy), and the verdicts seen (controller side)."""

    def __init__(self) -> None:
        self.expansion: Expansion | None = None
        self.by_path: dict[str, list[Case]] | None = None
        self.store: ResultStore | None = None
        self.markers: set[str] = set()


_STATE = pytest.StashKey[_State]()


def _expansion(config: pytest.Config) -> dict[str, list[Case]]:
    state = config.stash[_STATE]
    if state.by_path is None:
        from harness.matrix.selection import MatrixRequest, build_matrix

        request = MatrixRequest(
            scenarios=config.getoption("--nbd-scenario"),
            servers=config.getoption("--nbd-server"),
            clients=config.getoption("--nbd-client"),
            profiles=config.getoption("--nbd-profiles"),
            timeout=config.getoption("--nbd-timeout"),
            library=_library(config),
        )
        try:
            state.expansion = build_matrix(request)
        except Exception as exc:  # a user error: one clear line, not a collection traceback
            raise pytest.UsageError(f"nbd-harness matrix: {exc}") from None
        state.by_path = {}
        for case in state.expansion.cases:
            path = os.fspath(case.scenario.path.resolve()) if case.scenario.path else ""
            state.by_path.setdefault(path, []).append(case)
    return state.by_path


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    config = parent.config
    if not _enabled(config) or file_path.suffix != ".yaml":
        return None
    if _library(config).resolve() not in file_path.resolve().parents:
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


class ScenarioFile(pytest.File):
    """One scenario file: its cases are the items."""

    def collect(self) -> list[CaseItem]:
        cases = _expansion(self.config).get(os.fspath(self.path.resolve()), [])
        return [CaseItem.from_parent(self, name=case.id, case=case) for case in cases]


class CaseItem(pytest.Item):
    """One case of the matrix: run in setup (so an ``error`` verdict is a pytest ERROR)."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.result: CaseResult | None = None
        for name in _markers(case):
            _register_marker(self.config, name)
            self.add_marker(name)

    def setup(self) -> None:
        from harness.matrix.runner import run_case

        store = _store(self.config)
        result = run_case(self.case, store, worker=_worker_name(self.config))
        store.append(result)
        self.result = result
        self.user_properties.append((_VERDICT_PROPERTY, result.verdict))
        self.user_properties.append(("nbd_expected", result.expected or ""))
        self.user_properties.append(("nbd_evidence", result.evidence.get("directory", "")))
        if result.verdict == "error":
            raise CaseError(result.detail)

    def runtest(self) -> None:
        assert self.result is not None
        if self.result.verdict == "fail":
            raise CaseFailed(self.result.detail)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: str | None = None) -> str:
        if not isinstance(excinfo.value, CaseFailed | CaseError) or self.result is None:
            return str(super().repr_failure(excinfo))
        return _describe(self.result)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


def _describe(result: CaseResult) -> str:
    from harness.report import citation

    lines = [f"{result.case_id}: {result.verdict} (observed {result.observed}, "
             f"expected {result.expected or 'any good verdict'})"]
    if result.expectation:
        lines.append(f"  why expected: {result.expectation}")
    lines.append(f"  {result.detail}")
    lines += [f"  {citation(f)}" for f in result.mandatory_findings()]
    failed = next((s for s in result.steps if s.get("status") in ("failed", "error")), None)
    if failed is not None:
        lines.append(f"  step {failed.get('phase')}[{failed.get('index')}] "
                     f"{failed.get('action')} (line {failed.get('line')}): "
                     f"{failed.get('detail', '')}")
    if "directory" in result.evidence:
        lines.append(f"  evidence: {result.evidence['directory']}")
    return "\n".join(lines)


def _markers(case: Case) -> list[str]:
    names = list(case.features())
    names += [f"spec-{_slug(section)}" for section in case.scenario.spec]
    names.append(f"{case.role}-role")
    if case.scenario.group:
        names.append(f"group-{_slug(case.scenario.group)}")
    return names


def _register_marker(config: pytest.Config, name: str) -> None:
    """Declare a marker before it is used, so ``--strict-markers`` and ``-m`` accept it."""
    state = config.stash[_STATE]
    if name not in state.markers:
        state.markers.add(name)
        config.addinivalue_line("markers", f"{name}: nbd-harness matrix")


def _worker_name(config: pytest.Config) -> str:
    worker = getattr(config, "workerinput", {}).get("workerid")
    return str(worker or "main")


def _store(config: pytest.Config) -> ResultStore:
    state = config.stash[_STATE]
    if state.store is None:
        from harness.matrix.results import ResultStore

        state.store = ResultStore(_out(config), name=f"results-{_worker_name(config)}.jsonl")
    return state.store


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int,
                            config: pytest.Config) -> None:
    if not _enabled(config) or _is_worker(config):
        return
    from harness.matrix.results import ResultsError, latest_per_case, load_results
    from harness.report import collect, counts_line, summarize, write_reports

    out = _out(config)
    terminalreporter.section("nbd-harness matrix")
    try:
        results = load_results(out)
    except ResultsError:
        terminalreporter.write_line("no case ran")
        return
    results = latest_per_case(results)
    paths = write_reports(collect(out, results))
    terminalreporter.write_line(f"{len(results)} cases: {counts_line(summarize(results))}")
    state = config.stash.get(_STATE, None)
    expansion = state.expansion if state else None
    if expansion is not None and expansion.excluded:
        terminalreporter.write_line(
            f"{len(expansion.excluded)} scenario/peer combinations make no case "
            "(`nbd-harness run --list` says why)")
    terminalreporter.write_line(f"reports: {paths['html']} {paths['summary']} "
                                f"{paths['junit']}")


__all__ = ["CaseError", "CaseFailed", "CaseItem", "ScenarioFile"]
