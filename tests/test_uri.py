"""NBD URIs (docs/spec/uri.md): the spec's own examples, TLS parameters, round
trips and one-line errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.address import Address
from harness.client.uri import DEFAULT_PORT, NbdUri, UriError, parse_uri
from harness.errors import UserError


@pytest.mark.parametrize(
    ("text", "export"),
    [
        # The table of section "NBD URI export name", verbatim.
        ("nbd://example.com/disk", "disk"),
        ("nbd+unix:///disk?socket=sock", "disk"),
        ("nbd://example.com/", ""),
        ("nbd://example.com", ""),
        ("nbd://example.com//disk", "/disk"),
        ("nbd://example.com/hello%20world", "hello world"),
    ],
)
def test_export_names_from_the_spec(text, export):
    assert parse_uri(text).export == export


def test_tcp_uri_fields_and_default_port():
    uri = parse_uri("nbd://Example.COM/disk")
    assert (uri.scheme, uri.host, uri.port, uri.effective_port) == (
        "nbd",
        "example.com",
        None,
        DEFAULT_PORT,
    )
    assert uri.address == Address.tcp("example.com", 10809)
    assert not uri.tls_required and not uri.is_unix
    uri = parse_uri("nbd://127.0.0.1:12345/x")
    assert uri.address == Address.tcp("127.0.0.1", 12345)


def test_ipv6_literal_in_brackets():
    uri = parse_uri("nbds://[::1]:10810/disk")
    assert (uri.host, uri.port, uri.tls_required) == ("::1", 10810, True)
    assert str(uri) == "nbds://[::1]:10810/disk"
    assert uri.server_hostname == "::1"


def test_unix_uris_and_abstract_socket():
    uri = parse_uri("nbd+unix:///disk?socket=/run/nbd.sock")
    assert uri.is_unix and uri.address == Address.unix("/run/nbd.sock")
    abstract = parse_uri("nbd+unix:///?socket=%00/abstract")
    assert abstract.socket == "\0/abstract" and abstract.export == ""
    assert str(abstract) == "nbd+unix:///?socket=%00/abstract"
    secure = parse_uri("nbds+unix:///disk?socket=s&tls-hostname=server.example")
    assert secure.tls_required and secure.server_hostname == "server.example"


def test_tls_parameters():
    uri = parse_uri(
        "nbds://bob@localhost/disk?tls-certificates=/etc/pki/nbd&tls-verify-peer=0"
        "&tls-hostname=nbd.example&tls-type=x509"
    )
    assert uri.tls_certificates == "/etc/pki/nbd"
    assert uri.tls_verify_peer is False
    assert uri.tls_hostname == "nbd.example" and uri.server_hostname == "nbd.example"
    assert uri.tls_username == "bob" and uri.tls_type == "x509"
    assert parse_uri("nbd://h/?tls-username=alice").tls_username == "alice"
    assert parse_uri("nbd://h/").tls_verify_peer is True


@pytest.mark.parametrize(
    "text",
    [
        "nbd://example.com/disk",
        "nbd://example.com:10809/",
        "nbds://[2001:db8::1]:99/a%20b?tls-certificates=/x%20y&tls-verify-peer=0",
        "nbd+unix:////abs?socket=/tmp/a%26b.sock",
        "nbds+unix:///d?socket=s&tls-username=u&tls-hostname=h",
        "nbd://u@h/%C3%A9t%C3%A9",
    ],
)
def test_str_round_trips(text):
    uri = parse_uri(text)
    assert parse_uri(str(uri)) == uri


@given(
    export=st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))),
    socket=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1),
)
def test_any_export_and_socket_survive_a_round_trip(export, socket):
    for uri in (
        NbdUri("nbd", host="h", port=1, export=export),
        NbdUri("nbd+unix", export=export, socket=socket),
    ):
        assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("http://example.com/", "unknown scheme"),
        ("example.com:10809", "not an NBD URI"),
        ("nbd:///disk", "needs a host"),
        ("nbd://h:0/", "port"),
        ("nbd://h:99999/", "port"),
        ("nbd://h:/", "port"),
        ("nbd://h/?socket=/x", "only valid with nbd+unix"),
        ("nbd+unix:///disk", "needs a socket=PATH"),
        ("nbd+unix://host/disk?socket=s", "has no host"),
        ("nbd://h/?frobnicate=1", "unknown query parameter 'frobnicate'"),
        ("nbd://h/?tls-verify-peer=yes", "tls-verify-peer must be 0 or 1"),
        ("nbd://h/?tls-type=kerberos", "tls-type"),
        ("nbd://h/?tls-hostname=a&tls-hostname=b", "given twice"),
        ("nbd://h/?tls-hostname", "needs a value"),
        ("nbd://h/a%00b", "NUL"),
        ("nbd://h/%FF", "UTF-8"),
        ("nbd://h/#frag", "fragment"),
        ("nbd://u:pw@h/", "passwords"),
        ("nbd://u@h/?tls-username=v", "both"),
    ],
)
def test_bad_uris_give_one_line_errors(text, words):
    with pytest.raises(UriError) as info:
        parse_uri(text)
    message = str(info.value)
    assert words in message and "\n" not in message
    assert isinstance(info.value, UserError)
