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
    # qemu releases built from source and compared with `nbd-harness peers compare`:
    "block-size-unasked": "sends NBD_INFO_BLOCK_SIZE to every INFO and GO (qemu 2.10+)",
    "sector-min-block": "minimum block size 512 to INFO and to clients that ask, never "
    "enforced; INFO without the request gets NBD_REP_ERR_BLOCK_SIZE_REQD (qemu 2.10-3.x)",
    "info-name-empty": "NBD_INFO_NAME with an empty name (qemu 2.10-2.11)",
    "abort-before-tls-refused": "NBD_OPT_ABORT before STARTTLS on a TLS-only server gets "
    "NBD_REP_ERR_TLS_REQD (qemu)",
    "trim-ignored": "NBD_CMD_TRIM succeeds and changes nothing (qemu-nbd --discard=ignore)",
    "zero-length-read-ok": "a zero-length NBD_CMD_READ succeeds (qemu)",
    "zeroes-past-end-einval": "WRITE_ZEROES past the end gets NBD_EINVAL (qemu 2.8-2.11)",
    "request-errors-einval": "every request refused before it runs gets NBD_EINVAL (qemu 2.12+)",
    "flat-image-no-hole-bit": "base:allocation of a raw image never sets NBD_STATE_HOLE "
    "(qemu 2.12-5.x)",
    "one-extent-per-status": "one base:allocation extent per block status reply (qemu 2.12)",
    "meta-query-no-colon-ignored": "a context query without a colon is ignored, not refused (qemu)",
    "list-meta-without-structured": "NBD_OPT_LIST_META_CONTEXT answered before structured "
    "replies (qemu 6.0+)",
    "flat-image-depth-one": "qemu:allocation-depth 1 everywhere on a raw image (qemu 5.2+)",
    "bitmap-extents-past-request": "dirty bitmap runs reported whole, past the request "
    "(qemu 4.x)",
    "zeroes-stay-allocated": "NBD_CMD_WRITE_ZEROES leaves the range allocated (qemu 10+)",
}

FULL = ServerFeatures()
