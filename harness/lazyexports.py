"""A package's public names imported on first use (PEP 562), not when the package is.

``harness.client`` and ``harness.protocol`` export names from modules that are costly to
import (the asyncio client, the protocol state machine); a command that needs only a light
part of them (the constants, the client's options) should not pay for the rest.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: ``homes`` maps each public name to the
    (relative) module that defines it, imported when the name is first asked for; the value
    is then kept in the package, so the next access is a plain attribute."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
