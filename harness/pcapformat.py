"""The numbers of the capture formats: pcapng blocks and options, link types, and the
Ethernet / IPv4 / TCP framing.

The recording proxy writes captures (:mod:`harness.capture.pcapng`) and the
dissector reads them, and captures from elsewhere (:mod:`harness.dissect`):
two independent readings of the file, sharing only these constants.  Sources:
the pcapng spec (draft-ietf-opsawg-pcapng) and https://www.tcpdump.org/linktypes.html.
"""

from __future__ import annotations

# pcapng block types, the byte-order magic of a Section Header Block, and option codes.
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
BLOCK_IDB = 1
BLOCK_PB = 2  # obsolete Packet Block
BLOCK_SPB = 3
BLOCK_EPB = 6
OPT_ENDOFOPT = 0
OPT_COMMENT = 1
OPT_SHB_USERAPPL = 4
OPT_IF_NAME = 2
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14

# Link types.
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276

# Ethernet, IP and TCP.
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
IPPROTO_TCP = 6
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
