"""Recording proxy: forwards NBD connections (TCP or unix) and writes them to pcapng.

The capture is the harness's evidence: every byte a peer sent, with timestamps,
as TCP conversations that Wireshark, tshark and :mod:`harness.dissect` read.
"""

from harness.capture.pcapng import MAX_SEGMENT, SERVER_PORT, PcapngWriter, TcpStream
from harness.capture.proxy import ConnectionStats, ProxyStats, ProxyThread, RecordingProxy

__all__ = [
    "MAX_SEGMENT",
    "SERVER_PORT",
    "ConnectionStats",
    "PcapngWriter",
    "ProxyStats",
    "ProxyThread",
    "RecordingProxy",
    "TcpStream",
]
