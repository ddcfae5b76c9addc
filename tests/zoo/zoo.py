"""The zoo of third-party NBD implementations: what matrix/zoo.toml lists, installed and started.

`scripts/zoo install [NAME...]` installs (idempotent; everything under
~/.cache/nbd-harness/zoo, nothing in the repo).  `scripts/zoo list` prints the
implementations.  Tests and the capture recorder import this module for the commands that
start a server or run a client.

Runs on Debian's python3 (3.11: tomllib), stdlib only.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ZOO_TOML = REPO / "matrix" / "zoo.toml"
CACHE = Path(os.environ.get("NBD_HARNESS_CACHE", Path.home() / ".cache" / "nbd-harness")) / "zoo"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
STAMP = ".zoo-installed"


class ZooError(Exception):
    """Something the zoo cannot do on this machine, said in one line."""


@dataclass(frozen=True)
class Implementation:
    """One entry of matrix/zoo.toml."""

    name: str
    version: str
    role: str
    package: str
    registry: str
    install: str
    runtime: str
    start: list[str] = field(default_factory=list)
    run: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    @property
    def home(self) -> Path:
        """Where it is installed."""
        return CACHE / f"{self.name}-{self.version}"

    @property
    def is_server(self) -> bool:
        return self.role in ("server", "both")

    @property
    def is_client(self) -> bool:
        return self.role in ("client", "both")

    def installed(self) -> bool:
        return (self.home / STAMP).is_file()

    def _expand(self, template: list[str], **values: str) -> list[str]:
        values = {"repo": str(REPO), "home": str(self.home), **values}
        if "{runtime}" in " ".join(template):
            values["runtime"] = runtime_path(self.runtime)
        return [part.format(**values) for part in template]

    def start_command(self, work: Path, size: int) -> list[str]:
        """The argv that starts this server (it prints its LISTENING line first)."""
        return self._expand(self.start, work=str(work), size=str(size))

    def run_command(self, host: str, port: int, export: str) -> list[str]:
        """The argv that runs this client against host:port, export."""
        return self._expand(self.run, host=host, port=str(port), export=export)


def load(path: Path = ZOO_TOML) -> list[Implementation]:
    """Every implementation of the zoo, in file order."""
    entries = tomllib.loads(path.read_text())["implementation"]
    return [
        Implementation(
            name=e["name"],
            version=e["version"],
            role=e["role"],
            package=e["package"],
            registry=e["registry"],
            install=e["install"],
            runtime=e["runtime"],
            start=e.get("start", []),
            run=e.get("run", []),
            data=e,
        )
        for e in entries
    ]


def runtime_path(runtime: str) -> str:
    """The interpreter a launcher needs: pyenv's old Pythons of this machine kind, or node."""
    if runtime.startswith("python"):
        wanted = runtime.removeprefix("python")
        pattern = str(Path.home() / ".pyenv" / "versions" / f"{wanted}.*" / "bin" / "python")
        found = sorted(glob.glob(pattern))
        if not found:
            raise ZooError(f"no Python {wanted} found ({pattern}); the zoo needs pyenv's")
        return found[-1]
    located = shutil.which(runtime)
    if located is None:
        raise ZooError(f"{runtime} not found on PATH")
    return located


def say(message: str) -> None:
    print(f"zoo: {message}", file=sys.stderr, flush=True)


def _run(argv: list[str], **kwargs) -> None:
    completed = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        raise ZooError(f"{' '.join(argv[:4])} ... failed: {' | '.join(tail)}")


def _install_pypi_sdist(impl: Implementation, stage: Path) -> None:
    downloads = stage / "download"
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
          "--no-binary", ":all:", "--no-build-isolation", "-d", str(downloads),
          f"{impl.package}=={impl.version}"])
    (archive,) = downloads.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(stage / "unpacked")
    (top,) = (stage / "unpacked").iterdir()
    top.rename(stage / "src")


def _install_npm(impl: Implementation, stage: Path) -> None:
    pinned = REPO / "tests" / "zoo" / impl.data["directory"]
    for name in ("package.json", "package-lock.json", "client.mjs"):
        shutil.copy(pinned / name, stage / name)
    npm = ["npm", "--no-audit", "--no-fund", "--loglevel=error"]
    _run([*npm, "ci", "--ignore-scripts"], cwd=stage)
    _run([*npm, "pack", f"{impl.package}@{impl.version}"], cwd=stage)
    (tarball,) = stage.glob("*.tgz")
    target = stage / "node_modules" / impl.package
    with tarfile.open(tarball) as tar:
        tar.extractall(stage / "packed")
    target.parent.mkdir(parents=True, exist_ok=True)
    (stage / "packed" / "package").rename(target)


def _debian_apt(suite: str) -> dict[str, str]:
    """An apt configuration of its own for one suite of the machine's mirror (host untouched)."""
    root = CACHE / "apt" / suite
    for sub in ("lists/partial", "archives/partial", "etc/apt.conf.d", "etc/preferences.d",
                "etc/sources.list.d", "etc/trusted.gpg.d"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "sources.list").write_text(
        f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {suite} main\n"
    )
    config = root / "apt.conf"
    config.write_text(
        f'Dir::Etc "{root}/etc";\nDir::State::Lists "{root}/lists";\n'
        f'Dir::Cache "{root}";\nDir::State::status "/var/lib/dpkg/status";\n'
        'Acquire::Check-Valid-Until "false";\n'
    )
    env = {**os.environ, "APT_CONFIG": str(config)}
    if not any((root / "lists").glob("*Packages*")):
        say(f"apt-get update for Debian {suite} (its own lists, under {root})")
        _run(["apt-get", "update", "-qq"], env=env)
    return env


def _install_deb_cargo(impl: Implementation, stage: Path) -> None:
    env = _debian_apt(impl.data["suite"])
    debs = stage / "debs"
    debs.mkdir()
    wanted = [f"{impl.package}={impl.version}", *impl.data.get("build_depends", [])]
    _run(["apt-get", "download", *wanted], cwd=debs, env=env)
    for deb in debs.glob("*.deb"):
        _run(["dpkg-deb", "-x", str(deb), str(stage / "root")])
    registry = stage / "root" / "usr" / "share" / "cargo" / "registry"
    project = stage / "project"
    shutil.copytree(REPO / "tests" / "zoo" / impl.data["directory"], project,
                    ignore=shutil.ignore_patterns("target"))
    config = stage / "cargo-config.toml"
    config.write_text(
        '[source.crates-io]\nreplace-with = "debian"\n'
        f'[source.debian]\ndirectory = "{registry}"\n[net]\noffline = true\n'
    )
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    _run([cargo, "build", "--release", "--quiet", "--config", str(config),
          "--target-dir", str(stage / "target")], cwd=project,
         env={**os.environ, "CARGO_HOME": str(stage / "cargo-home")})
    (stage / "bin").mkdir()
    for built in (stage / "target" / "release").glob("zoo-*"):
        if built.is_file() and os.access(built, os.X_OK):
            shutil.copy(built, stage / "bin" / built.name)


INSTALLERS = {
    "pypi-sdist": _install_pypi_sdist,
    "npm": _install_npm,
    "deb-cargo": _install_deb_cargo,
}


def install(impl: Implementation) -> None:
    """Install one implementation unless it is already there (built in a stage, then moved)."""
    if impl.installed():
        return
    say(f"installing {impl.name} {impl.version} ({impl.registry}: {impl.package})")
    runtime_path(impl.runtime) if impl.runtime != "native" else None
    stage = impl.home.with_name(impl.home.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    INSTALLERS[impl.install](impl, stage)
    (stage / STAMP).write_text(json.dumps(impl.data, indent=1))
    shutil.rmtree(impl.home, ignore_errors=True)
    stage.rename(impl.home)


def main(argv: list[str]) -> int:
    """`install [NAME...]` or `list`."""
    implementations = load()
    if not argv or argv[0] not in ("install", "list"):
        print("usage: scripts/zoo install [NAME...] | list", file=sys.stderr)
        return 2
    if argv[0] == "list":
        for impl in implementations:
            state = "installed" if impl.installed() else "not installed"
            print(f"{impl.name:18} {impl.version:12} {impl.role:7} {impl.registry:7} "
                  f"{impl.package}  ({state}: {impl.home})")
        return 0
    names = set(argv[1:])
    unknown = names - {impl.name for impl in implementations}
    if unknown:
        print(f"zoo: unknown implementation(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    try:
        for impl in implementations:
            if not names or impl.name in names:
                install(impl)
    except (ZooError, subprocess.TimeoutExpired) as error:
        print(f"zoo: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
