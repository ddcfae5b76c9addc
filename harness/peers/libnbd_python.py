"""libnbd's Python bindings (``python3-libnbd``), run by the provider's own ``python3``.

On the host that is Debian's interpreter (the bindings are Debian's); inside a
suite's root filesystem it is that suite's, with that suite's libnbd. The peer
is named ``libnbd@VERSION``.

A documented exception to "a program's actions are its table in
``matrix/client-actions.toml``": the bindings perform nbdsh's forms (``[nbdsh]``
scripts are Python over a handle ``h``), run as ``python3 -c`` after a prelude that
makes ``h`` (:meth:`LibnbdPython.command`). It has no table of its own, so the
client-role matrix does not run it twice under two names.
"""

from __future__ import annotations

from ._base import ClientPeer

PYTHON_PRELUDE = "import nbd\nh = nbd.NBD()\n"
"""What ``python3 -c`` runs before an nbdsh script (``nbdsh`` makes ``h`` itself)."""

VERSION_SCRIPT = """
import nbd
handle = nbd.NBD()
print("libnbd", handle.get_version() if hasattr(handle, "get_version") else nbd.__version__)
"""


class LibnbdPython(ClientPeer):
    """``python3 -c 'import nbd; ...'`` with the suite's libnbd bindings."""

    program = "libnbd"
    executable = "python3"
    version_word = "libnbd"
    represents_family = True
    version_argv = ("-c", VERSION_SCRIPT)
    actions_program = "nbdsh"

    def command(self, argv: list[str]) -> list[str]:
        """``nbdsh -c SCRIPT`` becomes ``python3 -c PRELUDE+SCRIPT``."""
        if argv[:2] != ["nbdsh", "-c"] or len(argv) != 3:
            raise ValueError(f"not an nbdsh script: {argv[:2]}")
        return [self.executable, "-c", PYTHON_PRELUDE + argv[2]]

    def available(self) -> bool:
        package = self.package
        return (bool(package) and package in self.provider.installed_packages()) or (
            self.provider.kind == "docker" and self.provider.has_program(self.program)
        )


__all__ = ["PYTHON_PRELUDE", "LibnbdPython"]
