"""Where a qemu build's source tree comes from, and getting it ready to configure.

``--source`` may name a source tree (``~/src/qemu``), a release tarball
(``qemu-2.12.1.tar.xz``), a URL, or ``debian:SUITE`` (that suite's ``qemu``
source package, fetched with ``apt-get source`` from a deb-src entry the
harness writes into a scratch sources list of its own). Without it the
official release tarball listed in ``matrix/qemu-builds.toml`` is downloaded
and checked against its SHA-256.

A user's tree is never written to: it is copied (without ``roms/`` and
``.git``) into the build's work directory, since a build writes into its tree
(8.x's meson runs the iotests lister there). A tree that lost its executable
bits (some imports of release tarballs into git did) gets them back on the copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError

from .data import BuildData, Release

DOWNLOAD_TIMEOUT = 60.0
UNPACK_TIMEOUT = 600.0
DEBIAN_PREFIX = "debian:"
# Not needed to build the tools, and the largest part of a tree.
_COPY_SKIPPED = {"roms", ".git"}


class BuildError(UserError):
    """A build that cannot go on; the message says which step and what to do."""


@dataclass(frozen=True)
class SourceSpec:
    """What ``--source`` named: ``kind`` is release, dir, tarball, url or debian."""

    kind: str
    value: str

    def __str__(self) -> str:
        return self.value if self.kind != "debian" else f"{DEBIAN_PREFIX}{self.value}"


def parse_source(text: str | None) -> SourceSpec:
    """Classify ``--source``; a path that does not exist is a one-line error."""
    if text is None:
        return SourceSpec("release", "")
    if text.startswith(DEBIAN_PREFIX):
        suite = text[len(DEBIAN_PREFIX):]
        if not suite.isalpha():
            raise BuildError(f"--source {text}: expected debian:SUITE, e.g. debian:bullseye")
        return SourceSpec("debian", suite)
    if text.startswith(("http://", "https://")):
        return SourceSpec("url", text)
    path = Path(text).expanduser()
    if path.is_dir():
        return SourceSpec("dir", os.fspath(path.resolve()))
    if path.is_file():
        return SourceSpec("tarball", os.fspath(path.resolve()))
    raise BuildError(f"--source {text}: no such directory or file")


def read_tree_version(tree: Path) -> str:
    """The version in a qemu tree's ``VERSION`` file; a clear error when it is not a tree."""
    version_file = tree / "VERSION"
    if not (tree / "configure").is_file() or not version_file.is_file():
        raise BuildError(f"{tree} is not a qemu source tree (it needs configure and VERSION)")
    version = version_file.read_text(errors="replace").strip()
    if not version or not version[0].isdigit():
        raise BuildError(f"{version_file} does not hold a qemu version: {version[:40]!r}")
    return version


def lost_exec_bits(tree: Path) -> bool:
    """True when the tree's ``configure`` is not executable: its scripts lost their bits."""
    return not os.access(tree / "configure", os.X_OK)


def restore_exec_bits(tree: Path) -> int:
    """Make every regular file that starts with ``#!`` executable; return how many changed."""
    changed = 0
    for directory, _dirs, files in os.walk(tree):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            if mode & 0o111 == 0o111:
                continue
            with open(path, "rb") as handle:
                if handle.read(2) != b"#!":
                    continue
            os.chmod(path, mode | 0o755)
            changed += 1
    return changed


def copy_tree(tree: Path, destination: Path) -> None:
    """Copy a source tree without ``roms/`` and ``.git`` (symlinks kept as links)."""

    def skipped(directory: str, names: list[str]) -> set[str]:
        return _COPY_SKIPPED & set(names) if Path(directory) == tree else set()

    shutil.copytree(tree, destination, symlinks=True, ignore=skipped)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, release: Release) -> None:
    actual = file_sha256(path)
    if actual != release.sha256:
        raise BuildError(
            f"{path.name}: SHA-256 {actual} is not the {release.version} release's "
            f"{release.sha256} (matrix/qemu-builds.toml): a different or damaged file"
        )


def download(url: str, destination: Path) -> Path:
    """Download ``url`` into ``destination`` (a file); a one-line error when it cannot."""
    partial = destination.with_name(destination.name + ".partial")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
              open(partial, "wb") as out):
            shutil.copyfileobj(response, out, 1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise BuildError(
            f"cannot download {url} ({reason}): get the release tree or tarball another way "
            "and pass it with --source DIR|TARBALL"
        ) from None
    partial.replace(destination)
    return destination


def unpack_tarball(tarball: Path, destination: Path) -> Path:
    """Unpack a release tarball into ``destination``; return the tree (its one top folder)."""
    destination.mkdir(parents=True, exist_ok=True)
    # tar(1), not the tarfile module: it reads xz and bz2 faster, and Python 3.11.2 has no
    # extraction filter against members that point outside the destination.
    result = subprocess.run(
        ["tar", "-xf", os.fspath(tarball), "-C", os.fspath(destination), "--no-same-owner"],
        capture_output=True, text=True, timeout=UNPACK_TIMEOUT, check=False,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise BuildError(f"{tarball}: not a readable tarball ({detail})")
    tops = [p for p in destination.iterdir() if p.is_dir()]
    tree = tops[0] if len(tops) == 1 else destination
    read_tree_version(tree)
    return tree


def release_to_fetch(data: BuildData, version: str | None) -> Release:
    """The release tarball a build without ``--source`` downloads."""
    if version is None:
        raise BuildError("give a VERSION (e.g. 2.12) or --source DIR|TARBALL|URL|debian:SUITE")
    release = data.release_for(version)
    if release is None:
        known = ", ".join(r.version for r in data.releases)
        raise BuildError(
            f"no release tarball of qemu {version} in matrix/qemu-builds.toml (known: {known}): "
            "pass --source DIR|TARBALL|URL"
        )
    return release


__all__ = ["DEBIAN_PREFIX", "BuildError", "SourceSpec", "check_sha256", "copy_tree",
           "download", "file_sha256", "lost_exec_bits", "parse_source", "read_tree_version",
           "release_to_fetch", "restore_exec_bits", "unpack_tarball"]
