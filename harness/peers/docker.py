"""The ``docker`` provider: a suite's peers in an image built from ``matrix/docker``.

For CI systems that have a container engine and a registry. One image per
suite, ``$NBD_HARNESS_DOCKER_IMAGE:SUITE`` (default ``nbd-harness-peers``),
built from ``matrix/docker/Dockerfile.SUITE`` (or pulled, when
``NBD_HARNESS_DOCKER_PULL=1`` and the image prefix names a registry). Peers
run with ``--network host`` (127.0.0.1 and unix sockets in bound directories
work both ways), ``--init`` (a daemon's children are reaped, and die with the
container) and a name of our own, so that :meth:`DockerProvider.cleanup`
removes the container even when the ``docker run`` client was killed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from pathlib import Path

from harness import paths
from harness.process import PeerError, find_program, run_command

from ._provider import Progress, Provider, ProvisionReport, upstream_version
from .rootfs import run_with_progress
from .suites import Suite, host_mirror

IMAGE_ENV = "NBD_HARNESS_DOCKER_IMAGE"
PULL_ENV = "NBD_HARNESS_DOCKER_PULL"
DEFAULT_IMAGE = "nbd-harness-peers"
DOCKER_DIR = paths.DOCKER_DIR
QUERY_TIMEOUT = 20.0
BUILD_TIMEOUT = 30 * 60.0
_labels = itertools.count(1)


def image_prefix() -> str:
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)


class DockerProvider(Provider):
    """Runs a suite's programs in containers of its image."""

    kind = "docker"
    owns_processes = False

    def __init__(self, suite: Suite, docker: str = "docker") -> None:
        super().__init__(suite)
        self.docker = docker

    @property
    def image(self) -> str:
        return f"{image_prefix()}:{self.suite.name}"

    @property
    def dockerfile(self) -> Path:
        return DOCKER_DIR / f"Dockerfile.{self.suite.name}"

    # --- state ---------------------------------------------------------------------------

    def ready(self) -> bool:
        return self._image_present()

    @functools.cache  # noqa: B019 - asked once per process: `peers list` must stay quick
    def _image_present(self) -> bool:
        try:
            find_program(self.docker)
            result = run_command(
                [self.docker, "image", "inspect", "--format", "{{.Id}}", self.image],
                timeout=QUERY_TIMEOUT,
            )
        except PeerError:
            return False
        return result.returncode == 0

    def install_hint(self) -> str:
        return f"nbd-harness peers install --docker {self.suite.name}"

    @functools.cache  # noqa: B019 - the image does not change under a running process
    def installed_packages(self) -> dict[str, str]:
        if not self.ready():
            return {}
        result = self.run(
            ["dpkg-query", "-W", "-f", "${Package}\\t${Version}\\n"], timeout=QUERY_TIMEOUT,
            check=False,
        )
        packages: dict[str, str] = {}
        for line in str(result.stdout).splitlines():
            name, _, version = line.partition("\t")
            if version:
                packages[name] = version
        return packages

    def has_program(self, program: str) -> bool:
        package = self.suite.program_packages.get(program)
        return self.ready() and package is not None and package in self.installed_packages()

    def package_version(self, package: str) -> str | None:
        version = self.installed_packages().get(package)
        return upstream_version(version) if version else None

    # --- provisioning ----------------------------------------------------------------------------

    def build_argv(self) -> list[str]:
        """``docker build`` for this suite, from the machine's own Debian mirror."""
        return [
            self.docker, "build",
            "--tag", self.image,
            "--build-arg", f"DEBIAN_MIRROR={host_mirror()}",
            "--file", os.fspath(self.dockerfile),
            os.fspath(DOCKER_DIR),
        ]

    def pull_argv(self) -> list[str]:
        return [self.docker, "pull", self.image]

    def provision(self, progress: Progress) -> ProvisionReport:
        started = time.monotonic()
        if self.ready():
            progress(f"{self.name}: image {self.image} is present")
            return ProvisionReport(self.name, False, time.monotonic() - started,
                                   self._image_size(), "cached")
        find_program(self.docker)
        pulling = os.environ.get(PULL_ENV) == "1"
        argv = self.pull_argv() if pulling else self.build_argv()
        progress(f"{self.name}: {' '.join(argv)}")
        log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
        run_with_progress(
            argv,
            log_path=log_dir / f"nbd-harness-docker-{self.suite.name}.log",
            progress=lambda line: progress(f"{self.name}: {line}"),
            timeout=BUILD_TIMEOUT,
            what=f"docker {'pull' if pulling else 'build'} {self.image}",
        )
        self._image_present.cache_clear()
        return ProvisionReport(self.name, True, time.monotonic() - started, self._image_size(),
                               "pulled" if pulling else "built")

    def _image_size(self) -> int:
        try:
            result = run_command(
                [self.docker, "image", "inspect", "--format", "{{.Size}}", self.image],
                timeout=QUERY_TIMEOUT,
            )
            return int(str(result.stdout).strip() or 0)
        except (PeerError, ValueError):
            return 0

    # --- running ------------------------------------------------------------------------------

    def wrap_words(self, words: list[str], *, binds: list[str], cwd: Path | None,
                   pid_namespace: bool, label: str | None) -> list[str]:
        name = label or f"nbd-harness-{os.getpid()}-{next(_labels)}"
        command = [
            self.docker, "run", "--rm", "--init",
            "--network", "host",
            "--name", name,
        ]
        if os.getuid() != 0:
            # Files the peer writes in bound directories stay the caller's.
            command += ["--user", f"{os.getuid()}:{os.getgid()}"]
        for directory in binds:
            command += ["--volume", f"{directory}:{directory}"]
        if cwd is not None:
            command += ["--workdir", os.fspath(cwd)]
        for key, value in sorted(self.environment().items()):
            command += ["--env", f"{key}={value}"]
        return [*command, self.image, *words]

    def process_environment(self) -> dict[str, str]:
        # The docker client needs the caller's environment (DOCKER_HOST, HOME, ...); the
        # program's own goes into the container with --env.
        return dict(os.environ)

    def popen_cwd(self, cwd: Path | None) -> Path | None:
        return None

    def cleanup(self, label: str) -> None:
        """``docker rm -f LABEL``: the container goes even if its client was killed."""
        with contextlib.suppress(PeerError):
            run_command([self.docker, "rm", "--force", label], timeout=QUERY_TIMEOUT)


__all__ = ["DEFAULT_IMAGE", "DOCKER_DIR", "IMAGE_ENV", "PULL_ENV", "DockerProvider",
           "image_prefix"]
