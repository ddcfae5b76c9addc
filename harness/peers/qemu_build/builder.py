"""Build one qemu release's tools out of tree, inside the build root of its era.

Steps, each logged to ``qemu/logs/NAME-STEP.log`` and named when it fails:

1. source     the tree: copied from a directory (a user's tree is never written to),
              unpacked from a tarball, downloaded, or fetched as a Debian source package
2. root       the era's build root (mmdebstrap, cached like the peers' roots)
3. configure  ``SRC/configure`` in an empty build directory, with the era's flags
4. compile    make or ninja of the programs only, ``-j`` from the data (2)
5. install    the programs copied to ``qemu/NAME/bin``, ``build.json`` written
6. check      ``qemu-img --version`` run in the suite's peer root filesystem

One build runs at a time on a machine (a lock file), and a release built
with the current recipe is not built again (``--rebuild`` forces it).
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.peers.rootfs import RootfsProvider, _locked, system_mounts
from harness.peers.suites import default_suites, host_mirror
from harness.process import ManagedProcess, PeerError, find_program

from .data import BuildData, BuildRoot, Era, default_build_data, series_name
from .installed import BuiltRelease, builds_base, installed_builds
from .sources import (
    BuildError,
    SourceSpec,
    check_sha256,
    copy_tree,
    download,
    file_sha256,
    lost_exec_bits,
    read_tree_version,
    release_to_fetch,
    restore_exec_bits,
    unpack_tarball,
)

Progress = Callable[[str], None]
STEP_TIMEOUTS = {"source": 15 * 60.0, "configure": 15 * 60.0, "compile": 90 * 60.0,
                 "check": 60.0}
LOCK_TIMEOUT = 3 * 60 * 60.0
STATUS_INTERVAL = 0.5
# The environment every build step runs with inside the build root: nothing of the caller's.
BUILD_ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8",
                     "TMPDIR": "/tmp"}


@dataclass(frozen=True)
class BuildReport:
    """What ``peers build`` did."""

    build: BuiltRelease
    cached: bool
    seconds: float
    notes: tuple[str, ...] = ()


@dataclass
class _Prepared:
    """A source tree ready to configure."""

    tree: Path
    version: str
    name: str
    identity: str
    described: str


class QemuBuilder:
    """Builds qemu releases into the peer cache, following ``matrix/qemu-builds.toml``."""

    def __init__(
        self,
        data: BuildData | None = None,
        *,
        base: Path | None = None,
        progress: Progress = lambda line: None,
        status: Progress | None = None,
        jobs: int | None = None,
    ) -> None:
        self.data = data or default_build_data()
        self.base = base or builds_base()
        self.progress = progress
        self.status = status or (lambda line: None)
        self.jobs = jobs or self.data.jobs
        self.notes: list[str] = []

    # --- where things are ---------------------------------------------------------------------

    @property
    def work(self) -> Path:
        return self.base / ".work"

    @property
    def logs(self) -> Path:
        return self.base / "logs"

    def root_provider(self, root: BuildRoot) -> RootfsProvider:
        return RootfsProvider(root.as_suite(), self.base / "roots")

    # --- the build ----------------------------------------------------------------------------

    def build(self, version: str | None, source: SourceSpec, *, rebuild: bool = False
              ) -> BuildReport:
        """Build ``version`` (``2.12``, ``2.12.1`` or None: the tree's) from ``source``."""
        started = time.monotonic()
        self.base.mkdir(parents=True, exist_ok=True)
        with _locked(self.base / "build.lock", LOCK_TIMEOUT):
            name, identity = self._known_before_preparing(version, source)
            cached = None if rebuild else self._cached(name, identity)
            if cached is not None:
                return BuildReport(cached, True, time.monotonic() - started)
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True)
            try:
                prepared = self._prepare(version, source)
                cached = None if rebuild else self._cached(prepared.name, prepared.identity)
                if cached is not None:
                    return BuildReport(cached, True, time.monotonic() - started)
                build = self._build(prepared)
            except PeerError as exc:
                raise BuildError(str(exc)) from None
            finally:
                shutil.rmtree(self.work, ignore_errors=True)
        return BuildReport(build, False, time.monotonic() - started, tuple(self.notes))

    def _known_before_preparing(self, version: str | None, source: SourceSpec
                                ) -> tuple[str | None, str | None]:
        """The build's name and source identity, when known without unpacking anything."""
        if source.kind == "release":
            release = release_to_fetch(self.data, version)
            return release.version, _release_identity(release.filename, release.sha256)
        if source.kind == "dir":
            tree_version = read_tree_version(Path(source.value))
            _check_requested(version, tree_version, f"the tree {source.value}")
            return tree_version, f"dir:{source.value}"
        if source.kind == "tarball":
            return None, f"sha256:{file_sha256(Path(source.value))}"
        if source.kind == "url":
            return None, source.value
        return None, f"debian:{source.value}"

    def _cached(self, name: str | None, identity: str | None) -> BuiltRelease | None:
        for build in installed_builds(self.base):
            if build.name != name and build.identity != identity:
                continue
            era = self.data.era_for(build.version)
            if build.recipe == era.digest(self.data.root_of(era)):
                return build
            self.progress(f"qemu {build.name}: built with an older recipe; building again")
        return None

    # --- step 1: the source tree ----------------------------------------------------------

    def _prepare(self, version: str | None, source: SourceSpec) -> _Prepared:
        if source.kind == "debian":
            return self._prepare_debian(version, source.value)
        if source.kind == "dir":
            tree = Path(source.value)
            identity, described = f"dir:{tree}", f"the tree {tree}"
        else:
            tarball, identity, described = self._tarball(version, source)
            self.progress(f"qemu: unpacking {tarball.name}")
            tree = unpack_tarball(tarball, self.work / "src")
        tree_version = read_tree_version(tree)
        _check_requested(version, tree_version, described)
        if not tree.is_relative_to(self.work):
            # The build writes into its tree (8.x's meson runs the iotests lister there, which
            # makes tests/qemu-iotests/scratch): a user's tree is copied, without roms/ and .git.
            self.progress(f"qemu {tree_version}: copying {tree} (without roms/ and .git)")
            copy = self.work / "src" / tree.name
            copy_tree(tree, copy)
            tree = copy
        if lost_exec_bits(tree):
            count = restore_exec_bits(tree)
            self.notes.append(f"the tree lost its executable bits: restored on {count} scripts")
        return _Prepared(tree, tree_version, tree_version, identity, described)

    def _tarball(self, version: str | None, source: SourceSpec) -> tuple[Path, str, str]:
        """The tarball to unpack (downloaded when needed), its identity and description."""
        if source.kind == "tarball":
            tarball = Path(source.value)
            digest = file_sha256(tarball)
            release = self.data.release_named(tarball.name)
            if release is not None:
                check_sha256(tarball, release)
                self.notes.append(f"{tarball.name}: SHA-256 matches the release's")
            return tarball, f"sha256:{digest}", f"the tarball {tarball}"
        if source.kind == "url":
            url = source.value
            filename = url.rstrip("/").rsplit("/", 1)[-1] or "qemu.tar"
            release = self.data.release_named(filename)
        else:
            release = release_to_fetch(self.data, version)
            url, filename = release.url, release.filename
        tarball = self.base / "downloads" / filename
        if not (release and tarball.is_file() and file_sha256(tarball) == release.sha256):
            self.progress(f"qemu: downloading {url}")
            download(url, tarball)
        if release is not None:
            check_sha256(tarball, release)
            return tarball, _release_identity(filename, release.sha256), url
        self.notes.append(f"{url}: no SHA-256 in matrix/qemu-builds.toml, not checked")
        return tarball, url, url

    def _prepare_debian(self, version: str | None, suite: str) -> _Prepared:
        """``apt-get source qemu`` from ``suite`` (a deb-src entry of our own), unpacked."""
        root = self._ready_root(self.data.root_for_suite(suite))
        fetch = self.base / "downloads" / f"debian-{suite}"
        for sub in ("lists/partial", "cache/archives/partial", "parts", "package"):
            (fetch / sub).mkdir(parents=True, exist_ok=True)
        (fetch / "sources.list").write_text(
            f"deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
            f"{host_mirror()} {suite} main\n"
        )
        options = {"Dir::Etc::SourceList": f"{fetch}/sources.list",
                   "Dir::Etc::SourceParts": f"{fetch}/parts", "Dir::State::Lists": f"{fetch}/lists",
                   "Dir::Cache": f"{fetch}/cache", "Debug::NoLocking": "1",
                   "APT::Sandbox::User": "root", "Acquire::Check-Valid-Until": "false"}
        apt = ["apt-get", "-q", *(w for k, v in options.items() for w in ("-o", f"{k}={v}"))]
        package = fetch / "package"
        for stale in package.iterdir():
            stale.unlink()
        self.progress(f"qemu: apt-get source qemu from Debian {suite} ({host_mirror()})")
        self._step("source", root, [*apt, "update"], log_name=f"debian-{suite}-source",
                   writable=[fetch])
        self._step("source", root, [*apt, "source", "--download-only", "qemu"],
                   log_name=f"debian-{suite}-source", writable=[fetch], cwd=package)
        dsc = next(package.glob("qemu_*.dsc"), None)
        if dsc is None:
            raise BuildError(f"apt-get source qemu left no .dsc in {package}")
        tree = self.work / "src" / "qemu"
        tree.parent.mkdir(parents=True, exist_ok=True)
        self._step("source", root, ["dpkg-source", "-x", os.fspath(dsc), os.fspath(tree)],
                   log_name=f"debian-{suite}-source", writable=[fetch, self.work], cwd=self.work)
        tree_version = read_tree_version(tree)
        _check_requested(version, tree_version, f"Debian {suite}'s qemu source package")
        name = f"{tree_version}+debian-{suite}"
        debian_version = dsc.stem.split("_", 1)[1]
        return _Prepared(tree, tree_version, name, f"debian:{suite}",
                         f"Debian {suite}'s qemu {debian_version} source package")

    # --- steps 2-6 ------------------------------------------------------------------------------

    def _ready_root(self, root: BuildRoot) -> RootfsProvider:
        provider = self.root_provider(root)
        if not provider.ready():
            self.progress(f"qemu: making the {root.name} build root (once; a few minutes)")
        provider.provision(lambda line: self.status(line))
        return provider

    def _build(self, prepared: _Prepared) -> BuiltRelease:
        started = time.monotonic()
        era = self.data.era_for(prepared.version)
        root = self._ready_root(self.data.root_of(era))
        label = f"qemu {prepared.name}"
        build_dir = self.work / "build"
        build_dir.mkdir()
        self.progress(f"{label}: configure ({era.build_system}, {Path(era.python).name}, "
                      f"{self.data.root_of(era).suite} build root) from {prepared.described}")
        self._step("configure", root, self._configure_argv(era, prepared.tree),
                   log_name=f"{prepared.name}-configure", writable=[self.work],
                   readable=[prepared.tree], cwd=build_dir, environment=era.environment)
        targets = list(era.programs.values())
        tool = "make" if era.build_system == "make" else "ninja"
        self.progress(f"{label}: {tool} -j{self.jobs} {' '.join(targets)}")
        self._step("compile", root, [tool, f"-j{self.jobs}", *targets],
                   log_name=f"{prepared.name}-compile", writable=[self.work],
                   readable=[prepared.tree], cwd=build_dir, environment=era.environment)
        build = self._install(prepared, era, build_dir, time.monotonic() - started)
        self._check(build)
        return build

    def _configure_argv(self, era: Era, tree: Path) -> list[str]:
        system_meson = era.build_system == "meson" and not _bundles_meson(tree)
        argv = [os.fspath(tree / "configure"), *era.configure]
        if not system_meson:  # "--python requires using QEMU's embedded Meson distribution"
            argv.append(f"--python={era.python}")
        cflags = list(era.cflags)
        if era.compat_headers:
            compat = self.work / "compat"
            for header, text in era.compat_headers.items():
                (compat / header).parent.mkdir(parents=True, exist_ok=True)
                (compat / header).write_text(text + "\n")
            cflags.append(f"-I{compat}")
            self.notes.append(f"compatibility headers: {', '.join(era.compat_headers)}")
        if cflags:
            argv.append(f"--extra-cflags={' '.join(cflags)}")
        if system_meson:
            # A Debian source package drops the bundled meson; the build root has the suite's
            # (run by its own python3).
            argv.append("--meson=/usr/bin/meson")
            self.notes.append("the tree bundles no meson: the build root's /usr/bin/meson")
        return argv

    def _install(self, prepared: _Prepared, era: Era, build_dir: Path, seconds: float
                 ) -> BuiltRelease:
        destination = self.base / prepared.name
        staging = self.base / f".{prepared.name}.installing"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "bin").mkdir(parents=True)
        programs = {}
        for program, path in era.programs.items():
            built = build_dir / path
            if not built.is_file():
                raise BuildError(f"qemu {prepared.name}: install: the build made no {path}")
            shutil.copy2(built, staging / "bin" / program)
            programs[program] = program
        build = BuiltRelease(
            name=prepared.name, version=prepared.version,
            run_suite=self.data.root_of(era).suite, source=prepared.described,
            identity=prepared.identity, recipe=era.digest(self.data.root_of(era)),
            seconds=round(seconds, 1),
            built_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            programs=programs, directory=staging,
        )
        build.save()
        if destination.exists():
            shutil.rmtree(destination)
        staging.replace(destination)
        return BuiltRelease.load(destination) or build

    def _check(self, build: BuiltRelease) -> None:
        """Run ``qemu-img --version`` where the peers will run it: the suite's peer root."""
        suite = default_suites().suites.get(build.run_suite)
        runner = RootfsProvider(suite) if suite is not None else None
        if runner is None or not runner.ready():
            self.notes.append(f"not run: the {build.run_suite} peer root filesystem is not "
                              f"installed (`nbd-harness peers install {build.run_suite}`)")
            return
        program = build.program_path("qemu-img")
        result = runner.run([os.fspath(program), "--version"], timeout=STEP_TIMEOUTS["check"],
                            binds=[build.bin_dir], check=False)
        first = (result.stdout or "").strip().splitlines()[:1]
        if result.returncode != 0 or not first:
            raise BuildError(f"qemu {build.name}: check: qemu-img --version failed in the "
                             f"{build.run_suite} peer root: {(result.stderr or '').strip()[:200]}")
        self.notes.append(f"runs in the {build.run_suite} peer root: {first[0]}")

    # --- running one step in the build root -----------------------------------------------

    def _step(
        self,
        step: str,
        root: RootfsProvider,
        argv: Sequence[str],
        *,
        log_name: str,
        writable: Sequence[Path],
        readable: Sequence[Path] = (),
        cwd: Path | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        """Run ``argv`` in the build root; on failure say which step, with the log's tail."""
        log_path = self.logs / f"{log_name}.log"
        if step != "source":
            log_path.unlink(missing_ok=True)
        command = _sandbox(root.root, argv, writable=writable, readable=readable, cwd=cwd,
                           environment={**BUILD_ENVIRONMENT, **(environment or {})})
        timeout = STEP_TIMEOUTS[step]
        started = time.monotonic()
        process = ManagedProcess.start(command, log_path=log_path, env=BUILD_ENVIRONMENT)
        try:
            while (code := process.poll()) is None:
                elapsed = time.monotonic() - started
                if elapsed > timeout:
                    raise BuildError(f"{step} took longer than {timeout:g} s; log {log_path}")
                self.status(f"{step} {_minutes(elapsed)} {_last_line(log_path)}")
                time.sleep(STATUS_INTERVAL)
        finally:
            code = process.stop()
        if code != 0:
            tail = "\n    ".join(process.log_tail(15).splitlines())
            raise BuildError(f"{step} failed (exit {code}): {' '.join(argv[:3])} ...\n"
                             f"  log {log_path}, last lines:\n    {tail}")


def _sandbox(root: Path, argv: Sequence[str], *, writable: Sequence[Path],
             readable: Sequence[Path], cwd: Path | None, environment: dict[str, str]
             ) -> list[str]:
    """The bwrap command running ``argv`` in the build root with a clean environment."""
    mounts: list[str] = []
    for path in readable:
        if not any(Path(path).is_relative_to(w) for w in writable):
            mounts += ["--ro-bind", os.fspath(path), os.fspath(path)]
    for path in writable:
        mounts += ["--bind", os.fspath(path), os.fspath(path)]
    return [
        find_program("bwrap"), *system_mounts(root),
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *mounts,
        "--unshare-pid", "--die-with-parent",
        *(["--chdir", os.fspath(cwd)] if cwd is not None else []),
        "--", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in environment.items()), *argv,
    ]


def _bundles_meson(tree: Path) -> bool:
    return (tree / "meson" / "meson.py").is_file() or any(
        (tree / "python" / "wheels").glob("meson-*.whl")
    )


def _release_identity(filename: str, digest: str) -> str:
    return f"{filename} sha256:{digest}"


def _check_requested(requested: str | None, tree_version: str, described: str) -> None:
    if requested is None or requested == tree_version:
        return
    if series_name(tree_version) != requested:
        raise BuildError(f"{described} is qemu {tree_version}, not {requested}")


def _minutes(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _last_line(log_path: Path, width: int = 80) -> str:
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, log_path.stat().st_size - 2048))
            lines = handle.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip()[:width] if lines else ""


__all__ = ["BuildReport", "QemuBuilder"]
