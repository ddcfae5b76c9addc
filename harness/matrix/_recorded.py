"""The recording proxy in front of the reference server when a real client is under test.

:func:`harness.scenarios.run_client_scenario` starts the reference server
itself and hands the program its URI; it has no seam for a proxy.  This
adapter runs the same :class:`~harness.scenarios._client_run.ClientRun`, but
as soon as the run has its server, a :class:`~harness.capture.ProxyThread`
is put in front of it and every URI, host and port the program is given
names the proxy: the program's whole conversation is recorded, while the
server's session records and storage stay the ones the run checks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from harness.address import Address
from harness.capture import ProxyThread
from harness.scenarios import Scenario, ScenarioResult, ServedExport
from harness.scenarios._client_run import ClientRun
from harness.scenarios.client_actions import ClientProgram, default_client_actions
from reference_server.features import ServerFeatures

LOOPBACK = Address.tcp("127.0.0.1", 0)


@dataclass
class ProxiedExport(ServedExport):
    """A served export whose address (and so every URI built from it) is the proxy's."""

    proxy_address: Address | None = None

    @property
    def address(self) -> Address:
        assert self.proxy_address is not None
        return self.proxy_address


class RecordedClientRun(ClientRun):
    """A client-role run whose server sits behind a recording proxy writing ``capture``."""

    def __init__(self, *args: object, capture: Path, **kwargs: object) -> None:
        self._capture = Path(capture)
        self._served: ServedExport | None = None
        self.proxies: list[ProxyThread] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def served(self) -> ServedExport | None:
        return self._served

    @served.setter
    def served(self, value: ServedExport | None) -> None:
        if value is None or isinstance(value, ProxiedExport):
            self._served = value
            return
        proxy = ProxyThread(LOOPBACK, value.address, self._capture).start()
        self.proxies.append(proxy)
        self._served = ProxiedExport(value.thread, value.export, value.tls_dir, proxy.address)

    def stop_proxies(self) -> None:
        for proxy in self.proxies:
            with contextlib.suppress(Exception):
                proxy.stop()

    def run(self) -> ScenarioResult:
        try:
            return super().run()
        finally:
            self.stop_proxies()


def run_recorded_client_scenario(
    scenario: Scenario,
    program: str,
    server_features: ServerFeatures,
    workdir: Path,
    capture: Path,
    *,
    features_client: Iterable[str] | None,
    timeout: float,
    started: list[RecordedClientRun] | None = None,
) -> ScenarioResult:
    """:func:`harness.scenarios.run_client_scenario`, recorded into ``capture``.

    ``started`` receives the run object as soon as it exists (a watchdog stops
    its proxies to end a run that hangs).
    """
    programs = default_client_actions()
    client: ClientProgram | None = programs.get(program)
    if client is None:
        return ScenarioResult("error", [], f"no client actions for {program!r} in "
                              "matrix/client-actions.toml", scenario=scenario.id, role="client")
    run = RecordedClientRun(scenario, client, server_features, Path(workdir), capture=capture,
                            features_client=features_client, timeout=timeout)
    if started is not None:
        started.append(run)
    return run.run()


__all__ = ["ProxiedExport", "RecordedClientRun", "run_recorded_client_scenario"]
