"""What every part of a server-role run shares: connections, state, refusals.

:class:`RunState` holds one run's state (the connections by name, the model
of the export's contents, the required features found missing, the results);
the step handlers live in :mod:`._options` (the option phase) and
:mod:`._commands` (transmission), and :mod:`._run` drives them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.client import (
    ConnectOptions,
    NbdClient,
    NbdConnectionError,
    NegotiationError,
    TlsError,
    parse_uri,
)
from harness.client.records import Negotiation
from harness.client.uri import NbdUri
from harness.peers.export import ExportSpec
from harness.protocol import constants as c
from harness.scenarios.content import ContentModel
from harness.scenarios.expect import (
    Failed,
    FeatureMissing,
    HarnessLimit,
    option_error_matches,
)
from harness.scenarios.features import (
    REFERENCE_CLIENT_LACKS,
    known_features,
    missing_on_wire,
    step_needs,
)
from harness.scenarios.model import Scenario, Step, StepResult

RAW_COOKIE_BASE = 0xD0D0_0000_0000
"""Cookies of raw requests start here, far from the reference client's own."""
RAW_PAYLOAD_SEED = 99
ZERO_CHECK_BUDGET = 16 * 1024 * 1024
"""Bytes a map step reads back to check NBD_STATE_ZERO claims."""
ALWAYS_RUN = frozenset({"connect", "enter_transmission", "reconnect", "disconnect"})
"""Steps a fallback run never skips: connecting without the missing feature is the fallback."""
CONNECT_FEATURES = {
    "structured_replies": "structured-replies",
    "extended_headers": "extended-headers",
    "use_go": "opt-go",
    "request_block_size": "info-block-size",
    "no_zeroes": "no-zeroes",
}
"""``connect`` switches that follow the client's features when the step leaves them unset."""


@dataclass
class Conn:
    """One named connection of a run."""

    name: str
    client: NbdClient
    options: ConnectOptions
    asked: dict[str, Any]
    contexts: list[str] = field(default_factory=list)


def rep(value: int) -> str:
    """The spec's name of an option reply type."""
    return c.name_of(c.Rep, value)


def negotiation_labels(exc: BaseException) -> set[str]:
    """Labels a failed negotiation matches: the reply type name, ``tls``, ``closed``."""
    labels: set[str] = set()
    if isinstance(exc, TlsError):
        labels.add("tls")
    if isinstance(exc, NegotiationError) and exc.reply_type:
        labels.add(rep(exc.reply_type))
        if exc.reply_type == c.Rep.ERR_TLS_REQD:
            labels.add("tls")
    elif isinstance(exc, NegotiationError | NbdConnectionError):
        labels.add("closed")
    return labels


class Skipped(Exception):
    """The step cannot run in this fallback run (a feature it relies on is missing)."""


def query_features(queries: Iterable[str]) -> set[str]:
    """The features a metadata-context query needs."""
    return step_needs("list_meta_contexts", {"queries": list(queries)})


class RunState:
    """The state of one server-role run and the helpers every step family uses."""

    def __init__(
        self,
        scenario: Scenario,
        uri: str,
        *,
        features_client: Iterable[str] | None,
        timeout: float,
        tls_dir: Path | None,
    ) -> None:
        self.scenario = scenario
        self.uri: NbdUri = parse_uri(uri)
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        known = set(known_features())
        client_features = known if features_client is None else set(features_client)
        self.client_features = client_features - REFERENCE_CLIENT_LACKS
        self.client_features_wanted = client_features
        self.timeout = timeout
        self.spec: ExportSpec = scenario.export.export_spec()
        self.model = ContentModel.of(self.spec)
        self.conns: dict[str, Conn] = {}
        self.negotiations: dict[str, list[Negotiation]] = {}
        self.missing: dict[str, str] = {}
        self.fallback_mode = False
        self.unsupported: FeatureMissing | None = None
        self.results: list[StepResult] = []
        self.first_connect: tuple[ConnectOptions, dict[str, Any]] | None = None
        self._raw_cookies = 0

    def _note_missing(self, conn: Conn) -> None:
        """Find required features the server showed it lacks on ``conn``."""
        for feature in sorted(self.scenario.requires_server - set(self.missing)):
            evidence = missing_on_wire(feature, conn.client.negotiation, conn.asked)
            if evidence is not None:
                raise FeatureMissing(feature, evidence)

    def _remember(self, conn: Conn) -> None:
        """Keep the connection's negotiation record (it is updated in place) as evidence."""
        history = self.negotiations.setdefault(conn.name, [])
        if not any(record is conn.client.negotiation for record in history):
            history.append(conn.client.negotiation)

    def _conn(self, step: Step) -> Conn:
        conn = self.conns.get(step.on)
        if conn is None:
            raise HarnessLimit(f"connection {step.on!r} is not open")
        return conn

    def _refusal(self, exc: NegotiationError | None, expect: Mapping[str, Any] | None,
                 what: str, features: set[str]) -> bool:
        """Judge an option's refusal; True when a refusal was expected and happened."""
        wanted = (expect or {}).get("error")
        if exc is None:
            if wanted is not None:
                raise Failed(f"{what}: expected {wanted}, but the server accepted", wanted,
                             "NBD_REP_ACK")
            return False
        labels = negotiation_labels(exc)
        if wanted is not None and option_error_matches(wanted, labels):
            return True
        self._unsupported_option(exc.reply_type, what, features, wanted is None)
        if wanted is not None:
            raise Failed(f"{what}: expected {wanted}, got {sorted(labels)}", wanted,
                         sorted(labels))
        raise Failed(f"{what}: {exc}", "NBD_REP_ACK", sorted(labels))

    def _unsupported_option(self, reply_type: int, what: str, features: set[str],
                            policy_too: bool) -> None:
        """An option refused because the server lacks a required feature: said correctly.

        ``NBD_REP_ERR_UNSUP`` always counts; ``NBD_REP_ERR_POLICY`` only when no
        other error was expected (a server may refuse by policy what it has).
        """
        refusals = (c.Rep.ERR_UNSUP, c.Rep.ERR_POLICY) if policy_too else (c.Rep.ERR_UNSUP,)
        if reply_type not in refusals:
            return
        for feature in sorted(features & self.scenario.requires_server):
            raise FeatureMissing(feature, f"{what} answered {rep(reply_type)}")

    def _client(self, step: Step) -> NbdClient:
        return self._conn(step).client


__all__ = ["Conn", "RunState", "Skipped", "negotiation_labels", "query_features", "rep"]
