"""Rules of the block size constraints a server advertises (``NBD_INFO_BLOCK_SIZE``).

Section "Size constraints".  What clients must do with the constraints is in
:mod:`rules_transmission` (alignment, maximum payload).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from harness.conformance._rule import Hit, rule
from harness.conformance._view import SessionView
from harness.dissect.model import WireMessage
from harness.protocol import constants as c

_ONE_MIB = 1 << 20


@dataclass(frozen=True)
class _Advertised:
    message: WireMessage
    minimum: int
    preferred: int
    maximum: int
    size: int | None
    """The export size sent in the same reply, if any."""


def _block_sizes(view: SessionView) -> Iterator[_Advertised]:
    """Every NBD_INFO_BLOCK_SIZE the server sent, with the export size of the same reply."""
    for exchange in view.options:
        infos = exchange.infos()
        sizes = [
            int(r.fields["size"])
            for r in infos
            if r.fields.get("info_type") == c.Info.EXPORT and "size" in r.fields
        ]
        for reply in infos:
            fields = reply.fields
            if fields.get("info_type") == c.Info.BLOCK_SIZE and "maximum_payload_size" in fields:
                yield _Advertised(
                    reply,
                    int(fields["minimum_block_size"]),
                    int(fields["preferred_block_size"]),
                    int(fields["maximum_payload_size"]),
                    sizes[0] if sizes else None,
                )


@rule(id="server.block-size-minimum")
def block_size_minimum(view: SessionView) -> Iterator[Hit]:
    """The minimum block size is a power of 2 no larger than 64 KiB."""
    for item in _block_sizes(view):
        if not c.is_power_of_two(item.minimum) or item.minimum > c.MAX_MIN_BLOCK_SIZE:
            yield Hit(
                item.message,
                f"minimum block size {item.minimum} is not a power of 2 no larger than 65536",
            )


@rule(id="server.block-size-preferred")
def block_size_preferred(view: SessionView) -> Iterator[Hit]:
    """The preferred block size is a power of 2, at least max(minimum, 512)."""
    for item in _block_sizes(view):
        if not c.is_power_of_two(item.preferred) or item.preferred < max(item.minimum, 512):
            yield Hit(
                item.message,
                f"preferred block size {item.preferred} is not a power of 2 "
                f"at least max({item.minimum}, 512)",
            )


@rule(id="server.block-size-maximum")
def block_size_maximum(view: SessionView) -> Iterator[Hit]:
    """The maximum payload is at least the preferred block size."""
    for item in _block_sizes(view):
        if item.maximum < item.preferred:
            yield Hit(
                item.message,
                f"maximum payload {item.maximum} is smaller than the "
                f"preferred block size {item.preferred}",
            )


@rule(id="server.export-size-multiple-of-minimum")
def export_size_multiple_of_minimum(view: SessionView) -> Iterator[Hit]:
    """The export size is a multiple of the advertised minimum block size."""
    for item in _block_sizes(view):
        if item.size is not None and item.minimum > 0 and item.size % item.minimum:
            yield Hit(
                item.message,
                f"export size {item.size} is not a multiple of the minimum "
                f"block size {item.minimum}",
            )


@rule(id="server.maximum-payload-at-least-1m")
def maximum_payload_at_least_1m(view: SessionView) -> Iterator[Hit]:
    """The maximum payload is at least 1 MiB when the export is."""
    for item in _block_sizes(view):
        if item.size is not None and item.size >= _ONE_MIB and item.maximum < _ONE_MIB:
            yield Hit(
                item.message,
                f"maximum payload {item.maximum} is below 1 MiB for a {item.size}-byte export",
            )
