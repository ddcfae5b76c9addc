"""What a server offers, seen by the reference client: feature ids of ``matrix/features.toml``.

:func:`observe` connects to a running server and turns what was negotiated
into the ids of the features a probe can see (:data:`OBSERVABLE`). Drivers
choose what they are probed with (:meth:`ServerPeer.probe_export`); this
module knows nothing of drivers, so :mod:`harness.peers._base` can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.client import Client, ConnectOptions, NbdClientError
from harness.protocol import constants as c

PROBE_BITMAP = "b0"
"""The dirty bitmap a probe export carries (where the program can serve one)."""

# Transmission flag -> the feature it shows (on a writable export).
FLAG_FEATURES: dict[str, c.TransmissionFlag] = {
    "write-zeroes": c.TransmissionFlag.SEND_WRITE_ZEROES,
    "trim": c.TransmissionFlag.SEND_TRIM,
    "flush": c.TransmissionFlag.SEND_FLUSH,
    "fua": c.TransmissionFlag.SEND_FUA,
    "cache": c.TransmissionFlag.SEND_CACHE,
    "df": c.TransmissionFlag.SEND_DF,
    "fast-zero": c.TransmissionFlag.SEND_FAST_ZERO,
    "multi-conn-writable": c.TransmissionFlag.CAN_MULTI_CONN,
    "block-status-payload": c.TransmissionFlag.BLOCK_STATUS_PAYLOAD,
}
CONTEXT_FEATURES = {
    "base-allocation": c.BASE_ALLOCATION,
    "allocation-depth": c.QEMU_ALLOCATION_DEPTH,
    "dirty-bitmap": c.QEMU_DIRTY_BITMAP_PREFIX + PROBE_BITMAP,
}
OBSERVABLE = frozenset({"no-zeroes", "opt-go", "info-block-size", "structured-replies",
                        "extended-headers", "list-exports", *FLAG_FEATURES, *CONTEXT_FEATURES})
"""The server features a probe can see."""


@dataclass
class Observed:
    """What a probe saw: feature ids present and absent, and the raw negotiation."""

    present: set[str] = field(default_factory=set)
    absent: set[str] = field(default_factory=set)
    negotiation: dict = field(default_factory=dict)

    def record(self, feature: str, seen: bool) -> None:
        (self.present if seen else self.absent).add(feature)


def observe(uri: str) -> Observed:
    """Connect the reference client to the server at ``uri`` and record what it offers."""

    observed = Observed()
    contexts = tuple(CONTEXT_FEATURES.values())
    with Client.connect(uri, options=ConnectOptions(meta_contexts=contexts,
                                                    timeout=20)) as client:
        negotiation = client.negotiation
    observed.negotiation = negotiation.as_dict()
    observed.record("no-zeroes",
                    bool(negotiation.handshake_flags & c.HandshakeFlag.NO_ZEROES))
    observed.record("opt-go", negotiation.selected_with == "NBD_OPT_GO")
    observed.record("info-block-size", negotiation.block_size is not None)
    observed.record("extended-headers", negotiation.extended_headers)
    # A client that negotiated extended headers never asks for structured replies.
    observed.record("structured-replies",
                    negotiation.structured_replies or negotiation.extended_headers)
    for feature, flag in FLAG_FEATURES.items():
        observed.record(feature, bool(negotiation.transmission_flags & flag))
    names = set(negotiation.meta_contexts.values())
    for feature, name in CONTEXT_FEATURES.items():
        observed.record(feature, name in names)
    try:
        with Client.connect(uri, options=ConnectOptions(enter_transmission=False,
                                                        timeout=20)) as client:
            client.list_exports()
        # Answered at all is what counts: nbdkit lists its default export as "", not by name.
        observed.record("list-exports", True)
    except (NbdClientError, OSError):
        observed.record("list-exports", False)
    return observed


__all__ = ["CONTEXT_FEATURES", "FLAG_FEATURES", "OBSERVABLE", "PROBE_BITMAP", "Observed",
           "observe"]
