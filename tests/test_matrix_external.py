"""Which scenarios can judge a server the harness did not start (``nbd-harness check``)."""

from __future__ import annotations

import pytest

from harness.client import parse_uri
from harness.matrix.external import ExternalExport, external_cases, not_applicable
from harness.peers import DataRange, ExportSpec, Layer
from harness.scenarios import ExportRequirements, Scenario, Step
from harness.scenarios.model import DEFAULT_EXPORT_SIZE

URI = "nbd://127.0.0.1:10809/vol"
MIB = 1 << 20


def external(size: int = 8 * MIB, *, read_only: bool = False, tls: bool = False,
             concurrent: bool = True) -> ExternalExport:
    return ExternalExport(URI, parse_uri(URI), size, read_only, tls, concurrent)


def scenario(*steps: Step, export: ExportRequirements | None = None) -> Scenario:
    return Scenario(name="s", description="d", spec=("Option types",), roles=("server",),
                    export=export or ExportRequirements(), steps=(Step("connect"), *steps))


def exporting(**changes: object) -> ExportRequirements:
    """A scenario export with ``changes`` to the default export."""
    return ExportRequirements(ExportSpec(**{"size": DEFAULT_EXPORT_SIZE, "image_format": "raw",
                                            **changes}))  # type: ignore[arg-type]


def read(offset: int, length: int, **expect: object) -> Step:
    return Step("read", {"offset": offset, "length": length}, expect or None)


def write(offset: int, length: int) -> Step:
    return Step("write", {"offset": offset, "length": length})


@pytest.mark.parametrize(("wanted", "why"), [
    (scenario(export=exporting(layers=(Layer((DataRange(0, 65536),)),))), "preset export"),
    (scenario(export=ExportRequirements(handshake="oldstyle")), "oldstyle server"),
    (scenario(export=exporting(min_block_size=4096)), "block size"),
    (scenario(export=ExportRequirements(tls="required")), "needs TLS required"),
    (scenario(export=exporting(read_only=True)), "read-only export"),
    (scenario(write(0, 4096)), "writes (use --allow-writes)"),
    (scenario(read(0, 4096)), "reads data it did not write"),
    (scenario(Step("request", {"command": "NBD_CMD_FLUSH"})), "reads data it did not write"),
    (scenario(Step("map", {"context": "base:allocation"}, {"extents": [[0, 4096, 0]]})),
     "exact extents"),
    (scenario(Step("expect_negotiated", {"size": 4 * MIB})), "expects the size"),
    (scenario(Step("connect", {"as": "second"})), None),
])
def test_what_an_unknown_export_cannot_answer(wanted: Scenario, why: str | None) -> None:
    reason = not_applicable(wanted, external(), allow_writes=False)
    if why is None:
        assert reason is None
    else:
        assert reason is not None and why in reason


def test_reads_of_what_the_scenario_wrote_are_fine_with_writes_allowed() -> None:
    wanted = scenario(write(64 * 1024, 8192), read(64 * 1024, 4096, data="model"),
                      Step("zero", {"offset": 0, "length": 4096}),
                      Step("request", {"command": "NBD_CMD_FLUSH"}))
    assert not_applicable(wanted, external(), allow_writes=False) == \
        "writes (use --allow-writes)"
    assert not_applicable(wanted, external(), allow_writes=True) is None
    trimmed = scenario(write(0, 8192), Step("trim", {"offset": 0, "length": 8192}),
                       read(0, 4096))
    assert not_applicable(trimmed, external(), allow_writes=True) == \
        "reads data it did not write"


def test_sizes_and_concurrency_of_the_server() -> None:
    beyond = scenario(Step("read", {"offset": 4 * MIB, "length": 4096}, {"error": "NBD_EINVAL"}))
    assert "tests the end" in not_applicable(beyond, external(), allow_writes=False)
    assert not_applicable(beyond, external(4 * MIB), allow_writes=False) is None
    two = scenario(Step("connect", {"as": "second"}))
    assert "one client at a time" in not_applicable(two, external(concurrent=False),
                                                    allow_writes=False)


def test_applicable_scenarios_take_the_servers_export() -> None:
    fits = scenario(Step("expect_negotiated", {"size": "export"}))
    expansion = external_cases([fits, scenario(read(0, 1))], external(3 * MIB))
    (case,) = expansion.cases
    assert case.scenario.export.spec.size == 3 * MIB and case.scenario.export.spec.name == "vol"
    assert case.expected is None and case.id == f"s[external:{URI}-vs-reference-client]"
    assert [e.reason for e in expansion.excluded] == ["reads data it did not write"]


def test_no_expectation_about_names_the_server_was_not_asked_about() -> None:
    """A server may serve any name and list what it likes (nbdkit serves any, lists "")."""
    refuses = scenario(Step("option", {"option": "NBD_OPT_GO", "name": "no-such-export"},
                            {"final": "NBD_REP_ERR_UNKNOWN"}))
    assert "'no-such-export'" in not_applicable(refuses, external(), allow_writes=False)
    lists = scenario(Step("list_exports", {}, {"include": ["disk"]}))
    assert "'disk'" in not_applicable(lists, external(), allow_writes=False)
    own = scenario(Step("list_exports", {}, {"include": ["vol"]}))  # the URI's export
    assert not_applicable(own, external(), allow_writes=False) is None
