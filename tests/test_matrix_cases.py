"""Expanding scenarios x peers into cases, and the outcome the matrix data predicts for each."""

from __future__ import annotations

import pytest

from harness.errors import UserError
from harness.matrix.cases import (
    Expansion,
    MatrixError,
    PeerRef,
    expand,
    expect,
    known_breaches,
    parse_peer,
    real_peer,
    reference_client,
    reference_profiles,
    reference_server,
    relevant_profiles,
    select_scenarios,
    server_features_for,
)
from harness.peers import ExportSpec
from harness.scenarios import ExportRequirements, Fallback, Scenario, Step
from harness.scenarios.model import DEFAULT_EXPORT_SIZE
from harness.verdict import Verdict


def scenario(name: str = "sr-read", *, server: set[str] | None = None,
             client: set[str] | None = None, outcome: str | None = "expected-fallback",
             roles: tuple[str, ...] = ("server",), group: str = "options",
             export: ExportRequirements | None = None) -> Scenario:
    return Scenario(
        name=name, description=f"{name} for the tests", spec=("Option types",),
        roles=roles,  # type: ignore[arg-type]
        export=export or ExportRequirements(),
        requires_server=frozenset(server or ()), requires_client=frozenset(client or ()),
        fallback=Fallback(outcome) if outcome else None,  # type: ignore[arg-type]
        steps=(Step("connect"),) if "server" in roles else (),
        client_steps=(Step("client_action", {"action": "info"}),) if "client" in roles else (),
        group=group,
    )


# --- expectations -----------------------------------------------------------------------------


def test_both_sides_have_the_features_so_pass_is_expected() -> None:
    wanted = scenario(server={"structured-replies"}, client={"structured-replies"})
    expectation = expect(wanted, reference_server("qemu-2.11"), reference_client())
    assert expectation.verdict is Verdict.PASS
    assert expectation.missing_server == () and expectation.why == ""


def test_a_qemu_2_10_server_makes_the_client_fall_back() -> None:
    """The issue's example: qemu 2.10 has no structured replies; falling back is the pass."""
    wanted = scenario(server={"structured-replies"}, client={"structured-replies"})
    expectation = expect(wanted, reference_server("qemu-2.10"), reference_client())
    assert expectation.verdict is Verdict.EXPECTED_FALLBACK
    assert expectation.missing_server == ("structured-replies",)
    assert "reference-server@qemu-2.10 lacks structured-replies" in expectation.why
    # The real program follows the same data.
    assert expect(wanted, real_peer("qemu-nbd", "2.10", "server"),
                  reference_client()).verdict is Verdict.EXPECTED_FALLBACK
    assert expect(wanted, real_peer("qemu-nbd", "7.2", "server"),
                  reference_client()).verdict is Verdict.PASS


def test_a_missing_feature_without_fallback_is_unsupported() -> None:
    wanted = scenario(server={"extended-headers"}, outcome=None)
    expectation = expect(wanted, real_peer("nbdkit", "1.48", "server"), reference_client())
    assert expectation.verdict is Verdict.UNSUPPORTED
    assert expectation.missing_server == ("extended-headers",)


def test_the_client_side_can_lack_the_feature_too() -> None:
    wanted = scenario(client={"extended-headers"}, outcome="unsupported", roles=("client",))
    old, new = real_peer("nbdinfo", "1.14", "client"), real_peer("nbdinfo", "1.24", "client")
    assert "extended-headers" not in old.features and "extended-headers" in new.features
    assert expect(wanted, reference_server(), old).verdict is Verdict.UNSUPPORTED
    assert expect(wanted, reference_server(), old).missing_client == ("extended-headers",)
    assert expect(wanted, reference_server(), new).verdict is Verdict.PASS


def test_read_only_quirk_hides_write_commands() -> None:
    """qemu-nbd (5.2+) advertises no TRIM on a read-only export: the data says so."""
    qemu = real_peer("qemu-nbd", "7.2", "server")
    assert "read-only-hides-write-flags" in qemu.quirks and "trim" in qemu.features
    writable = scenario(server={"trim"}, outcome="unsupported")
    read_only = scenario(server={"trim"}, outcome="unsupported",
                         export=ExportRequirements(ExportSpec(
                             DEFAULT_EXPORT_SIZE, image_format="raw", read_only=True)))
    assert "trim" not in server_features_for(read_only, qemu)
    assert expect(writable, qemu, reference_client()).verdict is Verdict.PASS
    hidden = expect(read_only, qemu, reference_client())
    assert hidden.verdict is Verdict.UNSUPPORTED and "read-only export" in hidden.why


# --- peers --------------------------------------------------------------------------------------


def test_peer_names() -> None:
    profile = parse_peer("reference-server@qemu-2.10", "server")
    assert (profile.spec, profile.profile, profile.family_version) == (
        "reference-server@qemu-2.10", "qemu-2.10", "2.10")
    assert parse_peer("reference-server", "server").profile == "reference"
    assert parse_peer("reference-client", "client").spec == "reference-client"
    real = parse_peer("qemu-nbd@7.2.19", "server")
    assert (real.spec, real.family) == ("qemu-nbd@7.2", "qemu")
    assert "allocation-depth" in real.features


@pytest.mark.parametrize(("text", "role", "message"), [
    ("reference-server@qemu-9.9", "server", "unknown profile"),
    ("nbdinfo@1.14", "server", "is not a server"),
    ("reference-server", "client", "not a client"),
    ("frobnicator@1", "client", "unknown peer program"),
    ("qemu-nbd", "server", "no installed version"),
])
def test_bad_peer_names_are_user_errors(text: str, role: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_peer(text, role, installed=())  # type: ignore[arg-type]


def test_distinct_profiles_drop_identical_behaviour() -> None:
    every = reference_profiles()
    distinct = reference_profiles(distinct=True)
    assert every[0].spec == "reference-server"
    assert {p.spec for p in distinct} < {p.spec for p in every}
    # qemu 10.0 and 11.1 serve exactly like qemu 8.2.
    specs = {p.spec for p in distinct}
    assert "reference-server@qemu-8.2" in specs and "reference-server@qemu-11.1" not in specs


def test_relevant_profiles_keep_the_version_boundaries() -> None:
    profiles = reference_profiles()
    wanted = scenario(server={"allocation-depth"}, roles=("client",))
    chosen = relevant_profiles(wanted, profiles)
    assert len(chosen) < len(profiles)
    # Every profile left out behaves, for this scenario, like one that is kept...
    def outcome(peer: PeerRef) -> tuple[Verdict | None, tuple[str, ...]]:
        found = expect(wanted, peer, reference_client())
        return found.verdict, found.missing_server

    for peer in profiles:
        assert any(outcome(peer) == outcome(kept) for kept in chosen)
    # ...and the scenario is seen both with and without the feature it needs.
    verdicts = {expect(wanted, peer, reference_client()).verdict for peer in chosen}
    assert verdicts == {Verdict.PASS, Verdict.EXPECTED_FALLBACK}


# --- expansion ----------------------------------------------------------------------------------


def test_expansion_ids_roles_and_order() -> None:
    server_side = scenario("sr-read", server={"structured-replies"})
    client_side = scenario("info-size", roles=("client",), group="client")
    servers = [reference_server(), reference_server("qemu-2.10")]
    clients = [reference_client(), real_peer("nbdinfo", "1.14", "client", "host")]
    expansion = expand([server_side, client_side], servers, clients)
    ids = [case.id for case in expansion.cases]
    assert ids == sorted(ids)
    assert ids == [
        "info-size[reference-server-vs-nbdinfo@1.14]",
        "info-size[reference-server@qemu-2.10-vs-nbdinfo@1.14]",
        "sr-read[reference-server-vs-reference-client]",
        "sr-read[reference-server@qemu-2.10-vs-reference-client]",
    ]
    by_id = {case.id: case for case in expansion.cases}
    fallback = by_id["sr-read[reference-server@qemu-2.10-vs-reference-client]"]
    assert (fallback.role, fallback.expected) == ("server", Verdict.EXPECTED_FALLBACK)
    assert by_id["info-size[reference-server-vs-nbdinfo@1.14]"].role == "client"


def test_combinations_that_cannot_run_are_listed_not_dropped() -> None:
    oldstyle = scenario("old", server={"oldstyle"}, outcome="unsupported",
                        export=ExportRequirements(handshake="oldstyle"))
    psk = scenario("psk", server={"starttls-psk"}, client={"starttls-psk"},
                   outcome="unsupported")
    qemu = real_peer("qemu-nbd", "7.2", "server", "host")
    nbdkit = real_peer("nbdkit", "1.32", "server", "host")
    expansion = expand([oldstyle, psk], [qemu, nbdkit, reference_server()],
                       [reference_client()])
    ids = {case.id for case in expansion.cases}
    assert "old[nbdkit@1.32-vs-reference-client]" in ids  # nbdkit can serve oldstyle
    assert "old[reference-server-vs-reference-client]" in ids
    reasons = {(e.scenario, e.peer): e.reason for e in expansion.excluded}
    assert "oldstyle handshake" in reasons[("old", "qemu-nbd@7.2")]
    assert "cannot play starttls-psk" in reasons[("psk", "qemu-nbd@7.2")]
    assert not any(case.scenario.name == "psk" for case in expansion.cases)


def test_a_profile_reporting_info_size_zero_cannot_judge_a_clients_size() -> None:
    """nbd-server's NBD_OPT_INFO says size 0: a client showing that size is right, so a client
    step judging the size is not a case against a profile reproducing it (listed, with why)."""
    sized = Scenario(
        name="info-size", description="the size", spec=("Option types",), roles=("client",),
        client_steps=(Step("client_action", {"action": "info"}, {"size": "export"}),),
        group="client",
    )
    unsized = scenario("info-any", roles=("client",), group="client", outcome=None)
    quirky = reference_server("nbd-server-3.24")
    assert "info-size-zero" in quirky.quirks
    nbdinfo = real_peer("nbdinfo", "1.14", "client", "host")
    qemu_img = real_peer("qemu-img", "7.2", "client", "host")  # shows NBD_OPT_GO's size
    expansion = expand([sized, unsized], [reference_server(), quirky], [nbdinfo, qemu_img])
    ids = {case.id for case in expansion.cases}
    assert ids == {f"{name}[{server}-vs-{client}]"
                   for name in ("info-size", "info-any")
                   for server in ("reference-server", "reference-server@nbd-server-3.24")
                   for client in ("nbdinfo@1.14", "qemu-img@7.2")} - {
        "info-size[reference-server@nbd-server-3.24-vs-nbdinfo@1.14]"}
    reasons = {(e.scenario, e.peer): e.reason for e in expansion.excluded}
    why = reasons[("info-size", "nbdinfo@1.14 vs reference-server@nbd-server-3.24")]
    assert "info-size-zero" in why and "nbdinfo shows the size NBD_OPT_INFO gave" in why


def test_a_server_without_descriptions_is_not_asked_for_one() -> None:
    described = scenario("described", outcome=None,
                         export=ExportRequirements(ExportSpec(
                             DEFAULT_EXPORT_SIZE, image_format="raw", description="scratch")))
    servers = [real_peer("nbd-server", "3.24", "server", "host"),
               real_peer("qemu-nbd", "7.2", "server", "host")]
    expansion = expand([described], servers, [reference_client()])
    assert [case.id for case in expansion.cases] == [
        "described[qemu-nbd@7.2-vs-reference-client]"]
    reasons = {(e.scenario, e.peer): e.reason for e in expansion.excluded}
    assert reasons == {("described", "nbd-server@3.24"):
                       "nbd-server cannot be given an export description"}


def test_shards_partition_the_cases() -> None:
    many = [scenario(f"s{n}") for n in range(7)]
    expansion = expand(many, reference_profiles()[:3], [reference_client()])
    shards = [expansion.shard(index, 4) for index in range(1, 5)]
    seen = [case.id for shard in shards for case in shard.cases]
    assert sorted(seen) == [case.id for case in expansion.cases]
    assert len(seen) == len(set(seen))
    assert max(len(s.cases) for s in shards) - min(len(s.cases) for s in shards) <= 1
    with pytest.raises(MatrixError, match="I/N"):
        expansion.shard(5, 4)
    assert isinstance(shards[0], Expansion)


def test_select_scenarios_by_name_group_and_glob() -> None:
    library = [scenario("a-one"), scenario("a-two", group="contexts"), scenario("b")]
    assert [s.name for s in select_scenarios(library, [])] == ["a-one", "a-two", "b"]
    assert [s.name for s in select_scenarios(library, ["contexts"])] == ["a-two"]
    assert [s.name for s in select_scenarios(library, ["a-*"])] == ["a-one", "a-two"]
    assert [s.name for s in select_scenarios(library, ["options/b"])] == ["b"]
    with pytest.raises(MatrixError, match="no scenario matches 'zzz'"):
        select_scenarios(library, ["zzz"])


# --- rules a peer breaks by its version or by the scenario's configuration ----------------------


def test_a_peer_older_than_the_baseline_breaks_it_knowingly() -> None:
    """qemu 2.6 predates NBD_OPT_GO, which the spec's Baseline now requires: its cases report
    the finding but are not failed for it; a version with GO, or a server the data does not
    know, is held to it."""
    plain = scenario(outcome=None)
    assert "server.baseline-info-go" in known_breaches(plain, reference_server("qemu-2.6"))
    assert "server.baseline-info-go" in known_breaches(plain, real_peer("qemu-nbd", "2.6",
                                                                        "server"))
    assert "server.baseline-info-go" not in known_breaches(plain, real_peer("qemu-nbd", "7.2",
                                                                            "server"))
    external = PeerRef("external:nbd://127.0.0.1:1/x", "external", "server")
    assert known_breaches(plain, external) == frozenset()


def test_a_scenario_that_configures_an_old_handshake_excuses_the_baseline() -> None:
    oldstyle = scenario(export=ExportRequirements(handshake="oldstyle"), outcome=None)
    no_list = scenario(export=ExportRequirements(list_exports=False), outcome=None)
    server = real_peer("nbdkit", "1.32", "server")
    assert "server.baseline-fixed-newstyle" in known_breaches(oldstyle, server)
    assert "server.baseline-list" in known_breaches(no_list, server)
    assert known_breaches(scenario(outcome=None), server) == frozenset()
