"""Peers without running a peer: names, export expectations, suites data, providers'
command construction (rootfs, docker), Dockerfiles, resolution and ``peers list --json``."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from harness.address import Address
from harness.cli import main
from harness.peers import (
    DRIVERS,
    BitmapSpec,
    Catalog,
    ClientPeer,
    DataRange,
    Endpoint,
    ExportSpec,
    ExportSpecError,
    Layer,
    PeerSpec,
    PeerSpecError,
    parse_peer_spec,
    pattern,
)
from harness.peers._provider import read_dpkg_status, upstream_version
from harness.peers.actions import ActionUnavailable, default_client_actions, perform_action
from harness.peers.docker import DOCKER_DIR, DockerProvider
from harness.peers.qemu_io import parse_hexdump
from harness.peers.rootfs import CHECK_VALID_UNTIL, RootfsProvider, cache_dir, outermost
from harness.peers.suites import SuiteDataError, host_mirror, load_suites
from harness.process import PeerError

KiB = 1024

CHAIN = ExportSpec(
    size=1024 * KiB,
    layers=(
        Layer((DataRange(0, 128 * KiB, 2), DataRange(512 * KiB, 64 * KiB, 2))),
        Layer((DataRange(64 * KiB, 128 * KiB, 3),)),
    ),
    bitmaps=(BitmapSpec("b0"), BitmapSpec("coarse", granularity=256 * KiB)),
    writes_after_bitmaps=(DataRange(256 * KiB, 64 * KiB, 9),),
)


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("qemu-nbd@5.2", PeerSpec("qemu-nbd", "5.2")),
        ("nbdkit@1.48", PeerSpec("nbdkit", "1.48")),
        ("libnbd@1.24", PeerSpec("libnbd", "1.24")),
        ("nbd-server@3.26", PeerSpec("nbd-server", "3.26")),
        ("qemu-nbd@trixie", PeerSpec("qemu-nbd", "trixie")),
        ("reference-server@qemu-2.10", PeerSpec("reference-server", "qemu-2.10")),
        ("nbdinfo", PeerSpec("nbdinfo", None)),
    ],
)
def test_peer_names_parse_and_print_back(text: str, spec: PeerSpec) -> None:
    assert parse_peer_spec(text) == spec
    assert str(spec) == text


@pytest.mark.parametrize("text", ["", "@5.2", "qemu-nbd@", "qemu nbd@5.2", "QEMU@1", "x@1@2"])
def test_malformed_peer_names_are_user_errors(text: str) -> None:
    with pytest.raises(PeerSpecError, match="PROGRAM@VERSION"):
        parse_peer_spec(text)


# --- what a correct client sees -------------------------------------------------------------------


def test_export_content_layers_over_each_other() -> None:
    content = CHAIN.content()
    assert len(content) == CHAIN.size
    assert content[: 64 * KiB] == pattern(0, 64 * KiB, 2)
    assert content[64 * KiB : 192 * KiB] == pattern(64 * KiB, 128 * KiB, 3)  # top wins
    assert content[192 * KiB : 256 * KiB] == bytes(64 * KiB)
    assert content[256 * KiB : 320 * KiB] == pattern(256 * KiB, 64 * KiB, 9)
    assert content[512 * KiB : 576 * KiB] == pattern(512 * KiB, 64 * KiB, 2)
    assert CHAIN.read(100, 50) == content[100:150]


def test_export_extents_are_exact() -> None:
    assert CHAIN.allocation_depth() == [
        (0, 64 * KiB, 2),
        (64 * KiB, 128 * KiB, 1),
        (192 * KiB, 64 * KiB, 0),
        (256 * KiB, 64 * KiB, 1),
        (320 * KiB, 192 * KiB, 0),
        (512 * KiB, 64 * KiB, 2),
        (576 * KiB, 448 * KiB, 0),
    ]
    assert CHAIN.base_allocation() == [
        (0, 192 * KiB, 0),
        (192 * KiB, 64 * KiB, 3),
        (256 * KiB, 64 * KiB, 0),
        (320 * KiB, 192 * KiB, 3),
        (512 * KiB, 64 * KiB, 0),
        (576 * KiB, 448 * KiB, 3),
    ]
    assert CHAIN.dirty_extents("b0") == [
        (0, 256 * KiB, 0), (256 * KiB, 64 * KiB, 1), (320 * KiB, 704 * KiB, 0)
    ]
    # A coarser bitmap marks the whole granule the write touched.
    assert CHAIN.dirty_extents("coarse") == [
        (0, 256 * KiB, 0), (256 * KiB, 256 * KiB, 1), (512 * KiB, 512 * KiB, 0)
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"size": 0}, "positive"),
        ({"image_format": "vmdk"}, "image format"),
        ({"layers": (Layer((DataRange(4096, 64 * KiB),)),)}, "aligned"),
        ({"layers": (Layer((DataRange(0, 2048 * KiB),)),)}, "outside"),
        ({"bitmaps": (BitmapSpec("a"), BitmapSpec("a"))}, "unique"),
        ({"bitmaps": (BitmapSpec("a", granularity=1000),)}, "power-of-two"),
        ({"writes_after_bitmaps": (DataRange(0, 64 * KiB),)}, "needs at least one bitmap"),
    ],
)
def test_bad_exports_are_refused_clearly(changes: dict, message: str) -> None:
    with pytest.raises(ExportSpecError, match=message):
        ExportSpec(**{"size": 1024 * KiB, **changes})


def test_endpoint_uris() -> None:
    tcp = Endpoint(Address.tcp("127.0.0.1", 4242), "disk")
    assert tcp.uri() == "nbd://127.0.0.1:4242/disk"
    assert tcp.binds() == []
    tls = Endpoint(Address.tcp("127.0.0.1", 4242), "disk", Path("/pki"))
    assert tls.uri() == "nbds://127.0.0.1:4242/disk?tls-certificates=/pki"
    unix = Endpoint(Address.unix("/run/x/s.sock"), "a b")
    assert unix.uri() == "nbd+unix:///a%20b?socket=/run/x/s.sock"
    assert unix.binds() == [Path("/run/x")]


def test_qemu_io_hexdump_parses_back_to_the_bytes() -> None:
    data = bytes(range(40))
    lines = []
    for start in range(0, len(data), 16):
        chunk = data[start : start + 16]
        words = " ".join(f"{b:02x}" for b in chunk)
        lines.append(f"{100 + start:08x}:  {words}  {'.' * len(chunk)}")
    text = "\n".join(lines) + "\nread 40/40 bytes at offset 100\n"
    assert parse_hexdump(text, 100, 40) == data


# --- suites data and the machine's mirror ---------------------------------------------------


def test_suites_data_has_every_suite_the_project_names() -> None:
    data = load_suites()
    assert set(data.suites) >= {"bullseye", "bookworm", "bookworm-backports", "trixie", "sid"}
    assert data.suite("bullseye").versions == {
        "qemu": "5.2", "nbdkit": "1.24", "libnbd": "1.6", "nbd-server": "3.21"
    }
    backports = data.suite("bookworm-backports")
    assert backports.release == "bookworm"
    assert backports.apt_suites() == ("bookworm", "bookworm-backports")
    assert "qemu-utils/bookworm-backports" in backports.include_list()
    assert data.suite("bullseye").package_of("qemu-storage-daemon") == "qemu-system-common"
    assert data.suite("sid").package_of("qemu-storage-daemon") == "qemu-utils"
    assert data.family_of("nbdinfo") == "libnbd"
    with pytest.raises(SuiteDataError, match="unknown Debian suite 'potato'"):
        data.suite("potato")


def test_malformed_suites_data_names_the_suite_and_key(tmp_path: Path) -> None:
    path = tmp_path / "suites.toml"
    path.write_text('[suite.sid]\nproviders = ["lxc"]\n')
    with pytest.raises(SuiteDataError, match=r"\[suite.sid\]: provider 'lxc'"):
        load_suites(path)
    path.write_text('[suite.sid]\npackagez = ["x"]\n')
    with pytest.raises(SuiteDataError, match="unknown key 'packagez'"):
        load_suites(path)


def test_host_mirror_reads_deb822_and_one_line_sources(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NBD_HARNESS_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert host_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "deb [arch=amd64] http://one.example/debian bookworm main\n"
    )
    assert host_mirror(tmp_path) == "http://one.example/debian"
    monkeypatch.setenv("NBD_HARNESS_DEBIAN_MIRROR", "http://override.example/d/")
    assert host_mirror(tmp_path) == "http://override.example/d"


def test_no_mirror_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NBD_HARNESS_DEBIAN_MIRROR", raising=False)
    with pytest.raises(Exception, match="NBD_HARNESS_DEBIAN_MIRROR"):
        host_mirror(tmp_path)


@pytest.mark.parametrize(
    ("debian", "upstream"),
    [("1:7.2+dfsg-7+deb12u18+b3", "7.2"), ("1.32.5-1", "1.32.5"),
     ("1:10.0.2+ds-2+deb13u1~bpo12+1", "10.0.2"), ("1:3.27.1-4", "3.27.1"), ("3.24", "3.24")],
)
def test_upstream_version(debian: str, upstream: str) -> None:
    assert upstream_version(debian) == upstream


def test_dpkg_status_lists_installed_packages_only(tmp_path: Path) -> None:
    status = tmp_path / "var/lib/dpkg/status"
    status.parent.mkdir(parents=True)
    status.write_text(
        "Package: nbdkit\nStatus: install ok installed\nVersion: 1.32.5-1\nDescription: x\n"
        " more\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1\n"
    )
    assert read_dpkg_status(tmp_path) == {"nbdkit": "1.32.5-1"}


# --- providers: command construction -------------------------------------------------------------


def test_rootfs_builds_with_mmdebstrap_from_the_host_mirror(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NBD_HARNESS_DEBIAN_MIRROR", "http://mirror.example/debian")
    provider = RootfsProvider(load_suites().suite("bookworm-backports"), tmp_path)
    argv = provider.mmdebstrap_argv(tmp_path / "out.tar.zst")
    assert argv[:2] == ["mmdebstrap", "--variant=essential"]
    assert "--include=qemu-utils/bookworm-backports,nbdkit,libnbd-bin,python3-libnbd,nbd-server" \
        in argv
    # Spelled exactly so, as one word: the mirror is a frozen snapshot.
    assert "--aptopt=Acquire::Check-Valid-Until \"false\"" in argv
    assert CHECK_VALID_UNTIL == 'Acquire::Check-Valid-Until "false"'
    assert argv[-4:] == [
        "bookworm",
        str(tmp_path / "out.tar.zst"),
        "deb http://mirror.example/debian bookworm main",
        "deb http://mirror.example/debian bookworm-backports main",
    ]
    assert not provider.ready()
    assert provider.install_hint() == "nbd-harness peers install bookworm-backports"
    assert provider.tarball == tmp_path / "bookworm-backports.tar.zst"


def test_rootfs_runs_with_bubblewrap_in_the_host_network(tmp_path: Path) -> None:
    provider = RootfsProvider(load_suites().suite("sid"), tmp_path)
    argv = provider.wrap(["qemu-nbd", "--version"], binds=[Path("/tmp/a"), Path("/tmp/a/b"),
                                                          Path("/srv/x")], cwd=Path("/tmp/a"))
    root = tmp_path / "sid"
    # Only the system directories are bound (read-only): the rest of / is bwrap's tmpfs, where
    # it can make the mount point of a bound directory anywhere.
    assert argv[:5] == ["bwrap", "--proc", "/proc", "--dev", "/dev"]
    (root / "usr").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "bin").symlink_to("usr/bin")
    argv = provider.wrap(["qemu-nbd", "--version"], binds=[Path("/tmp/a"), Path("/tmp/a/b"),
                                                          Path("/srv/x")], cwd=Path("/tmp/a"))
    assert argv[:14] == ["bwrap", "--ro-bind", str(root / "usr"), "/usr",
                         "--ro-bind", str(root / "etc"), "/etc", "--symlink", "usr/bin", "/bin",
                         "--proc", "/proc", "--dev", "/dev"]
    assert argv[14:17] == ["--tmpfs", "/tmp", "--bind"]
    assert "--ro-bind" not in argv[argv.index("--bind"):]
    assert "--unshare-net" not in argv
    assert argv.count("--bind") == 2  # /tmp/a/b lies inside /tmp/a
    assert argv[argv.index("--unshare-pid"):][:2] == ["--unshare-pid", "--die-with-parent"]
    assert argv[-5:] == ["--chdir", "/tmp/a", "--", "qemu-nbd", "--version"]
    # bwrap would resolve a relative directory inside the sandbox, where it does not exist.
    argv = provider.wrap(["qemu-nbd"], binds=[Path("case")], cwd=Path("case"))
    assert argv[-3:] == [str(Path("case").absolute()), "--", "qemu-nbd"]
    assert outermost([Path("/x/y"), Path("/x"), Path("/xy")]) == ["/x", "/xy"]


def test_cache_lives_outside_the_repository(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NBD_HARNESS_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.setenv("NBD_HARNESS_CACHE", str(Path(__file__).parent / "cache"))
    with pytest.raises(Exception, match="inside the repository"):
        cache_dir()


def test_docker_commands(monkeypatch) -> None:
    monkeypatch.setenv("NBD_HARNESS_DOCKER_IMAGE", "registry.example/nbd/peers")
    monkeypatch.setenv("NBD_HARNESS_DEBIAN_MIRROR", "http://mirror.example/debian")
    provider = DockerProvider(load_suites().suite("trixie"))
    assert provider.name == "docker:trixie"
    assert provider.image == "registry.example/nbd/peers:trixie"
    argv = provider.wrap(["nbdkit", "--version"], binds=[Path("/tmp/w"), Path("/tmp/w/s")],
                         cwd=Path("/tmp/w"), label="nbd-harness-test-1")
    assert argv[:5] == ["docker", "run", "--rm", "--init", "--network"]
    assert argv[5] == "host"
    assert argv[argv.index("--name") + 1] == "nbd-harness-test-1"
    assert argv.count("--volume") == 1 and "/tmp/w:/tmp/w" in argv
    assert argv[argv.index("--workdir") + 1] == "/tmp/w"
    assert "PATH=/usr/sbin:/usr/bin:/sbin:/bin" in argv
    assert argv[-3:] == ["registry.example/nbd/peers:trixie", "nbdkit", "--version"]
    build = provider.build_argv()
    assert build[:4] == ["docker", "build", "--tag", "registry.example/nbd/peers:trixie"]
    assert "DEBIAN_MIRROR=http://mirror.example/debian" in build
    assert build[build.index("--file") + 1] == str(DOCKER_DIR / "Dockerfile.trixie")
    assert build[-1] == str(DOCKER_DIR)
    assert provider.pull_argv() == ["docker", "pull", "registry.example/nbd/peers:trixie"]
    assert provider.install_hint() == "nbd-harness peers install --docker trixie"


def test_every_docker_suite_has_a_dockerfile_installing_its_packages() -> None:
    for suite in load_suites().suites.values():
        if "docker" not in suite.providers:
            continue
        text = (DOCKER_DIR / f"Dockerfile.{suite.name}").read_text()
        assert "FROM ${BASE_IMAGE}" in text and f"debian:{suite.release}-slim" in text
        installed = re.search(r"--no-install-recommends\s+\\\n(.*?)\s*&& rm", text, re.S)
        assert installed, suite.name
        words = [w for w in installed.group(1).replace("\\", " ").split() if w]
        assert words == suite.include_list(), suite.name
        for apt_suite in suite.apt_suites():
            assert f"deb %s {apt_suite} main" in text
        assert 'Acquire::Check-Valid-Until "false";' in text
        assert "deb.debian.org" not in text  # the mirror is passed in, never hard-coded


# --- resolution -------------------------------------------------------------------------------


def _catalog_without_rootfs(tmp_path: Path) -> Catalog:
    # An empty cache directory: no suite is installed.
    return Catalog.load(kinds=("host", "rootfs"), rootfs_base=tmp_path)


def test_a_missing_suite_says_what_to_run(tmp_path: Path) -> None:
    catalog = _catalog_without_rootfs(tmp_path)
    with pytest.raises(PeerSpecError,
                       match=r"qemu-nbd@5\.2 is not installed: run `nbd-harness peers install "
                             r"bullseye`"):
        catalog.resolve("qemu-nbd@5.2")
    with pytest.raises(PeerSpecError, match="peers install trixie"):
        catalog.resolve("nbdkit@trixie")


def test_an_unpackaged_version_points_to_the_reference_profiles(tmp_path: Path) -> None:
    catalog = _catalog_without_rootfs(tmp_path)
    with pytest.raises(PeerSpecError, match=r"no Debian suite .* carries qemu-nbd@2\.10 .*"
                                            r"reference-server@qemu-2\.10"):
        catalog.resolve("qemu-nbd@2.10")
    with pytest.raises(PeerSpecError, match="unknown peer program 'qemu-kvm'"):
        catalog.resolve("qemu-kvm@1.0")


def test_reference_peers_resolve_without_a_provider(tmp_path: Path) -> None:
    catalog = _catalog_without_rootfs(tmp_path)
    server = catalog.resolve("reference-server@qemu-2.10")
    assert server.program == "reference-server" and server.profile == "qemu-2.10"
    assert catalog.resolve("reference-client").program == "reference-client"


def test_peers_list_json_shape(capsys) -> None:
    assert main(["peers", "list", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    rows = document["peers"]
    assert rows, "no peers listed"
    keys = {"peer", "program", "version", "family", "roles", "suite", "provided", "provider",
            "providers", "hint"}
    for row in rows:
        assert set(row) == keys
        assert row["peer"] == f"{row['program']}@{row['version']}" or row["version"] == "builtin"
        assert isinstance(row["provided"], bool)
        assert row["provided"] == (row["provider"] is not None)
        for provider in row["providers"]:
            assert set(provider) == {"name", "kind", "ready", "version", "hint"}
    by_peer = {(row["peer"], row["suite"]): row for row in rows}
    sid = by_peer[("qemu-nbd@11.1", "sid")]
    assert [p["name"] for p in sid["providers"]] == ["rootfs:sid", "docker:sid"]
    assert sid["roles"] == ["server"]
    assert by_peer[("nbdinfo@1.6", "bullseye")]["family"] == "libnbd"
    assert by_peer[("reference-server", None)]["provided"] is True
    # 2.11: a version no suite carries and no release here is built of (`peers build`).
    old = by_peer[("qemu-nbd@2.11", None)]
    assert old["provided"] is False and "reference-server@qemu-2.11" in old["hint"]


def test_peers_cli_errors_are_one_line(capsys) -> None:
    assert main(["peers", "install", "potato"]) == 2
    assert "unknown Debian suite 'potato'" in capsys.readouterr().err
    assert main(["peers", "doctor", "qemu-kvm"]) == 2
    assert "unknown peer program 'qemu-kvm'" in capsys.readouterr().err


def test_the_reference_server_is_configured_from_the_export_itself(tmp_path: Path) -> None:
    """host_reference's configuration is built from the ExportSpec, no document parsed."""
    from harness.peers.reference import EXTRA_EXPORT_SIZE, reference_config

    spec = ExportSpec(size=1024 * KiB, name="d", image_format="raw", read_only=True,
                      bitmaps=CHAIN.bitmaps, min_block_size=4096, multi_conn=False,
                      init_state=True, description="scratch")
    config = reference_config(spec, tmp_path, storage="memory", handshake="newstyle",
                              list_exports=False, extra_exports=("other",))
    export, other = config.exports
    assert (export.name, export.size, export.backend, export.read_only) == (
        "d", 1024 * KiB, "memory", True)
    assert (export.min_block_size, export.preferred_block_size) == (4096, 4096)
    assert export.block_size_configured and not export.multi_conn and export.init_state
    assert [b.name for b in export.bitmaps] == [b.name for b in CHAIN.bitmaps]
    assert (other.name, other.size) == ("other", EXTRA_EXPORT_SIZE)
    assert (config.handshake, config.list_exports, config.tls) == ("newstyle", False, "off")
    layered = reference_config(CHAIN, tmp_path)
    assert layered.exports[0].backend == "layers"
    assert [p.name for p in layered.exports[0].layers] == ["layer1.raw", "layer0.raw"]


# --- client actions: matrix/client-actions.toml is the one place ---------------------------

PERFORMED = ("perform", "read", "write", "map", "size", "info", "list_exports", "copy_from",
             "copy_to", "run")


def real_client_drivers() -> list[type[ClientPeer]]:
    return [d for d in DRIVERS.values() if issubclass(d, ClientPeer) and not d.builtin]


def test_every_real_client_driver_is_its_table_of_client_actions() -> None:
    """A client driver's capabilities are exactly what its table in matrix/client-actions.toml
    gives it, and no driver builds a command line of its own for an action."""
    table = default_client_actions()
    drivers = real_client_drivers()
    assert {d.program for d in drivers} >= {"nbdinfo", "nbdsh", "nbdcopy", "qemu-img",
                                            "qemu-io", "libnbd"}
    host = Catalog.load(kinds=("host",)).provider("host")
    for driver in drivers:
        program = table[driver.actions_program or driver.program]
        assert program.actions, driver.program
        peer = driver(host)
        assert peer.capabilities == program.capabilities(), driver.program
        assert set(program.actions) <= peer.capabilities
        for method in PERFORMED:
            assert method not in vars(driver), f"{driver.program} defines its own {method}"
    # The derived capabilities, exactly.
    assert table["nbdcopy"].capabilities() == {"copy-in", "copy-out", "read"}
    assert table["qemu-img"].capabilities() == {"info", "size", "map", "copy-in", "copy-out",
                                                "read"}
    assert "map-contexts" in table["nbdinfo"].capabilities()


class RecordingProvider:
    """Stands for a provider: records the command and answers with ``stdout`` (a unit test
    of our own code; no program runs)."""

    name = "recording"

    def __init__(self, stdout: str = "", returncode: int = 0) -> None:
        self.stdout, self.returncode = stdout, returncode
        self.calls: list[dict[str, object]] = []

    def run(self, argv, **kwargs):
        self.calls.append({"argv": list(argv), **kwargs})
        return subprocess.CompletedProcess(argv, self.returncode, self.stdout, "boom")


def test_perform_action_picks_the_form_for_the_context_and_tls(tmp_path: Path) -> None:
    table = default_client_actions()
    plain = Endpoint(Address.tcp("127.0.0.1", 4242), "disk")
    provider = RecordingProvider("[]")
    run = perform_action(table["qemu-img"], "map", plain, provider, workdir=tmp_path,
                         timeout=5, context="qemu:dirty-bitmap:b0")
    assert run.argv[-1] == ("driver=nbd,server.type=inet,server.host=127.0.0.1,"
                            "server.port=4242,export=disk,x-dirty-bitmap=qemu:dirty-bitmap:b0")
    assert run.output_format == "qemu-img-dirty-map-json"
    assert provider.calls[0]["cwd"] == tmp_path and tmp_path in provider.calls[0]["binds"]
    with pytest.raises(ActionUnavailable, match="cannot map qemu:allocation-depth"):
        perform_action(table["qemu-img"], "map", plain, provider, workdir=tmp_path, timeout=5,
                       context="qemu:allocation-depth")
    tls = Endpoint(Address.unix("/s/sock"), "disk", Path("/pki"))
    run = perform_action(table["qemu-io"], "read", tls, provider, workdir=tmp_path, timeout=5,
                         offset=512, length=16)
    assert "tls-creds-x509,id=tls0,dir=/pki,endpoint=client" in run.argv
    assert ("driver=nbd,server.type=unix,server.path=/s/sock,tls-hostname=localhost,"
            "export=disk,tls-creds=tls0") in run.argv
    assert "read -v 512 16" in run.argv
    assert set(provider.calls[-1]["binds"]) >= {tmp_path, Path("/s"), Path("/pki")}
    run = perform_action(table["nbdinfo"], "list", tls, provider, workdir=tmp_path, timeout=5)
    assert run.argv[-1].startswith("nbds+unix:///?socket=/s/sock")  # the server, no export
    with pytest.raises(ActionUnavailable, match="no argv_tls"):
        perform_action(table["qemu-io"], "zero", tls, provider, workdir=tmp_path, timeout=5)


def test_a_client_peer_performs_its_table(tmp_path: Path) -> None:
    endpoint = Endpoint(Address.tcp("127.0.0.1", 4242), "disk")
    provider = RecordingProvider('[{"offset": 0, "length": 4096, "type": 3},'
                                 ' {"offset": 4096, "length": 4096, "type": 3}]')
    nbdinfo = DRIVERS["nbdinfo"](provider)  # type: ignore[arg-type]
    assert nbdinfo.map(endpoint, "qemu:allocation-depth") == [(0, 8192, 3)]  # merged
    assert provider.calls[-1]["argv"] == ["nbdinfo", "--json", "--map=qemu:allocation-depth",
                                          "nbd://127.0.0.1:4242/disk"]
    with pytest.raises(PeerError, match="nbdinfo cannot write"):
        nbdinfo.write(endpoint, 0, b"x")
    libnbd = DRIVERS["libnbd"](RecordingProvider('{"size": 65536}'))  # type: ignore[arg-type]
    assert libnbd.size(endpoint) == 65536
    [call] = libnbd.provider.calls  # type: ignore[attr-defined]
    assert call["argv"][:2] == ["python3", "-c"]
    assert call["argv"][2].startswith("import nbd\nh = nbd.NBD()\n")
    assert "h.connect_uri('nbd://127.0.0.1:4242/disk')" in call["argv"][2]
    failing = DRIVERS["qemu-io"](RecordingProvider(returncode=1))  # type: ignore[arg-type]
    with pytest.raises(PeerError, match="qemu-io write: exit 1: boom"):
        failing.write(endpoint, 0, b"data")
