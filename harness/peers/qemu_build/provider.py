"""The ``build`` provider: a qemu release built from source, run in its suite's root filesystem.

One provider per finished build (``build:qemu-2.12.1``). Its programs run
exactly as the suite's own do (bubblewrap into the peer root filesystem of
the Debian suite it was built for, which has their shared libraries), with
the build's ``bin/`` bound in and first on PATH. It carries the ``qemu``
family at the build's version (``2.12.1``, so ``qemu-nbd@2.12`` finds it too),
and it knows each program's version from the build (the tree's VERSION):
``qemu-nbd --version`` printed 0.0.1 from 2.5 to 2.9.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from harness.peers._provider import SYSTEM_PATH, Progress, Provider, ProvisionReport
from harness.peers.rootfs import RootfsProvider, disk_usage
from harness.peers.suites import Suite, SuiteData, default_suites

from .installed import BuiltRelease, builds_base, installed_builds

KIND = "build"
FAMILY = "qemu"
PACKAGE = "qemu (built from source)"
"""The one "package" a build provider has installed: every program of the build."""


class BuildProvider(Provider):
    """A built qemu release, run through the peer root filesystem of its suite."""

    kind = KIND
    knows_versions = True

    def __init__(self, build: BuiltRelease, runner: RootfsProvider) -> None:
        super().__init__(Suite(
            name=f"qemu-{build.name}", release=runner.suite.release, providers=(KIND,),
            packages=(), versions={FAMILY: build.version},
            program_packages=dict.fromkeys(build.programs, PACKAGE),
        ))
        self.build = build
        self.runner = runner

    # --- state ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        return self.build.bin_dir.is_dir() and self.runner.ready()

    def install_hint(self) -> str:
        if not self.runner.ready():
            return self.runner.install_hint()
        return f"nbd-harness peers build qemu {self.build.version}"

    def installed_packages(self) -> dict[str, str]:
        return {PACKAGE: self.build.version} if self.ready() else {}

    def has_program(self, program: str) -> bool:
        path = self.build.program_path(program)
        return path is not None and os.access(path, os.X_OK)

    def provision(self, progress: Progress) -> ProvisionReport:
        """The build exists already (``peers build``); what it runs in is provisioned."""
        started = time.monotonic()
        report = self.runner.provision(progress)
        return ProvisionReport(self.name, report.built, time.monotonic() - started,
                               disk_usage(self.build.directory),
                               f"built qemu {self.build.version}; {report.detail}")

    # --- running -------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        return {**self.runner.environment(), "PATH": f"{self.build.bin_dir}:{SYSTEM_PATH}"}

    def wrap_words(self, words: list[str], *, binds: list[str], cwd: Path | None,
                   pid_namespace: bool, label: str | None) -> list[str]:
        return self.runner.wrap([*words], binds=[*binds, self.build.bin_dir], cwd=cwd,
                                pid_namespace=pid_namespace, label=label)

    def popen_cwd(self, cwd: Path | None) -> Path | None:
        return self.runner.popen_cwd(cwd)


def built_release_providers(data: SuiteData | None = None, *, base: Path | None = None,
                            rootfs_base: Path | None = None) -> list[BuildProvider]:
    """A provider per finished build whose suite ``matrix/suites.toml`` knows, oldest first."""
    data = data or default_suites()
    providers = []
    for build in installed_builds(base or builds_base()):
        suite = data.suites.get(build.run_suite)
        if suite is not None:
            providers.append(BuildProvider(build, RootfsProvider(suite, rootfs_base)))
    return providers


__all__ = ["KIND", "BuildProvider", "built_release_providers"]
