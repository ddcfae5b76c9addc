"""From a captured frame to a TCP segment: link layer, IPv4/IPv6, TCP headers.

Plain ``struct`` parsing rather than scapy layers: this runs once per frame of
possibly large captures, and only the addresses, ports, sequence number, flags
and payload are needed.  Lengths come from the IP header, so Ethernet padding
never leaks into a stream; a frame cut by the snapshot length yields the bytes
it has and says how many are missing.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

from harness.pcapformat import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    IPPROTO_TCP,
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
)

_DLT_RAW_ALIASES = (12, 14)  # DLT_RAW as some systems number it in files
_ETHERTYPE_VLAN = (0x8100, 0x88A8, 0x9100)
_IPV6_SKIPPABLE = (0, 43, 60)  # hop-by-hop, routing, destination options
_IPV6_FRAGMENT = 44

SUPPORTED_LINKTYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
        *_DLT_RAW_ALIASES,
    }
)


@dataclass(frozen=True)
class Segment:
    """The TCP part of one frame."""

    src: tuple[str, int]
    dst: tuple[str, int]
    seq: int
    flags: int
    payload: memoryview
    missing: int  # payload bytes the IP header announces but the frame lacks
    payload_at: int = 0
    """Where the payload starts in the frame's bytes."""


class NotTcp(Exception):
    """The frame carries no TCP segment we can use (the reason says why)."""


def tcp_segment(linktype: int, data: bytes) -> Segment:
    """The TCP segment in a frame; raises :class:`NotTcp` for anything else.

    The payload is a view of ``data``, not a copy; ``payload_at`` says where it starts in
    ``data`` (the reassembly keeps that place, not the bytes).
    """
    view = memoryview(data)
    at = _network_at(linktype, view)
    return _ip_packet(view[at:], at)


def _network_at(linktype: int, data: memoryview) -> int:
    """Where the network layer starts in a frame of ``linktype``."""
    if linktype == LINKTYPE_ETHERNET:
        ethertype_at = 12
        while True:
            if len(data) < ethertype_at + 2:
                raise NotTcp("short Ethernet header")
            (ethertype,) = struct.unpack_from("!H", data, ethertype_at)
            if ethertype in _ETHERTYPE_VLAN:
                ethertype_at += 4
                continue
            break
        if ethertype not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
            raise NotTcp(f"ethertype {ethertype:#06x}")
        return ethertype_at + 2
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6, *_DLT_RAW_ALIASES):
        return 0
    if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # A 4-byte address family in host (NULL) or network (LOOP) order; its
        # values differ between systems, so the IP version nibble decides.
        return 4
    if linktype == LINKTYPE_LINUX_SLL:
        return _check_protocol(data, 14, 16)
    if linktype == LINKTYPE_LINUX_SLL2:
        return _check_protocol(data, 0, 20)
    raise NotTcp(f"unsupported link type {linktype}")


def _check_protocol(data: memoryview, protocol_at: int, header_length: int) -> int:
    if len(data) < header_length:
        raise NotTcp("short Linux cooked header")
    (protocol,) = struct.unpack_from("!H", data, protocol_at)
    if protocol not in (ETHERTYPE_IPV4, ETHERTYPE_IPV6):
        raise NotTcp(f"protocol {protocol:#06x}")
    return header_length


def _ip_packet(packet: memoryview, base: int) -> Segment:
    """The segment in an IP packet that starts at ``base`` in its frame."""
    if not packet:
        raise NotTcp("no network layer")
    version = packet[0] >> 4
    if version == 4:
        if len(packet) < 20:
            raise NotTcp("short IPv4 header")
        header_length = (packet[0] & 0x0F) * 4
        (total_length,) = struct.unpack_from("!H", packet, 2)
        (fragment,) = struct.unpack_from("!H", packet, 6)
        if packet[9] != IPPROTO_TCP:
            raise NotTcp(f"IP protocol {packet[9]}")
        if fragment & 0x3FFF:  # more-fragments flag or a fragment offset
            raise NotTcp("IPv4 fragment (not reassembled)")
        src = _address(bytes(packet[12:16]))
        dst = _address(bytes(packet[16:20]))
        # total_length 0 happens with TCP segmentation offload captures
        end = total_length if total_length else len(packet)
        return _tcp(packet[header_length:end], end - header_length, src, dst, base + header_length)
    if version == 6:
        if len(packet) < 40:
            raise NotTcp("short IPv6 header")
        (payload_length,) = struct.unpack_from("!H", packet, 4)
        next_header = packet[6]
        src = _address(bytes(packet[8:24]))
        dst = _address(bytes(packet[24:40]))
        at = 40
        end = 40 + payload_length if payload_length else len(packet)
        while next_header in (*_IPV6_SKIPPABLE, _IPV6_FRAGMENT):
            if len(packet) < at + 8:
                raise NotTcp("short IPv6 extension header")
            if next_header == _IPV6_FRAGMENT:
                raise NotTcp("IPv6 fragment (not reassembled)")
            next_header, size = packet[at], (packet[at + 1] + 1) * 8
            at += size
        if next_header != IPPROTO_TCP:
            raise NotTcp(f"IPv6 next header {next_header}")
        return _tcp(packet[at:end], end - at, src, dst, base + at)
    raise NotTcp(f"IP version {version}")


@functools.lru_cache(maxsize=1024)
def _address(packed: bytes) -> str:
    """An IPv4 or IPv6 address in its usual text form (a capture has few: cached)."""
    return str(ipaddress.ip_address(packed))


def _tcp(segment: memoryview, announced: int, src: str, dst: str, base: int) -> Segment:
    if len(segment) < 20:
        raise NotTcp("short TCP header")
    src_port, dst_port, seq = struct.unpack_from("!HHI", segment)
    header_length = (segment[12] >> 4) * 4
    flags = segment[13]
    if header_length < 20 or len(segment) < header_length:
        raise NotTcp("bad or cut TCP header")
    payload = segment[header_length:]
    missing = max(0, announced - header_length - len(payload))
    return Segment(
        (src, src_port), (dst, dst_port), seq, flags, payload, missing, base + header_length
    )
