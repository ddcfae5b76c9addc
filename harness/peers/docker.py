"""The ``docker`` provider: a suite's peers in a container image, one per suite.

One image per suite, ``$NBD_HARNESS_DOCKER_IMAGE:SUITE`` (default
``nbd-harness-peers``), made in one of three ways (``$NBD_HARNESS_DOCKER_SOURCE``):

- ``import`` (the default): the suite's root filesystem tarball, the one the
  ``rootfs`` provider builds with mmdebstrap from this machine's apt mirror
  (built first when missing), is turned into an image by ``docker import``:
  no image registry is needed, and the container runs the very same packages
  as the sandbox does;
- ``build``: ``matrix/docker/Dockerfile.SUITE``, ``FROM debian:SUITE`` of a
  registry (or ``FROM $NBD_HARNESS_DOCKER_BASE``, e.g. an imported image);
- ``pull`` (also ``NBD_HARNESS_DOCKER_PULL=1``): from the registry the image
  prefix names.

Peers run with ``--network host`` (127.0.0.1 and unix sockets in bound
directories work both ways), ``--init`` (a daemon's children are reaped, and
die with the container) and a name of our own, so that
:meth:`DockerProvider.cleanup` removes the container even when the ``docker
run`` client was killed. ``scripts/dockerd start`` gives an engine when the
machine runs none.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from pathlib import Path

from harness import paths
from harness.errors import UserError
from harness.process import PeerError, find_program, run_command

from ._provider import SYSTEM_PATH, Progress, Provider, ProvisionReport, upstream_version
from .rootfs import RootfsProvider, run_with_progress
from .suites import Suite, host_mirror

IMAGE_ENV = "NBD_HARNESS_DOCKER_IMAGE"
PULL_ENV = "NBD_HARNESS_DOCKER_PULL"
SOURCE_ENV = "NBD_HARNESS_DOCKER_SOURCE"
BASE_ENV = "NBD_HARNESS_DOCKER_BASE"
SOURCES = ("import", "build", "pull")
RECIPE_LABEL = "org.nbd-harness.recipe"
DEFAULT_IMAGE = "nbd-harness-peers"
DOCKER_DIR = paths.DOCKER_DIR
QUERY_TIMEOUT = 20.0
BUILD_TIMEOUT = 30 * 60.0
_labels = itertools.count(1)


def image_prefix() -> str:
    return os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)


def image_source() -> str:
    """How images are made: ``import`` (default), ``build`` or ``pull``."""
    if os.environ.get(PULL_ENV) == "1":
        return "pull"
    source = os.environ.get(SOURCE_ENV, "import")
    if source not in SOURCES:
        raise UserError(f"{SOURCE_ENV}={source}: expected one of {', '.join(SOURCES)}")
    return source


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
        base = os.environ.get(BASE_ENV)
        return [
            self.docker, "build",
            "--tag", self.image,
            "--build-arg", f"DEBIAN_MIRROR={host_mirror()}",
            *(["--build-arg", f"BASE_IMAGE={base}"] if base else []),
            "--file", os.fspath(self.dockerfile),
            os.fspath(DOCKER_DIR),
        ]

    def pull_argv(self) -> list[str]:
        return [self.docker, "pull", self.image]

    def import_argv(self, tarball: Path, recipe: str) -> list[str]:
        """``zstd -dc TARBALL | docker import - IMAGE``, labelled with the recipe's digest."""
        script = ('zstd -dc "$1" | "$2" import --change "$3" --change "$4" '
                  '--message "nbd-harness: $1" - "$5"')
        return ["sh", "-c", script, "docker-import", os.fspath(tarball), self.docker,
                f"ENV PATH={SYSTEM_PATH}", f"LABEL {RECIPE_LABEL}={recipe}", self.image]

    def provision(self, progress: Progress) -> ProvisionReport:
        started = time.monotonic()
        if self.ready():
            progress(f"{self.name}: image {self.image} is present")
            return ProvisionReport(self.name, False, time.monotonic() - started,
                                   self._image_size(), "cached")
        find_program(self.docker)
        source = image_source()
        if source == "import":
            rootfs = RootfsProvider(self.suite)
            if not rootfs.tarball.is_file():
                rootfs.provision(progress)  # builds the tarball (and the sandbox's root)
            argv = self.import_argv(rootfs.tarball, rootfs.digest())
        else:
            argv = self.pull_argv() if source == "pull" else self.build_argv()
        progress(f"{self.name}: {' '.join(argv)}")
        log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
        run_with_progress(
            argv,
            log_path=log_dir / f"nbd-harness-docker-{self.suite.name}.log",
            progress=lambda line: progress(f"{self.name}: {line}"),
            timeout=BUILD_TIMEOUT,
            what=f"docker {source} {self.image}",
        )
        self._image_present.cache_clear()
        done = {"import": "imported", "pull": "pulled", "build": "built"}[source]
        return ProvisionReport(self.name, True, time.monotonic() - started, self._image_size(),
                               done)

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


__all__ = ["BASE_ENV", "DEFAULT_IMAGE", "DOCKER_DIR", "IMAGE_ENV", "PULL_ENV", "SOURCES",
           "SOURCE_ENV", "DockerProvider", "image_prefix", "image_source"]
