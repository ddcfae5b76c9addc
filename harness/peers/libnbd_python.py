"""libnbd's Python bindings (``python3-libnbd``), run by the provider's own ``python3``.

On the host that is Debian's interpreter (the bindings are Debian's); inside a
suite's root filesystem it is that suite's, with that suite's libnbd. The peer
is named ``libnbd@VERSION``.
"""

from __future__ import annotations

from ._libnbd import PYTHON_PRELUDE, version_script
from .nbdsh import LibnbdScripted


class LibnbdPython(LibnbdScripted):
    """``python3 -c 'import nbd; ...'`` with the suite's libnbd bindings."""

    program = "libnbd"
    executable = "python3"
    version_word = "libnbd"
    represents_family = True
    version_argv = ("-c", version_script())

    def command(self, script: str) -> list[str]:
        return ["-c", PYTHON_PRELUDE + script]

    def available(self) -> bool:
        package = self.package
        return (bool(package) and package in self.provider.installed_packages()) or (
            self.provider.kind == "docker" and self.provider.has_program(self.program)
        )


__all__ = ["LibnbdPython"]
