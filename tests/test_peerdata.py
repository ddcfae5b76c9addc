"""The version/feature data in matrix/: it loads, it says what its sources say,
and malformed data gets a one-line error naming the file and the key."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.paths import SPEC_DIR
from harness.peerdata import (
    DEFAULT_ROOT,
    PeerDataError,
    load_peerdata,
    parse_version,
    version_matches,
)

QEMU_RST = SPEC_DIR / "qemu-nbd.rst"

# The phrases of qemu's "Features by version" list -> our feature ids.
RST_PHRASES = {
    "``NBD_OPT_STARTTLS`` with TLS X.509 Certificates": ["starttls-x509"],
    "``NBD_CMD_WRITE_ZEROES``": ["write-zeroes"],
    "``NBD_OPT_GO``": ["opt-go"],
    "``NBD_INFO_BLOCK``": ["info-block-size"],
    "``NBD_OPT_STRUCTURED_REPLY``": ["structured-replies"],
    "``NBD_CMD_BLOCK_STATUS`` for ``base:allocation``": ["base-allocation"],
    "``NBD_OPT_STARTTLS`` with TLS Pre-Shared Keys (PSK)": ["starttls-psk"],
    "``NBD_CMD_BLOCK_STATUS`` for ``qemu:dirty-bitmap:``": ["dirty-bitmap"],
    "``NBD_CMD_CACHE``": ["cache"],
    "``NBD_FLAG_CAN_MULTI_CONN`` for shareable read-only exports": ["multi-conn-read-only"],
    "``NBD_CMD_FLAG_FAST_ZERO``": ["fast-zero"],
    "``NBD_CMD_BLOCK_STATUS`` for ``qemu:allocation-depth``": ["allocation-depth"],
    "``NBD_FLAG_CAN_MULTI_CONN`` for shareable writable exports": ["multi-conn-writable"],
    "``NBD_OPT_EXTENDED_HEADERS``": ["extended-headers"],
    "``NBD_FLAG_BLOCK_STATUS_PAYLOAD``": ["block-status-payload"],
}


def rst_features_by_version() -> dict[str, str]:
    """feature id -> version, read from qemu's own list in docs/spec/qemu-nbd.rst."""
    if not QEMU_RST.is_file():
        pytest.fail(f"{QEMU_RST} is missing (the copy of qemu's docs/interop/nbd.rst)",
                    pytrace=False)
    text = QEMU_RST.read_text().split("Features by version", 1)[1]
    found: dict[str, str] = {}
    for version, body in re.findall(r"^(\d+\.\d+)\n((?:  .*\n)+)", text, re.MULTILINE):
        items = " ".join(line.strip() for line in body.splitlines())
        for phrase in re.split(r",\s+(?=``)", items):
            phrase = phrase.strip().rstrip(",")
            assert phrase in RST_PHRASES, f"unmapped qemu feature phrase: {phrase!r}"
            for feature in RST_PHRASES[phrase]:
                found[feature] = version
    return found


@pytest.fixture(scope="module")
def data():
    return load_peerdata()


# --- the repository's data ----------------------------------------------------------------


def test_data_loads_with_every_program_and_listed_version(data):
    assert set(data.programs) == {"qemu", "nbdkit", "libnbd", "nbd-server"}
    versions = {name: [v.version for v in p.versions] for name, p in data.programs.items()}
    assert versions["qemu"] == ["2.6", "2.8", "2.10", "2.11", "2.12", "3.0", "3.1", "4.1", "4.2",
                                "5.2", "6.2", "7.1", "7.2", "8.2", "10.0", "11.1"]
    assert versions["nbdkit"] == ["1.24", "1.32", "1.42", "1.48"]
    assert versions["libnbd"] == ["1.6", "1.14", "1.22", "1.24"]
    assert versions["nbd-server"] == ["3.21", "3.24", "3.26", "3.27"]


def test_packaged_versions_name_their_debian_suites(data):
    suites = {
        (name, info.version): {p.suite for p in info.packaged}
        for name, program in data.programs.items() for info in program.versions if info.packaged
    }
    assert suites == {
        ("qemu", "5.2"): {"bullseye"},
        ("qemu", "7.2"): {"bookworm"},
        ("qemu", "10.0"): {"bookworm-backports", "trixie"},
        ("qemu", "11.1"): {"sid"},
        ("nbdkit", "1.24"): {"bullseye"},
        ("nbdkit", "1.32"): {"bookworm"},
        ("nbdkit", "1.42"): {"trixie"},
        ("nbdkit", "1.48"): {"sid"},
        ("libnbd", "1.6"): {"bullseye"},
        ("libnbd", "1.14"): {"bookworm"},
        ("libnbd", "1.22"): {"trixie"},
        ("libnbd", "1.24"): {"sid"},
        ("nbd-server", "3.21"): {"bullseye"},
        ("nbd-server", "3.24"): {"bookworm"},
        ("nbd-server", "3.26"): {"trixie"},
        ("nbd-server", "3.27"): {"sid"},
    }


def test_every_claim_and_quirk_cites_a_source(data):
    for program in data.programs.values():
        for claim in program.claims:
            assert len(claim.source) > 10, (program.name, claim)
        for quirk in program.quirk_list:
            assert len(quirk.source) > 10 and quirk.description, (program.name, quirk)


@pytest.mark.parametrize("role", ["server", "client"])
def test_qemu_claims_match_qemus_own_features_by_version_list(data, role):
    qemu = data.program("qemu")
    for feature, version in rst_features_by_version().items():
        claims = [c for c in qemu.claims if c.role == role and c.feature == feature]
        if role == "client" and feature.startswith("multi-conn"):
            continue  # a server flag: the client side has nothing to claim
        # A claim that departs from the list on evidence says where the list puts it.
        assert [c.upstream_since or c.since for c in claims] == [version], (role, feature)


def test_qemu_version_boundaries(data):
    qemu = data.program("qemu")
    assert "opt-go" not in qemu.features("2.8", "server")
    assert "opt-go" in qemu.features("2.10", "server")
    assert "structured-replies" not in qemu.features("2.10", "server")
    assert set(qemu.features("2.11", "server")) >= {"structured-replies", "opt-go"}
    assert not {"base-allocation", "dirty-bitmap"} & set(qemu.features("2.11", "server"))
    assert "multi-conn-writable" not in qemu.features("7.0.5", "server")  # any release works
    assert "multi-conn-writable" in qemu.features("7.2.19", "server")
    # `until` is the first version without the feature.
    assert qemu.has("oldstyle", "2.8", "server") and not qemu.has("oldstyle", "2.10", "server")
    claim = qemu.features("11.1", "server")["extended-headers"]
    assert (claim.since, claim.until) == ("8.2", None) and "8.2" in claim.source


def test_known_quirks_are_data(data):
    nbd_server, qemu, nbdkit = (data.program(n) for n in ("nbd-server", "qemu", "nbdkit"))
    for info in nbd_server.versions:
        assert "info-size-zero" in {q.id for q in nbd_server.quirks(info.version)}
    misreporting = {i.version for i in nbd_server.versions
                    if "misreports-version" in {q.id for q in nbd_server.quirks(i.version)}}
    assert misreporting == {"3.21", "3.27"}
    assert nbd_server.version_info("3.21").reports == "3.18"
    assert nbd_server.version_info("3.24").reports is None
    assert "no-multi-conn-writable" in {q.id for q in qemu.quirks("2.6")}
    assert "no-multi-conn-writable" in {q.id for q in qemu.quirks("5.2")}
    assert "no-multi-conn-writable" not in {q.id for q in qemu.quirks("7.1")}
    for info in nbdkit.versions:
        assert not nbdkit.has("extended-headers", info.version, "server")
        assert "no-extended-headers" in {q.id for q in nbdkit.quirks(info.version)}


def test_libnbd_is_client_only_and_learns_extended_headers_in_1_18(data):
    libnbd = data.program("libnbd")
    assert libnbd.roles() == ("client",)
    assert not libnbd.has("extended-headers", "1.14", "client")
    assert libnbd.has("extended-headers", "1.22", "client")


def test_version_info_finds_releases_of_listed_versions(data):
    qemu = data.program("qemu")
    assert qemu.version_info("10.0.2").version == "10.0"
    with pytest.raises(PeerDataError, match="not a listed version"):
        qemu.version_info("9.1")


# --- versions ------------------------------------------------------------------------------


def test_parse_version_and_version_matches():
    assert parse_version("10.0.2") == (10, 0, 2)
    assert version_matches(actual="7.2.19", listed="7.2")
    assert version_matches(actual="10.0", listed="10.0")
    assert not version_matches(actual="7.20", listed="7.2")
    assert not version_matches(actual="7", listed="7.2")
    for bad in ("", "7.x", "v7.2", "1:7.2+dfsg", "7..2"):
        with pytest.raises(ValueError, match="not a version"):
            parse_version(bad)


def test_features_rejects_a_malformed_version_argument(data):
    with pytest.raises(PeerDataError, match="not a version"):
        data.program("qemu").features("seven", "server")


# --- malformed data ------------------------------------------------------------------------

GOOD_PROGRAM = """\
program = "demo"
description = "a demo server"

[[version]]
version = "1.0"

[[version]]
version = "2.0"
packaged = [{ suite = "bookworm", package = "demo" }]

[[server]]
feature = "opt-go"
since = "1.0"
source = "demo docs"

[[quirk]]
id = "odd"
role = "server"
description = "does something odd"
source = "demo docs"
"""


def make_root(tmp_path: Path, program: str = GOOD_PROGRAM, name: str = "demo") -> Path:
    root = tmp_path / "matrix"
    (root / "peers").mkdir(parents=True)
    shutil.copy(DEFAULT_ROOT / "features.toml", root / "features.toml")
    (root / "peers" / f"{name}.toml").write_text(program)
    return root


def test_a_minimal_program_file_loads(tmp_path):
    data = load_peerdata(make_root(tmp_path))
    demo = data.program("demo")
    assert demo.versions[1].packaged[0].suite == "bookworm"
    assert set(demo.features("2.0", "server")) == {"opt-go"}
    assert [q.id for q in demo.quirks("1.0")] == ["odd"]
    with pytest.raises(PeerDataError, match="no peer data for 'qemu'"):
        data.program("qemu")


BROKEN = [
    (GOOD_PROGRAM.replace('feature = "opt-go"', 'feature = "opt-goo"'),
     r'\[\[server\]\] #1 \(feature "opt-goo"\): unknown feature id'),
    (GOOD_PROGRAM.replace('since = "1.0"\nsource = "demo docs"', 'since = "1.0"'),
     r'\[\[server\]\] #1: missing key "source"'),
    (GOOD_PROGRAM.replace('since = "1.0"', 'since = "1.x"'),
     r'\[\[server\]\] #1 \(feature "opt-go"\): since \'1.x\' is not a version'),
    (GOOD_PROGRAM.replace('since = "1.0"', 'since = "2.0"\nuntil = "1.5"'),
     r"until 1.5 must be later than since 2.0"),
    (GOOD_PROGRAM.replace('since = "1.0"', 'since = "1.0"\nsince_when = "x"'),
     r'\[\[server\]\] #1: unknown key "since_when"'),
    (GOOD_PROGRAM.replace('program = "demo"', 'program = "other"'),
     r'program "other" must match the file name \(demo.toml\)'),
    (GOOD_PROGRAM.replace('version = "2.0"', 'version = "0.5"'),
     r"\[\[version\]\] 0.5: versions must be listed in increasing order"),
    (GOOD_PROGRAM.replace('role = "server"', 'role = "both"'),
     r'\[\[quirk\]\] #1 \(id "odd"\): role must be one of'),
    (GOOD_PROGRAM + '\n[[server]]\nfeature = "opt-go"\nsince = "2.0"\nsource = "again"\n',
     r"\[\[server\]\] #2 \(feature \"opt-go\"\): overlaps an earlier server claim"),
    (GOOD_PROGRAM + '\n[[client]]\nfeature = "multi-conn-writable"\nsince = "1.0"\n'
     'source = "x docs"\n', r"has no client role in matrix/features.toml"),
    (GOOD_PROGRAM.replace("[[server]]", "[server]"),
     r"server must be an array of tables: write \[\[server\]\]"),
    ("program = ", r"demo.toml: not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BROKEN)
def test_malformed_program_files_get_a_clear_error(tmp_path, text, message):
    root = make_root(tmp_path, text)
    with pytest.raises(PeerDataError, match=message) as caught:
        load_peerdata(root)
    assert "demo.toml" in str(caught.value)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, UserError)


def test_malformed_feature_vocabulary_gets_a_clear_error(tmp_path):
    root = make_root(tmp_path)
    text = (root / "features.toml").read_text()
    (root / "features.toml").write_text(text.replace('roles = ["server"]', 'roles = ["seller"]', 1))
    with pytest.raises(PeerDataError, match=r"features.toml: \[feature.multi-conn-read-only\]: "
                       "roles must list"):
        load_peerdata(root)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(PeerDataError, match=r"features\.toml: no such file"):
        load_peerdata(tmp_path / "nowhere")


@pytest.mark.parametrize(("old", "new", "message"), [
    ('flag = "NBD_FLAG_SEND_TRIM"', 'flag = "NBD_FLAG_SEND_TRIMM"',
     r"\[feature.trim\]: flag: 'NBD_FLAG_SEND_TRIMM' is not a NBD_FLAG_\* name"),
    ('grants = { options = ["NBD_OPT_LIST"] }', 'grants = { options = ["NBD_OPT_LISTS"] }',
     r"\[feature.list-exports\]: grants: options: 'NBD_OPT_LISTS' is not a NBD_OPT_\* name"),
    ('read_only_hides = ["fua"]', 'read_only_hides = ["fuaa"]',
     r"\[quirk.read-only-hides-fua\]: read_only_hides: unknown feature 'fuaa'"),
])
def test_malformed_feature_semantics_get_a_clear_error(tmp_path, old, new, message):
    root = make_root(tmp_path)
    text = (root / "features.toml").read_text()
    assert old in text
    (root / "features.toml").write_text(text.replace(old, new, 1))
    with pytest.raises(PeerDataError, match=message):
        load_peerdata(root)


def test_feature_semantics_are_data(data):
    """One table says what a feature means: on the wire, in the reference server, in cases."""
    trim = data.features["trim"]
    assert (trim.flag, trim.grants.switches) == ("NBD_FLAG_SEND_TRIM", ("trim",))
    assert data.features["opt-go"].refused_by == ("NBD_OPT_GO", "NBD_OPT_INFO")
    assert data.features["starttls-psk"].reference_lacks == ("server", "client")
    assert data.quirks["read-only-hides-fua"].read_only_hides == ("fua",)
    quirk_ids = {q.id for program in data.programs.values() for q in program.quirk_list}
    assert quirk_ids <= set(data.quirks)
