"""The one error the dissector raises: the capture file itself is unusable."""

from __future__ import annotations

from harness.errors import UserError


class CaptureError(UserError):
    """A capture file is missing, not pcap/pcapng, truncated or corrupt.

    :func:`~harness.dissect.decode_capture` raises it only when nothing at all
    can be read; a file that breaks part-way is decoded up to the break and the
    message lands in ``Capture.errors``.
    """
