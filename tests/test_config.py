"""Server configuration: every key understood, every mistake a clear one-line error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.address import Address
from harness.errors import UserError
from reference_server.config import (
    EXPORT_KEYS,
    LIMIT_KEYS,
    SERVER_KEYS,
    BitmapConfig,
    ConfigError,
    ExportConfig,
    ServerConfig,
    ServerLimits,
    block_sizes,
    config_from_dict,
    load_config,
    parse_export_spec,
    parse_listen,
    parse_size,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in ``tmp_path`` so messages start with the bare ``server.toml``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_config(directory: Path, text: str, name: str = "server.toml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as stream:
        stream.truncate(size)
    return path


def config_error(in_tmp: Path, text: str) -> str:
    """The message loading ``text`` as ``server.toml`` fails with."""
    write_config(in_tmp, text)
    with pytest.raises(ConfigError) as caught:
        load_config(Path("server.toml"))
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- sizes and addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (512, 512),
        ("512", 512),
        ("0", 0),
        ("4k", 4 * KiB),
        ("4K", 4 * KiB),
        ("64KiB", 64 * KiB),
        ("64kb", 64 * KiB),
        ("8M", 8 * MiB),
        ("8 MiB", 8 * MiB),
        ("1G", GiB),
        ("1g", GiB),
        ("1T", 1 << 40),
        ("2P", 2 << 50),
        ("512B", 512),
        (" 3m ", 3 * MiB),
    ],
)
def test_parse_size(text: int | str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["8Q", "", "1.5G", "-4k", "k", "4 kk", "0x100", "1iB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"is not a size \(use e\.g\. 4096, 64k, 8M, 1G\)"):
        parse_size(text)


def test_parse_size_rejects_other_types() -> None:
    for value in (True, 1.5, None, [1]):
        with pytest.raises(ConfigError, match="is not a size"):
            parse_size(value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="negative"):
        parse_size(-1)


def test_parse_listen() -> None:
    assert parse_listen("tcp://127.0.0.1:0") == Address.tcp("127.0.0.1", 0)
    assert parse_listen("tcp://[::1]:10809") == Address.tcp("::1", 10809)
    tcp = parse_listen("tcp://localhost:0")
    assert (tcp.kind, tcp.host, tcp.port, tcp.path) == ("tcp", "localhost", 0, "")
    unix = parse_listen("unix:/tmp/nbd.sock")
    assert (unix.kind, unix.path) == ("unix", "/tmp/nbd.sock")
    for bad in ("127.0.0.1:10809", "tcp://:0", "unix:", "tcp://host:port"):
        with pytest.raises(ConfigError):
            parse_listen(bad)


# --- a complete file ----------------------------------------------------------------------------


def test_full_example_loads(in_tmp: Path) -> None:
    certs = in_tmp / "certs"
    certs.mkdir()
    for name in ("ca-cert.pem", "server-cert.pem", "server-key.pem"):
        (certs / name).write_text("dummy\n")
    sparse_file(in_tmp / "top.raw", 4 * MiB)
    sparse_file(in_tmp / "base.raw", 8 * MiB)
    sparse_file(in_tmp / "disk.raw", 2 * MiB)
    path = write_config(
        in_tmp,
        """
        [server]
        listen = "tcp://127.0.0.1:0"
        tls = "optional"
        tls_certificates = "certs/"
        tls_verify_peer = true
        handshake = "fixed-newstyle"
        port_file = "port.txt"
        default_export = "disk"
        list_exports = false

        [[export]]
        name = "chain"
        size = "8M"
        backend = "layers"
        layers = ["top.raw", "base.raw"]
        read_only = false
        bitmaps = ["b0", {name = "b1", granularity = "4k"}]
        description = "two-layer chain"
        min_block_size = 1
        preferred_block_size = 4096
        max_payload_size = "32M"
        block_size_required = false
        multi_conn = true
        tls = "required"
        init_state = true
        rotational = true
        fast_zero = false

        [[export]]
        name = "disk"
        backend = "file"
        path = "disk.raw"
        read_only = true

        [[export]]
        name = "ram"
        size = "64G"
        min_block_size = 512
        """,
    )
    config = load_config(path)
    assert config.listen == Address.tcp("127.0.0.1", 0)
    assert config.tls == "optional"
    assert config.tls_certificates == in_tmp / "certs"
    assert config.tls_verify_peer is True
    assert config.handshake == "fixed-newstyle"
    assert config.port_file == in_tmp / "port.txt"
    assert config.list_exports is False
    assert config.source == path
    chain, disk, ram = config.exports
    assert chain == ExportConfig(
        name="chain",
        size=8 * MiB,
        backend="layers",
        layers=(in_tmp / "top.raw", in_tmp / "base.raw"),
        bitmaps=(BitmapConfig("b0", 64 * KiB), BitmapConfig("b1", 4 * KiB)),
        description="two-layer chain",
        min_block_size=1,
        preferred_block_size=4096,
        max_payload_size=32 * MiB,
        block_size_configured=True,
        tls="required",
        init_state=True,
        rotational=True,
        fast_zero=False,
    )
    assert chain.has_default_block_sizes
    assert disk.size == 2 * MiB and disk.path == in_tmp / "disk.raw" and disk.read_only
    assert not disk.block_size_configured
    assert ram.size == 64 * GiB and ram.backend == "memory"
    assert (ram.min_block_size, ram.preferred_block_size, ram.max_payload_size) == (
        512,
        4096,
        32 * MiB,
    )
    assert not ram.has_default_block_sizes
    # The empty name is the default export; names match exactly.
    assert config.export("") is disk
    assert config.export("chain") is chain
    assert config.export("CHAIN") is None


def test_defaults(in_tmp: Path) -> None:
    config = load_config(write_config(in_tmp, '[[export]]\nname = "a"\nsize = 4096\n'))
    assert config.listen == Address.tcp("127.0.0.1", 0)
    assert (config.tls, config.handshake, config.list_exports) == ("off", "fixed-newstyle", True)
    assert config.port_file is None and config.tls_certificates is None
    (export,) = config.exports
    assert export == ExportConfig(name="a", size=4096)
    assert (export.min_block_size, export.preferred_block_size) == (1, 4096)
    assert export.multi_conn and export.fast_zero and not export.read_only
    assert config.export("") is export  # "" = first export
    write_config(in_tmp, "")
    assert load_config(Path("server.toml")) == ServerConfig(source=Path("server.toml"))


def test_sizes_from_files_and_relative_paths(tmp_path: Path) -> None:
    images = tmp_path / "conf"
    images.mkdir()
    sparse_file(images / "disk.raw", 3 * MiB)
    sparse_file(images / "top.raw", 1 * MiB)
    sparse_file(images / "base.raw", 5 * MiB)
    path = write_config(
        images,
        """
        [server]
        listen = "unix:/tmp/x.sock"
        [[export]]
        name = "f"
        backend = "file"
        path = "disk.raw"
        [[export]]
        name = "l"
        backend = "layers"
        layers = ["top.raw", "base.raw"]
        [[export]]
        name = "new"
        backend = "file"
        path = "new.raw"
        size = "1M"
        """,
    )
    config = load_config(path)  # relative to the file's directory, not the cwd
    assert [e.size for e in config.exports] == [3 * MiB, 5 * MiB, MiB]
    assert config.exports[1].layers == (images / "top.raw", images / "base.raw")
    assert config.listen.kind == "unix" and config.listen.path == "/tmp/x.sock"
    assert not (images / "new.raw").exists()  # loading never creates files


# --- every mistake, one clear line ---------------------------------------------------------


def test_bad_size_message_is_exact(in_tmp: Path) -> None:
    message = config_error(in_tmp, '[[export]]\nname = "chain"\nsize = "8Q"\n')
    assert message == (
        'server.toml: export "chain": size "8Q" is not a size (use e.g. 4096, 64k, 8M, 1G)'
    )


def test_unknown_keys_name_the_known_ones(in_tmp: Path) -> None:
    message = config_error(in_tmp, '[[export]]\nname = "a"\nsize = 512\nmutli_conn = true\n')
    assert message.startswith('server.toml: export "a": unknown key "mutli_conn" (did you mean')
    assert '"multi_conn"' in message and "known keys: name, size, backend" in message
    message = config_error(in_tmp, '[server]\nlisten_on = "tcp://127.0.0.1:0"\n')
    assert message.startswith(
        'server.toml: server: unknown key "listen_on" (did you mean "listen"?'
    )
    message = config_error(in_tmp, '[servr]\nlisten = "x"\n')
    assert 'unknown key "servr"' in message and 'did you mean "server"' in message
    message = config_error(
        in_tmp, '[[export]]\nname = "a"\nsize = 512\nbitmaps = [{name = "b", gran = 512}]\n'
    )
    assert 'export "a": bitmaps: unknown key "gran"' in message


def test_toml_syntax_error_has_line_and_column(in_tmp: Path) -> None:
    message = config_error(in_tmp, '[server]\nlisten = "tcp://127.0.0.1:0"\ntls off\n')
    assert message.startswith("server.toml: not valid TOML:")
    assert "line 3" in message and "column" in message


def test_missing_config_file(in_tmp: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothere\.toml: no such configuration file"):
        load_config(Path("nothere.toml"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # exports
        ("[[export]]\nsize = 512\n", 'export #1 needs a name = "..." key'),
        ("[[export]]\nname = 5\nsize = 512\n", "export #1: name must be a string, not 5"),
        ('[export]\nname = "a"\n', "export must be an array of tables: write [[export]]"),
        ("server = 3\n", "server must be a table: write [server]"),
        (
            '[[export]]\nname = "a"\nsize = 512\n[[export]]\nname = "a"\nsize = 512\n',
            'export "a" is defined twice',
        ),
        ('[[export]]\nname = "a"\n', 'export "a": backend = "memory" needs a size'),
        ('[[export]]\nname = "a"\nsize = 512\nbackend = "ram"\n', 'backend "ram" is not one of'),
        ('[[export]]\nname = "a"\nbackend = "file"\n', 'backend = "file" needs path = "FILE"'),
        ('[[export]]\nname = "a"\nbackend = "layers"\n', 'backend = "layers" needs layers = ['),
        (
            '[[export]]\nname = "a"\nbackend = "layers"\nlayers = []\n',
            'backend = "layers" needs layers = [',
        ),
        (
            '[[export]]\nname = "a"\nsize = 512\nlayers = ["x.raw"]\n',
            'export "a": layers is only for backend = "layers" (this export has "memory")',
        ),
        (
            '[[export]]\nname = "a"\nbackend = "layers"\nlayers = ["x.raw"]\npath = "y"\n',
            'path is only for backend = "file" (this export has "layers")',
        ),
        (
            '[[export]]\nname = "a"\nbackend = "layers"\nlayers = ["x.raw", "./x.raw"]\n',
            "layers lists the same file twice",
        ),
        (
            '[[export]]\nname = "a"\nbackend = "layers"\nlayers = ["missing.raw"]\n',
            "missing.raw: no such file (layer files are never created)",
        ),
        (
            '[[export]]\nname = "a"\nbackend = "file"\npath = "missing.raw"\n',
            "missing.raw: no such file; give a size to create it sparse",
        ),
        (
            '[[export]]\nname = "a"\nbackend = "file"\npath = "missing.raw"\nsize = 512\n'
            "read_only = true\n",
            "no such file (a read-only export cannot create it)",
        ),
        (
            '[[export]]\nname = "a"\nbackend = "file"\npath = "nodir/x.raw"\nsize = 512\n',
            "nodir does not exist",
        ),
        (
            '[[export]]\nname = "a"\nsize = 512\nread_only = "yes"\n',
            'read_only must be true or false, not "yes"',
        ),
        ('[[export]]\nname = "a"\nsize = 512\ndescription = 7\n', "description must be a string"),
        (
            '[[export]]\nname = "a"\nsize = 512\ntls = "on"\n',
            'tls "on" is not one of "inherit", "required"',
        ),
        ('[[export]]\nname = "a"\nsize = "9E"\n', "larger than the largest export size"),
        # block sizes (spec "Size constraints")
        (
            '[[export]]\nname = "a"\nsize = 4096\nmin_block_size = 3\n',
            "min_block_size 3 must be a power of two from 1 to 65536",
        ),
        (
            '[[export]]\nname = "a"\nsize = "1M"\nmin_block_size = "128k"\n',
            "min_block_size 131072 must be a power of two from 1 to 65536",
        ),
        (
            '[[export]]\nname = "a"\nsize = 4096\npreferred_block_size = 256\n',
            "preferred_block_size 256 must be a power of two of at least 512",
        ),
        (
            '[[export]]\nname = "a"\nsize = 4096\nmin_block_size = 4096\n'
            "preferred_block_size = 1024\n",
            "preferred_block_size 1024 must be a power of two of at least 4096",
        ),
        (
            '[[export]]\nname = "a"\nsize = 4096\npreferred_block_size = 3000\n',
            "preferred_block_size 3000 must be a power of two",
        ),
        (
            '[[export]]\nname = "a"\nsize = 4096\nmax_payload_size = 1024\n',
            "max_payload_size 1024 must be from preferred_block_size (4096)",
        ),
        (
            '[[export]]\nname = "a"\nsize = 4096\nmin_block_size = 512\nmax_payload_size = 5000\n',
            "max_payload_size 5000 must be a multiple of min_block_size 512",
        ),
        (
            '[[export]]\nname = "a"\nsize = 4096\nmax_payload_size = "8G"\n',
            "max_payload_size 8589934592 must be from preferred_block_size (4096) to 0xffffffff",
        ),
        (
            '[[export]]\nname = "a"\nsize = 1000\nmin_block_size = 512\n',
            "size 1000 is not a multiple of min_block_size 512",
        ),
        # bitmaps
        ('[[export]]\nname = "a"\nsize = 512\nbitmaps = "b0"\n', "bitmaps must be a list"),
        (
            '[[export]]\nname = "a"\nsize = 512\nbitmaps = [""]\n',
            "every bitmap needs a non-empty name",
        ),
        (
            '[[export]]\nname = "a"\nsize = 512\nbitmaps = ["b", "b"]\n',
            'bitmap "b" is listed twice',
        ),
        ('[[export]]\nname = "a"\nsize = 512\nbitmaps = [3]\n', "bitmaps: 3 is neither a name"),
        (
            '[[export]]\nname = "a"\nsize = 512\nbitmaps = [{name = "b", granularity = 256}]\n',
            'bitmap "b": granularity 256 must be a power of two from 512 to 2G',
        ),
        (
            '[[export]]\nname = "a"\nsize = 512\nbitmaps = [{name = "b", granularity = "x"}]\n',
            'bitmap "b": granularity "x" is not a size',
        ),
        # server
        ('[server]\nlisten = "http://x"\n', "server: listen 'http://x': expected tcp://HOST:PORT"),
        ("[server]\nlisten = 10809\n", "listen must be a string, not 10809"),
        ('[server]\ntls = "yes"\n', 'tls "yes" is not one of "off", "optional", "required"'),
        ('[server]\ntls = "required"\n', 'tls = "required" needs tls_certificates = "DIR"'),
        (
            '[server]\ntls = "required"\ntls_certificates = "nocerts"\n',
            "nocerts: no such directory",
        ),
        (
            '[server]\ntls = "optional"\nhandshake = "oldstyle"\n',
            'tls = "optional" needs handshake = "fixed-newstyle"',
        ),
        ('[server]\nhandshake = "old"\n', 'handshake "old" is not one of'),
        ("[server]\ntls_verify_peer = true\n", 'tls_verify_peer = true needs tls = "optional"'),
        (
            '[server]\nlisten = "unix:/tmp/s"\nport_file = "p"\n',
            "port_file only makes sense with a tcp:// listen address",
        ),
        (
            '[server]\ndefault_export = "b"\n[[export]]\nname = "a"\nsize = 512\n',
            'default_export "b" is not an export (exports: "a")',
        ),
        ("[server]\nlist_exports = 1\n", "list_exports must be true or false, not 1"),
        (
            '[[export]]\nname = "a"\nsize = 512\ntls = "required"\n',
            'export "a" has tls = "required" but the server has tls = "off"',
        ),
    ],
)
def test_mistakes(in_tmp: Path, text: str, expected: str) -> None:
    message = config_error(in_tmp, text)
    assert message.startswith("server.toml: ")
    assert expected in message


def test_certificate_files_are_checked(in_tmp: Path) -> None:
    certs = in_tmp / "certs"
    certs.mkdir()
    (certs / "server-cert.pem").write_text("x")
    base = '[server]\ntls = "required"\ntls_certificates = "certs"\n'
    assert "server-key.pem is missing" in config_error(in_tmp, base)
    (certs / "server-key.pem").write_text("x")
    assert load_config(Path("server.toml")).tls == "required"
    assert "ca-cert.pem is missing" in config_error(in_tmp, base + "tls_verify_peer = true\n")


def test_config_error_is_a_user_error() -> None:
    assert issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)


def test_config_from_dict_without_a_file() -> None:
    config = config_from_dict({"export": [{"name": "x", "size": "1M", "read_only": True}]})
    assert config.exports == (ExportConfig(name="x", size=MiB, read_only=True),)
    with pytest.raises(ConfigError, match=r'^export "x": size "1Z" is not a size'):
        config_from_dict({"export": [{"name": "x", "size": "1Z"}]})


def test_key_tables_document_every_key() -> None:
    assert all(SERVER_KEYS.values()) and all(EXPORT_KEYS.values())
    assert "listen" in SERVER_KEYS and "layers" in EXPORT_KEYS
    assert set(LIMIT_KEYS) == set(ServerLimits.__dataclass_fields__) and all(LIMIT_KEYS.values())


# --- [limits] ----------------------------------------------------------------------------------


def test_limits_default_when_absent_and_parse_sizes_and_seconds(in_tmp: Path) -> None:
    assert load_config(write_config(in_tmp, "")).limits == ServerLimits()
    config = load_config(write_config(in_tmp, """\
        [limits]
        max_connections = 8
        listen_backlog = 64
        handshake_timeout = 2.5
        idle_timeout = 30
        reply_timeout = 5
        max_option_length = "16k"
        max_meta_context_queries = 4
        max_request_payload = "32M"
        max_inflight_bytes = "1G"
        """))
    assert config.limits == ServerLimits(
        max_connections=8, listen_backlog=64, handshake_timeout=2.5, idle_timeout=30.0,
        reply_timeout=5.0, max_option_length=16 * KiB, max_meta_context_queries=4,
        max_request_payload=32 * MiB, max_inflight_bytes=GiB)


def test_every_documented_limit_is_in_the_docs() -> None:
    text = (Path(__file__).parents[1] / "docs" / "server-limits.md").read_text()
    assert all(f"`{key}`" in text for key in LIMIT_KEYS)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("limits = 3\n", "limits must be a table: write [limits]"),
        ("[limits]\nmax_conections = 3\n", 'unknown key "max_conections" (did you mean '
         '"max_connections"?'),
        ("[limits]\nmax_connections = 0\n", "limits: max_connections 0 must be at least 1"),
        ("[limits]\nmax_connections = \"8\"\n", 'max_connections must be a whole number, '
         'not "8"'),
        ("[limits]\nhandshake_timeout = 0\n", "handshake_timeout 0.0 must be a positive number"),
        ("[limits]\nreply_timeout = true\n", "reply_timeout must be a number of seconds"),
        ("[limits]\nmax_option_length = 100\n", "max_option_length 100 must be at least 8192"),
        ("[limits]\nmax_request_payload = \"1M\"\n", "max_request_payload 1048576 must be "
         "from 33554432"),
        ("[limits]\nmax_inflight_bytes = \"32M\"\n", "max_inflight_bytes 33554432 must be "
         "at least max_request_payload"),
    ],
)
def test_limit_mistakes(in_tmp: Path, text: str, expected: str) -> None:
    message = config_error(in_tmp, text)
    assert message.startswith("server.toml: ")
    assert expected in message


def test_typed_limits_are_checked_with_the_server() -> None:
    with pytest.raises(ConfigError, match=r"^limits: max_connections 0 must be at least 1$"):
        ServerConfig(limits=ServerLimits(max_connections=0)).validated()


# --- command-line export specs -------------------------------------------------------------


def test_parse_export_spec(tmp_path: Path) -> None:
    assert parse_export_spec("disk=memory:64M") == ExportConfig(name="disk", size=64 * MiB)
    assert parse_export_spec("=memory:4k:ro") == ExportConfig(name="", size=4096, read_only=True)
    sparse_file(tmp_path / "a.raw", MiB)
    sparse_file(tmp_path / "b.raw", 2 * MiB)
    file_export = parse_export_spec("f=file:a.raw", base_dir=tmp_path)
    assert (file_export.backend, file_export.path, file_export.size) == (
        "file",
        tmp_path / "a.raw",
        MiB,
    )
    read_only = parse_export_spec(f"f=file:{tmp_path / 'a.raw'}:ro")
    assert read_only.read_only and read_only.path == tmp_path / "a.raw"
    new = parse_export_spec("n=file:new.raw:8M", base_dir=tmp_path)
    assert (new.size, new.path) == (8 * MiB, tmp_path / "new.raw")
    chain = parse_export_spec("c=layers:a.raw,b.raw:ro", base_dir=tmp_path)
    assert chain.layers == (tmp_path / "a.raw", tmp_path / "b.raw")
    assert (chain.size, chain.read_only) == (2 * MiB, True)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("disk", "expected NAME=memory:SIZE"),
        ("disk=memory", "expected NAME=memory:SIZE"),
        ("disk=disk:1M", "expected NAME=memory:SIZE"),
        ("disk=memory:8Q", 'size "8Q" is not a size'),
        ("disk=file:", "file needs a path"),
        ("disk=file:missing.raw", "no such file; give a size"),
        ("disk=layers:missing.raw", "missing.raw: no such file"),
        ("disk=memory:1000", None),
    ],
)
def test_parse_export_spec_errors(tmp_path: Path, spec: str, expected: str | None) -> None:
    if expected is None:
        assert parse_export_spec(spec, base_dir=tmp_path).size == 1000
        return
    with pytest.raises(ConfigError) as caught:
        parse_export_spec(spec, base_dir=tmp_path)
    assert str(caught.value).startswith(f'export spec "{spec}"')
    assert expected in str(caught.value)


def test_typed_configuration_is_checked_like_a_file(tmp_path: Path) -> None:
    """Code builds the typed values directly; validated() gives the parser's messages."""
    minimum, preferred, maximum = block_sizes(minimum=65536)
    assert (minimum, preferred, maximum) == (65536, 65536, 32 * MiB)
    export = ExportConfig(name="a", size=MiB, min_block_size=minimum,
                          preferred_block_size=preferred, max_payload_size=maximum)
    assert export.validated() is export
    assert ServerConfig(exports=(export,)).validated().exports == (export,)
    with pytest.raises(ConfigError, match=r"^min_block_size 3 must be a power of two"):
        ExportConfig(name="a", size=MiB, min_block_size=3).validated()
    with pytest.raises(ConfigError, match=r'^bitmap "b0" is listed twice'):
        ExportConfig(name="a", size=MiB,
                     bitmaps=(BitmapConfig("b0"), BitmapConfig("b0"))).validated()
    with pytest.raises(ConfigError, match=r'^export "a": size 1000 is not a multiple'):
        ServerConfig(exports=(ExportConfig(name="a", size=1000, min_block_size=512,
                                           preferred_block_size=512),)).validated()
    with pytest.raises(ConfigError, match=r'^tls = "required" needs tls_certificates'):
        ServerConfig(tls="required").validated()
    with pytest.raises(ConfigError, match=r'^export "a" is defined twice'):
        ServerConfig(exports=(ExportConfig(name="a", size=MiB),) * 2).validated()
