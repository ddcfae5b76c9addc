"""nbdcopy: libnbd's copying tool (whole exports to and from files).

Its actions are ``[nbdcopy]`` of ``matrix/client-actions.toml`` (``copy-in``,
``copy-out``; a read is a slice of a whole-export copy).
"""

from __future__ import annotations

from ._base import ClientPeer


class Nbdcopy(ClientPeer):
    """``nbdcopy`` between an endpoint and a local file."""

    program = "nbdcopy"
    executable = "nbdcopy"
    version_word = "nbdcopy"


__all__ = ["Nbdcopy"]
