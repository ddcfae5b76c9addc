"""What the reference server offers on the wire.

The default is everything the spec (with the extended-headers branch) has.
A version profile (``--profile qemu-2.10``) is a :class:`ServerFeatures` with
some of it turned off, so the server looks on the wire as that version's
server would; profiles are generated from the version data in ``matrix/``,
never written here by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from harness.protocol import constants as c

MultiConn = Literal["always", "read-only", "never"]

ALL_OPTIONS = frozenset(
    {
        c.Opt.EXPORT_NAME,
        c.Opt.ABORT,
        c.Opt.LIST,
        c.Opt.STARTTLS,
        c.Opt.INFO,
        c.Opt.GO,
        c.Opt.STRUCTURED_REPLY,
        c.Opt.LIST_META_CONTEXT,
        c.Opt.SET_META_CONTEXT,
        c.Opt.EXTENDED_HEADERS,
    }
)
ALL_CONTEXT_KINDS = frozenset({"base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:"})


@dataclass(frozen=True)
class ServerFeatures:
    """Switches for every optional part of the protocol the server speaks.

    ``options`` are the options it understands (others get ``ERR_UNSUP``);
    ``context_kinds`` the metadata contexts it can offer (``qemu:dirty-bitmap:``
    stands for every bitmap); the booleans the transmission flags and info
    items it may advertise; ``multi_conn`` when it advertises CAN_MULTI_CONN.
    ``quirks`` names deliberate deviations a profile reproduces (see
    :data:`KNOWN_QUIRKS`).
    """

    name: str = "reference"
    options: frozenset[int] = ALL_OPTIONS
    context_kinds: frozenset[str] = ALL_CONTEXT_KINDS
    no_zeroes: bool = True
    info_block_size: bool = True
    write_zeroes: bool = True
    fast_zero: bool = True
    trim: bool = True
    flush: bool = True
    fua: bool = True
    cache: bool = True
    df: bool = True
    block_status_payload: bool = True
    init_state: bool = True  # still only when the export enables it
    multi_conn: MultiConn = "always"
    quirks: frozenset[str] = field(default_factory=frozenset)

    def offers(self, option: int) -> bool:
        return option in self.options

    def offers_context(self, name: str) -> bool:
        if name.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
            return c.QEMU_DIRTY_BITMAP_PREFIX in self.context_kinds
        return name in self.context_kinds

    def without(self, **changes: object) -> ServerFeatures:
        return replace(self, **changes)  # type: ignore[arg-type]


KNOWN_QUIRKS = {
    "unflagged-extended-write": "performs an extended NBD_CMD_WRITE that lacks "
    "NBD_CMD_FLAG_PAYLOAD_LEN instead of failing it with NBD_EINVAL (qemu-nbd)",
    "info-size-zero": "answers NBD_OPT_INFO with an export size of 0 (nbd-server)",
    "abort-without-ack": "closes on NBD_OPT_ABORT without sending NBD_REP_ACK (nbd-server)",
    "read-only-hides-write-flags": "no SEND_TRIM / SEND_WRITE_ZEROES / SEND_FAST_ZERO on "
    "read-only exports (qemu, nbdkit)",
    "read-only-hides-fua": "no SEND_FUA on read-only exports (nbdkit)",
    "info-block-status-payload": "NBD_OPT_INFO advertises BLOCK_STATUS_PAYLOAD once extended "
    "headers are on, before any SET_META_CONTEXT (qemu)",
    "description-unasked": "sends NBD_INFO_DESCRIPTION whenever the export has a description, "
    "asked for or not (qemu)",
}

FULL = ServerFeatures()
