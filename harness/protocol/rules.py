"""Every rule of the NBD spec the harness enforces, cited once.

A rule id names one normative sentence of the spec (``server.has-flags``): whom it
binds (the id's first word), its level (the spec's key word), the section it sits under
and the sentence itself, verbatim (whitespace aside).  Both readings of the wire speak
these ids: the state machine's checks (:class:`~harness.protocol.state.Violation` and
:class:`~harness.protocol.errors.ProtocolError` carry them) and the conformance rules over
dissected sessions (``@rule(id=...)`` in :mod:`harness.conformance` looks the citation up
here).  Tests hold every sentence to the spec text under its section, and every citation
to a conformance rule that checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MUST = "MUST"
MUST_NOT = "MUST NOT"
SHOULD = "SHOULD"
SHOULD_NOT = "SHOULD NOT"
LEVELS = (MUST, MUST_NOT, SHOULD, SHOULD_NOT)
"""The spec's key words a rule can enforce, strongest first."""
MANDATORY_LEVELS = frozenset({MUST, MUST_NOT})
ROLES = ("client", "server")

_ID = re.compile(r"^(client|server)\.[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Citation:
    """One normative sentence of the spec, and the id the harness knows it by."""

    id: str
    level: str
    section: str
    """The spec heading the sentence sits under (markdown stripped)."""
    sentence: str
    """The words of the spec the rule enforces, verbatim."""

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ValueError(f"rule id {self.id!r} must be 'client|server.words-with-dashes'")
        if self.level not in LEVELS:
            raise ValueError(f"rule {self.id}: level {self.level!r} is not one of {LEVELS}")

    @property
    def role(self) -> str:
        """Who the rule binds: ``"client"`` or ``"server"`` (the party blamed)."""
        return self.id.split(".", 1)[0]

    @property
    def mandatory(self) -> bool:
        return self.level in MANDATORY_LEVELS


_TABLE = (
    # --- Block size constraints (checked in harness/conformance/rules_block_size.py) ----------
    Citation(
        "server.block-size-minimum",
        MUST,
        "Size constraints",
        "If advertised, this value MUST be a power of 2, MUST NOT be larger than 2^16 (65,536)",
    ),
    Citation(
        "server.block-size-preferred",
        MUST,
        "Size constraints",
        "If advertised, this MUST be a power of 2 at least as large as the maximum of the "
        "minimum block size and 2^9 (512)",
    ),
    Citation(
        "server.block-size-maximum",
        MUST,
        "Size constraints",
        "but MUST be at least as large as the preferred block size",
    ),
    Citation(
        "server.export-size-multiple-of-minimum",
        SHOULD,
        "Size constraints",
        "If a server advertises a minimum block size, the advertised export size SHOULD be an "
        "integer multiple of that block size",
    ),
    Citation(
        "server.maximum-payload-at-least-1m",
        SHOULD,
        "Size constraints",
        "and SHOULD be at least 2^20 (1,048,576) if the export is that large",
    ),
    # --- Block status (checked in harness/conformance/rules_block_status.py) ------------------
    Citation(
        "client.block-status-needs-contexts",
        MUST_NOT,
        "Metadata querying",
        "A client MUST NOT use `NBD_CMD_BLOCK_STATUS` unless it selected a nonzero number of "
        "metadata contexts during negotiation, and used the same export name for the "
        "subsequent `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME`).",
    ),
    Citation(
        "client.block-status-payload-needs-flag",
        SHOULD_NOT,
        "Transmission flags",
        "clients SHOULD NOT set the `NBD_CMD_FLAG_PAYLOAD_LEN` flag for `NBD_CMD_BLOCK_STATUS` "
        "unless this transmission flag is set.",
    ),
    Citation(
        "client.block-status-payload-size",
        MUST,
        "Request types",
        "The payload form MUST occupy 8 + n*4 bytes",
    ),
    Citation(
        "server.block-status-payload-bad-ids",
        MUST,
        "Request types",
        "the server MUST gracefully consume the client's payload before failing with `NBD_EINVAL`",
    ),
    Citation(
        "server.block-status-einval-without-context",
        SHOULD,
        "Metadata querying",
        "Servers SHOULD reply with `NBD_EINVAL` to clients sending `NBD_CMD_BLOCK_STATUS` "
        "without selecting at least one metadata context.",
    ),
    Citation(
        "server.block-status-via-chunks",
        MUST,
        "Metadata querying",
        "The reply to a successful `NBD_CMD_BLOCK_STATUS` request MUST be sent via reply chunks",
    ),
    Citation(
        "server.status-chunk-type",
        MUST,
        "Request types",
        "only `NBD_REPLY_TYPE_BLOCK_STATUS` for structured replies, and only "
        "`NBD_REPLY_TYPE_BLOCK_STATUS_EXT` for extended headers",
    ),
    Citation(
        "server.status-one-chunk-per-context",
        MUST,
        "Structured reply types",
        "A successful block status request MUST have exactly one status chunk per negotiated "
        "metadata context ID.",
    ),
    Citation(
        "server.status-selected-contexts-only",
        MUST,
        "Request types",
        "For a successful return, the server MUST use one reply chunk per selected context id",
    ),
    Citation(
        "server.status-chunk-length",
        MUST,
        "Structured reply types",
        "*length* MUST be 4 + (a positive integer multiple of 8)",
    ),
    Citation(
        "server.status-ext-chunk-length",
        MUST,
        "Structured reply types",
        "*length* MUST be 8 + (a positive multiple of 16)",
    ),
    Citation(
        "server.status-at-least-one-descriptor",
        MUST,
        "Request types",
        "However the server MUST return at least one status descriptor",
    ),
    Citation(
        "server.status-ext-count",
        MUST,
        "Structured reply types",
        "The *descriptor count* field MUST correspond to the number of subsequent descriptors",
    ),
    Citation(
        "server.status-descriptor-nonzero",
        MUST,
        "Structured reply types",
        "32 bits, length of the extent to which the status below applies (unsigned, MUST be "
        "nonzero)",
    ),
    Citation(
        "server.req-one-single-descriptor",
        MUST,
        "Structured reply types",
        "If the client used the `NBD_CMD_FLAG_REQ_ONE` flag in the request, then every reply "
        "chunk MUST contain exactly one descriptor",
    ),
    Citation(
        "server.req-one-length",
        MUST_NOT,
        "Request types",
        "each chunk contains exactly one descriptor where the *length* of the descriptor MUST "
        "NOT be greater than the *length* of the request",
    ),
    Citation(
        "server.status-sum-below-length",
        MUST,
        "Structured reply types",
        "then the sum of the *length* fields of the first N-1 extents (if any) MUST be less "
        "than the requested length",
    ),
    Citation(
        "server.status-descriptor-min-block",
        MUST,
        "Request types",
        "The server MUST use descriptor lengths that are an integer multiple of any advertised "
        "minimum block size.",
    ),
    Citation(
        "server.status-upper-bits-zero",
        MUST,
        "Structured reply types",
        "the most-significant 32 bits of *status* MUST be all zeroes",
    ),
    Citation(
        "server.status-extents-cap",
        SHOULD_NOT,
        "Structured reply types",
        "Servers SHOULD NOT send more than 2^20 extents in a single reply chunk",
    ),
    Citation(
        "server.base-allocation-reserved-bits",
        SHOULD,
        "base:allocation metadata context",
        "Servers SHOULD set it to all-zero",
    ),
    # --- Error values (checked in harness/conformance/rules_errors.py) ------------------------
    Citation(
        "server.error-values-defined",
        MUST,
        "Error values",
        "Therefore, the allowed values for the error field have been restricted to set of "
        "possibilities.",
    ),
    Citation(
        "server.read-only-eperm",
        SHOULD,
        "Error values",
        "Finally, it SHOULD return `NBD_EPERM` if it receives a write or trim request on a "
        "read-only export.",
    ),
    Citation(
        "server.enospc-write-beyond-end",
        SHOULD,
        "Error values",
        "The server SHOULD return `NBD_ENOSPC` if it receives a write request including one or "
        "more sectors beyond the size of the device.",
    ),
    Citation(
        "server.einval-beyond-end-or-unaligned",
        SHOULD,
        "Error values",
        "It SHOULD return `NBD_EINVAL` if it receives a read or trim request including one or "
        "more sectors beyond the size of the device, or if a read or write request is not "
        "aligned to advertised minimum block sizes.",
    ),
    Citation(
        "server.einval-unknown-command",
        SHOULD,
        "Error values",
        "The server SHOULD return `NBD_EINVAL` if it receives an unknown command.",
    ),
    Citation(
        "server.einval-unknown-flag",
        SHOULD,
        "Error values",
        "The server SHOULD return `NBD_EINVAL` if it receives an unknown command flag.",
    ),
    Citation(
        "server.einval-inapplicable-flag",
        SHOULD,
        "Error values",
        "It also SHOULD return `NBD_EINVAL` if it receives a request with a flag not "
        "explicitly documented as applicable to the given request.",
    ),
    Citation(
        "server.eoverflow-only-documented",
        SHOULD_NOT,
        "Error values",
        "The server SHOULD NOT return `NBD_EOVERFLOW` except as documented in response to "
        "`NBD_CMD_READ` when `NBD_CMD_FLAG_DF` is supported, or when a command without payload "
        "requests a length larger than an advertised maximum payload length.",
    ),
    Citation(
        "server.enotsup-only-fast-zero",
        SHOULD_NOT,
        "Error values",
        "The server SHOULD NOT return `NBD_ENOTSUP` except as documented in response to "
        "`NBD_CMD_WRITE_ZEROES` when `NBD_CMD_FLAG_FAST_ZERO` is supported.",
    ),
    Citation(
        "server.no-enotsup-without-fast-zero",
        MUST_NOT,
        "Request types",
        "If the server advertised `NBD_FLAG_SEND_FAST_ZERO` but `NBD_CMD_FLAG_FAST_ZERO` is "
        "not set, then the server MUST NOT fail with `NBD_ENOTSUP`",
    ),
    Citation(
        "server.no-enomem",
        SHOULD_NOT,
        "Error values",
        "The server SHOULD NOT return `NBD_ENOMEM` if at all possible.",
    ),
    # --- Framing (checked in harness/conformance/rules_framing.py) -----------------------------
    Citation(
        "client.write-data-follows",
        MUST,
        "Request types",
        "The client MUST follow the request header with *length* number of bytes to be written "
        "to the device.",
    ),
    # --- Handshake (checked in harness/conformance/rules_handshake.py) ------------------------
    Citation(
        "server.greeting-magic",
        MUST,
        "Newstyle negotiation",
        "S: 64 bits, `0x49484156454F5054` (ASCII '`IHAVEOPT`') (note different magic number)",
    ),
    Citation(
        "server.handshake-flags-known",
        MUST_NOT,
        "Handshake flags",
        "The server MUST NOT set any other flags",
    ),
    Citation(
        "server.oldstyle-no-handshake-flags",
        MUST_NOT,
        "Handshake flags",
        "The server MUST NOT set any of these flags during oldstyle negotiation.",
    ),
    Citation(
        "client.client-flags-known",
        MUST_NOT,
        "Client flags",
        "Clients MUST NOT set any other flags",
    ),
    Citation(
        "client.no-zeroes-only-if-offered",
        MUST_NOT,
        "Client flags",
        "MUST NOT be set if the server did not set `NBD_FLAG_NO_ZEROES`",
    ),
    Citation(
        "server.drop-on-bad-client-flags",
        MUST,
        "Client flags",
        "the server MUST drop the TCP connection if the client sets an unknown flag, or a flag "
        "that does not match something advertised by the server",
    ),
    Citation(
        "client.fixed-newstyle-flag",
        SHOULD,
        "Fixed newstyle negotiation",
        "The client SHOULD reply with `NBD_FLAG_C_FIXED_NEWSTYLE` set in its flags field too",
    ),
    Citation(
        "client.export-name-only-in-nonfixed",
        MUST,
        "Option types",
        "This is the only valid option in nonfixed newstyle negotiation.",
    ),
    Citation(
        "server.fixed-newstyle-for-options",
        MUST,
        "Option types",
        "A server which wishes to use any other option MUST support fixed newstyle.",
    ),
    Citation(
        "server.export-name-reply-zeroes",
        MUST,
        "Newstyle negotiation",
        "S: 124 bytes, zeroes (reserved) (unless `NBD_FLAG_C_NO_ZEROES` was negotiated by the "
        "client)",
    ),
    Citation(
        "server.no-zeroes-honoured",
        MUST_NOT,
        "Client flags",
        "If set, the server MUST NOT send the 124 bytes of zeroes when the client ends "
        "negotiation with `NBD_OPT_EXPORT_NAME`.",
    ),
    Citation(
        "server.export-name-no-option-reply",
        MUST,
        "Newstyle negotiation",
        "If the server is unwilling to allow the export, it MUST terminate the session.",
    ),
    Citation(
        "client.abort-then-close",
        MUST,
        "Termination of the session during option haggling",
        "This MUST be followed by the client shutting down TLS (if it is running), and the "
        "client dropping the connection.",
    ),
    Citation(
        "client.soft-disconnect-on-err-shutdown",
        MUST,
        "Termination of the session during option haggling",
        "If the client receives `NBD_REP_ERR_SHUTDOWN` it MUST initiate a soft disconnect.",
    ),
    Citation(
        "server.abort-ack",
        MUST,
        "Option types",
        "The server MUST reply with `NBD_REP_ACK`.",
    ),
    # --- Options (checked in harness/conformance/rules_options.py) ----------------------------
    Citation(
        "client.option-magic",
        MUST,
        "Newstyle negotiation",
        "C: 64 bits, `0x49484156454F5054` (ASCII '`IHAVEOPT`') (note same newstyle handshake's "
        "magic number)",
    ),
    Citation(
        "server.option-reply-magic",
        MUST,
        "Fixed newstyle negotiation",
        "S: 64 bits, `0x3e889045565a9` (magic number for replies)",
    ),
    Citation(
        "client.no-option-before-final-reply",
        MUST_NOT,
        "Fixed newstyle negotiation",
        "The client MUST NOT send any option until it has received a final reply to any option "
        "it has sent",
    ),
    Citation(
        "server.option-reply-answers-option",
        MUST,
        "Fixed newstyle negotiation",
        "the option as sent by the client to which this is a reply",
    ),
    Citation(
        "server.unsupported-option-err-unsup",
        MUST,
        "Baseline",
        "Servers that receive messages which they do not implement MUST reply to them with "
        "`NBD_REP_ERR_UNSUP`",
    ),
    Citation(
        "client.no-data-with-option",
        MUST_NOT,
        "Option types",
        "The client MUST NOT send any additional data with the option",
    ),
    Citation(
        "client.abort-no-data",
        SHOULD_NOT,
        "Option types",
        "The client SHOULD NOT send any additional data with the option",
    ),
    Citation(
        "server.reject-option-data",
        SHOULD,
        "Option types",
        "the server SHOULD reject a request that includes data with `NBD_REP_ERR_INVALID`",
    ),
    Citation(
        "server.info-export-before-ack",
        MUST,
        "Option reply types",
        "The server MUST send an `NBD_INFO_EXPORT` information type at some point before "
        "sending an `NBD_REP_ACK`",
    ),
    Citation(
        "server.info-export-length",
        MUST,
        "Option reply types",
        "*length* MUST be 12",
    ),
    Citation(
        "server.info-block-size-length",
        MUST,
        "Option reply types",
        "The *length* MUST be 14",
    ),
    Citation(
        "server.info-length-at-least-2",
        MUST,
        "Option reply types",
        "The *length* MUST be at least 2",
    ),
    Citation(
        "server.info-once",
        SHOULD,
        "Option reply types",
        "A particular information type SHOULD only appear once for a given export unless "
        "documented otherwise.",
    ),
    Citation(
        "server.no-info-for-unknown-export",
        SHOULD_NOT,
        "Option types",
        "In this case, the server SHOULD NOT send `NBD_REP_INFO` replies.",
    ),
    Citation(
        "server.go-consistent-with-info",
        MUST,
        "Option types",
        "then the server MUST reply with the same set of information, such as transmission "
        "flags in the `NBD_INFO_EXPORT` reply",
    ),
    Citation(
        "server.block-size-reqd-not-if-requested",
        MUST_NOT,
        "Option types",
        "The server MUST NOT send this error if size constraints were requested with "
        "`NBD_INFO_BLOCK_SIZE` with the `NBD_OPT_INFO` or `NBD_OPT_GO` request.",
    ),
    Citation(
        "server.go-not-unsup-after-extended",
        MUST_NOT,
        "Option types",
        "the server MUST NOT fail `NBD_OPT_GO` with `NBD_REP_ERR_UNSUP`",
    ),
    Citation(
        "client.info-request-once",
        MUST_NOT,
        "Option types",
        "The client MUST NOT include any information request in the list more than once.",
    ),
    Citation(
        "client.info-name-length",
        MUST,
        "Option types",
        "MUST be no larger than the option data length - 6",
    ),
    Citation(
        "server.rep-server-name-length",
        MUST,
        "Option reply types",
        "MUST be no larger than the reply packet header length - 4",
    ),
    Citation(
        "client.no-export-name-after-extended",
        MUST_NOT,
        "Option types",
        "Once extended headers are successfully requested, a client MUST NOT use "
        "`NBD_OPT_EXPORT_NAME`.",
    ),
    Citation(
        "client.set-meta-context-needs-structured",
        MUST_NOT,
        "Option types",
        "This option MUST NOT be requested unless structured replies or extended headers have "
        "been negotiated first.",
    ),
    Citation(
        "client.list-meta-context-needs-structured",
        SHOULD_NOT,
        "Option types",
        "This option SHOULD NOT be requested unless structured replies or extended headers "
        "have been negotiated first.",
    ),
    Citation(
        "server.set-meta-context-unnegotiated",
        SHOULD,
        "Option types",
        "If a client attempts to do so, a server SHOULD send `NBD_REP_ERR_INVALID` or "
        "`NBD_REP_ERR_EXT_HEADER_REQD`.",
    ),
    Citation(
        "server.meta-context-replies",
        MUST,
        "Option types",
        "The server MUST reply with a list of zero or more `NBD_REP_META_CONTEXT` replies, "
        "followed by either a final `NBD_REP_ACK` on success or by an error",
    ),
    Citation(
        "server.meta-context-ids-unique",
        MUST,
        "Option types",
        "each with a unique metadata context ID",
    ),
    Citation(
        "server.list-meta-context-id-zero",
        SHOULD,
        "Option types",
        "The metadata context ID in these replies is reserved and SHOULD be set to zero",
    ),
    Citation(
        "server.set-meta-context-no-queries",
        MUST,
        "Option types",
        "If zero queries are sent, the server MUST select no metadata contexts.",
    ),
    Citation(
        "server.meta-context-name-syntax",
        MUST,
        "Metadata querying",
        "The name MUST consist of a namespace, followed by a colon, followed by a leaf-name.",
    ),
    Citation(
        "client.meta-context-query-syntax",
        MUST,
        "Option types",
        "The syntax of this query is implementation-defined, except that it MUST start with a "
        "namespace and a colon.",
    ),
    Citation(
        "server.ext-header-reqd-not-for-base",
        MUST_NOT,
        "Option types",
        "The server MUST NOT use this failure for a client request that is limited to contexts "
        'in the "base:" namespace.',
    ),
    Citation(
        "server.list-ext-header-reqd-not-for-base",
        MUST_NOT,
        "Option types",
        'a server MUST NOT use this failure mode when the response is limited to the "base:" '
        "namespace",
    ),
    Citation(
        "server.list-replies",
        MUST,
        "Option types",
        "Return zero or more `NBD_REP_SERVER` replies, one for each export, followed by "
        "`NBD_REP_ACK` or an error",
    ),
    Citation(
        "server.info-go-replies",
        MUST,
        "Option types",
        "The server replies with a number of `NBD_REP_INFO` replies (as few as zero if an "
        "error is reported, at least one on success), then concludes the list of information "
        "with a final error reply or with a declaration of success",
    ),
    Citation(
        "server.no-data-option-replies",
        MUST,
        "Option types",
        "The server replies with the following, or with an error permitted elsewhere in this "
        "document",
    ),
    # --- Strings (checked in harness/conformance/rules_strings.py) ----------------------------
    Citation(
        "client.string-max-length",
        MUST,
        "Conventions",
        "MUST be no longer than 4096 bytes",
    ),
    Citation(
        "server.string-max-length",
        MUST,
        "Conventions",
        "MUST be no longer than 4096 bytes",
    ),
    Citation(
        "client.string-recommended-length",
        SHOULD,
        "Conventions",
        "SHOULD be no longer than 256 bytes",
    ),
    Citation(
        "server.string-recommended-length",
        SHOULD,
        "Conventions",
        "SHOULD be no longer than 256 bytes",
    ),
    Citation(
        "client.string-no-nul",
        MUST_NOT,
        "Conventions",
        "MUST NOT contain `NUL` characters",
    ),
    Citation(
        "server.string-no-nul",
        MUST_NOT,
        "Conventions",
        "MUST NOT contain `NUL` characters",
    ),
    Citation(
        "client.string-utf8",
        MUST,
        "Conventions",
        "that string is a sequence of UTF-8 code points",
    ),
    Citation(
        "server.string-utf8",
        MUST,
        "Conventions",
        "that string is a sequence of UTF-8 code points",
    ),
    Citation(
        "server.meta-context-name-utf8",
        MUST,
        "Option reply types",
        "This is not required to be a human-readable string, but it MUST be valid UTF-8 data.",
    ),
    # --- Structured and extended replies (checked in harness/conformance/rules_structured.py) -
    Citation(
        "server.structured-needs-negotiation",
        MUST_NOT,
        "Structured reply chunk message",
        "The server MUST NOT send this reply type unless the client has successfully "
        "negotiated structured replies via `NBD_OPT_STRUCTURED_REPLY`.",
    ),
    Citation(
        "server.extended-needs-negotiation",
        MUST,
        "Transmission",
        "The determination of which message headers to use is determined during handshaking "
        "phase, based on whether `NBD_OPT_STRUCTURED_REPLY` or `NBD_OPT_EXTENDED_HEADERS` was "
        "requested by the client and given a successful response by the server.",
    ),
    Citation(
        "server.extended-reply-when-negotiated",
        MUST,
        "Extended reply chunk message",
        "If extended headers are negotiated, all server replies MUST use an extended reply",
    ),
    Citation(
        "server.simple-reply-with-extended",
        MUST_NOT,
        "Simple reply message",
        "If extended headers have been negotiated, a simple reply MUST NOT be used.",
    ),
    Citation(
        "server.no-simple-reply-to-read",
        MUST_NOT,
        "Structured reply chunk message",
        "and MUST NOT use a simple reply for `NBD_CMD_READ`",
    ),
    Citation(
        "server.structured-errors-preferred",
        SHOULD,
        "Structured reply chunk message",
        "The server SHOULD prefer sending errors via a structured reply",
    ),
    Citation(
        "server.done-last",
        MUST,
        "Structured reply chunk message",
        "except that the chunk with the flag `NBD_REPLY_FLAG_DONE` MUST be sent last",
    ),
    Citation(
        "server.reply-flags-known",
        MUST_NOT,
        "Structured and extended header reply flags",
        "The server MUST NOT set any other flags without first negotiating the extension with "
        "the client",
    ),
    Citation(
        "server.none-chunk-done",
        MUST,
        "Structured reply types",
        "This chunk type MUST always be used with the `NBD_REPLY_FLAG_DONE` bit set",
    ),
    Citation(
        "server.none-chunk-length",
        MUST,
        "Structured reply types",
        "*length* MUST be 0 (and the payload field omitted).",
    ),
    Citation(
        "server.offset-data-length",
        MUST,
        "Structured reply types",
        "*length* MUST be at least 9.",
    ),
    Citation(
        "server.offset-hole-length",
        MUST,
        "Structured reply types",
        "*length* MUST be exactly 12.",
    ),
    Citation(
        "server.hole-size-nonzero",
        MUST,
        "Structured reply types",
        "32 bits: hole size (unsigned, MUST be nonzero)",
    ),
    Citation(
        "server.content-only-for-read",
        MUST,
        "Structured reply types",
        "Valid as a reply to `NBD_CMD_READ`.",
    ),
    Citation(
        "server.content-within-request",
        MUST_NOT,
        "Request types",
        "and MUST NOT send chunks that describe data outside the offset and length of the request",
    ),
    Citation(
        "server.content-no-overlap",
        MUST_NOT,
        "Request types",
        "The server MUST NOT send content chunks that overlap with any earlier content or "
        "error chunk",
    ),
    Citation(
        "server.read-full-coverage",
        MUST,
        "Request types",
        "When no error is detected, the server MUST send enough data chunks to cover the "
        "entire region described by the offset and length of the client's request.",
    ),
    Citation(
        "server.df-single-content-chunk",
        MUST,
        "Request types",
        "If this flag is set, the server MUST send at most one content chunk",
    ),
    Citation(
        "server.chunk-payload-max",
        MUST_NOT,
        "Structured reply types",
        "A server MUST NOT send a chunk where any variable-length portion of the chunk is "
        "larger than any advertised maximum payload size",
    ),
    Citation(
        "server.extended-reply-offset",
        MUST,
        "Extended reply chunk message",
        "S: 64 bits, offset (MUST match the request)",
    ),
    Citation(
        "server.error-chunk-nonzero",
        MUST,
        "Structured reply types",
        "32 bits: error (MUST be nonzero)",
    ),
    Citation(
        "server.error-length",
        MUST,
        "Structured reply types",
        "*length* MUST be at least 6.",
    ),
    Citation(
        "server.error-offset-length",
        MUST,
        "Structured reply types",
        "*length* MUST be at least 14.",
    ),
    Citation(
        "server.error-message-fits",
        MUST,
        "Structured reply types",
        "16 bits: message length (no more than header *length* - 6)",
    ),
    Citation(
        "server.error-message-max-length",
        MUST_NOT,
        "Structured reply types",
        "Note that *message length* MUST NOT exceed the 4096 bytes string length limit",
    ),
    Citation(
        "server.error-offset-within-request",
        MUST,
        "Structured reply types",
        "This reply represents that an error occurred at a given offset, which MUST lie within "
        "the original offset and length of the request",
    ),
    Citation(
        "server.error-offset-valid-for",
        MUST,
        "Structured reply types",
        "Valid as a reply to `NBD_CMD_READ`, `NBD_CMD_WRITE`, `NBD_CMD_TRIM`, `NBD_CMD_CACHE`, "
        "`NBD_CMD_WRITE_ZEROES`, and `NBD_CMD_BLOCK_STATUS`.",
    ),
    Citation(
        "server.error-once",
        SHOULD_NOT,
        "Structured reply types",
        "This type SHOULD NOT be used more than once in a structured reply.",
    ),
    Citation(
        "server.error-offset-not-repeated",
        SHOULD_NOT,
        "Structured reply types",
        "although the same offset SHOULD NOT be repeated",
    ),
    Citation(
        "client.disconnect-on-unknown-chunk",
        MUST,
        "Structured reply types",
        "If the client receives an unknown or unexpected type, other than an *error chunk*, it "
        "MUST initiate a hard disconnect.",
    ),
    # --- TLS (checked in harness/conformance/rules_tls.py) ------------------------------------
    Citation(
        "client.starttls-needs-fixed-newstyle",
        MUST_NOT,
        "Client-side requirements",
        "The client MUST NOT issue `NBD_OPT_STARTTLS` unless the server set flag "
        "`NBD_FLAG_FIXED_NEWSTYLE` and the client replied with `NBD_FLAG_C_FIXED_NEWSTYLE` in "
        "the fixed newstyle negotiation.",
    ),
    Citation(
        "server.notls-without-fixed-newstyle",
        MUST,
        "Server-side requirements",
        "The server MUST operate in NOTLS mode unless the server set flag "
        "`NBD_FLAG_FIXED_NEWSTYLE` and the client replied with `NBD_FLAG_C_FIXED_NEWSTYLE` in "
        "the fixed newstyle negotiation.",
    ),
    Citation(
        "server.notls-no-tls-reqd",
        MUST_NOT,
        "NOTLS mode",
        "The server MUST NOT respond to any option request with `NBD_REP_ERR_TLS_REQD`.",
    ),
    Citation(
        "server.starttls-ack-when-tls-required",
        MUST,
        "FORCEDTLS mode",
        "If the server receives `NBD_OPT_STARTTLS` prior to negotiating TLS, it MUST reply "
        "with `NBD_REP_ACK`.",
    ),
    Citation(
        "server.forcedtls-errors-options",
        MUST,
        "FORCEDTLS mode",
        "it MUST reply with `NBD_REP_ERR_TLS_REQD` if TLS has not been initiated",
    ),
    Citation(
        "server.starttls-reply",
        MUST,
        "Option types",
        "The server MUST either reply with `NBD_REP_ACK` after which point the connection is "
        "upgraded to TLS, or an error reply explicitly permitted by this document",
    ),
    Citation(
        "client.defer-stateful-options",
        SHOULD,
        "Option types",
        "A client SHOULD defer all stateful option requests until after it determines whether "
        "encryption is available.",
    ),
    Citation(
        "client.tls-after-starttls-ack",
        MUST,
        "Client-side requirements",
        "If the client receives `NBD_REP_ACK` in response, it MUST immediately upgrade the "
        "session to TLS.",
    ),
    Citation(
        "server.tls-after-starttls-ack",
        MUST,
        "FORCEDTLS mode",
        "After an `NBD_REP_ACK` reply has been sent, the server MUST be prepared for a TLS "
        "handshake, and all further data MUST be sent and received over TLS.",
    ),
    # --- Transmission (checked in harness/conformance/rules_transmission.py) ------------------
    Citation(
        "client.request-magic",
        MUST,
        "Request message",
        "C: 32 bits, 0x25609513, magic (`NBD_REQUEST_MAGIC`)",
    ),
    Citation(
        "client.no-options-after-go",
        MUST_NOT,
        "Option types",
        "The client MUST NOT send further option requests unless the final reply from the "
        "server indicates an error.",
    ),
    Citation(
        "server.reply-magic",
        MUST,
        "Transmission",
        "There are two general message types in the transmission phase: the request (simple or "
        "extended), and the reply (simple, structured, or extended).",
    ),
    Citation(
        "server.no-padding-after-go",
        MUST_NOT,
        "Option types",
        "The server MUST NOT send any zero padding bytes after the `NBD_REP_ACK` data, whether "
        "or not the client negotiated the `NBD_FLAG_C_NO_ZEROES` flag.",
    ),
    Citation(
        "server.has-flags",
        MUST,
        "Transmission flags",
        "bit 0, `NBD_FLAG_HAS_FLAGS`: MUST always be 1.",
    ),
    Citation(
        "server.df-needs-structured",
        MUST,
        "Transmission flags",
        "and MUST leave this flag clear if neither structured replies nor extended headers "
        "have been negotiated",
    ),
    Citation(
        "server.fast-zero-needs-write-zeroes",
        MUST,
        "Transmission flags",
        "and MUST set this transmission flag to 0 if `NBD_FLAG_SEND_WRITE_ZEROES` is not set",
    ),
    Citation(
        "server.block-status-payload-needs-extended",
        MUST_NOT,
        "Transmission flags",
        "Servers MUST NOT advertise this bit unless the client successfully negotiates "
        "extended headers via `NBD_OPT_EXTENDED_HEADERS`",
    ),
    Citation(
        "server.block-status-payload-needs-contexts",
        SHOULD_NOT,
        "Transmission flags",
        "and SHOULD NOT advertise this bit in response to `NBD_OPT_GO` if the client does not "
        "negotiate metacontexts with `NBD_OPT_SET_META_CONTEXT`",
    ),
    Citation(
        "client.flush-needs-send-flush",
        MUST_NOT,
        "Request types",
        "A client MUST NOT send a flush request unless `NBD_FLAG_SEND_FLUSH` was set in the "
        "transmission flags field.",
    ),
    Citation(
        "client.trim-needs-send-trim",
        MUST_NOT,
        "Request types",
        "A client MUST NOT send a trim request unless `NBD_FLAG_SEND_TRIM` was set in the "
        "transmission flags field.",
    ),
    Citation(
        "client.write-zeroes-needs-send-write-zeroes",
        MUST_NOT,
        "Request types",
        "A client MUST NOT send a write zeroes request unless `NBD_FLAG_SEND_WRITE_ZEROES` was "
        "set in the transmission flags field.",
    ),
    Citation(
        "client.fua-needs-send-fua",
        MUST_NOT,
        "Transmission flags",
        "The client MUST NOT use a feature documented as 'exposed' by a flag unless that flag "
        "was set.",
    ),
    Citation(
        "client.df-needs-send-df",
        MUST_NOT,
        "Transmission flags",
        "Clients MUST NOT set the `NBD_CMD_FLAG_DF` request flag unless this transmission flag "
        "is set.",
    ),
    Citation(
        "client.fast-zero-needs-send-fast-zero",
        MUST_NOT,
        "Transmission flags",
        "Clients MUST NOT set the `NBD_CMD_FLAG_FAST_ZERO` request flag unless this "
        "transmission flag is set.",
    ),
    Citation(
        "client.command-flag-documented",
        MUST_NOT,
        "Command flags",
        "Clients MUST NOT set a command flag bit that is not documented for the particular "
        "command",
    ),
    Citation(
        "client.no-unknown-commands",
        MUST,
        "Baseline",
        "Clients that wish to use more messages MUST negotiate them during the handshake "
        "phase, first.",
    ),
    Citation(
        "client.compact-no-payload-len",
        MUST_NOT,
        "Request message",
        "In the compact style, the client MUST NOT use the `NBD_CMD_FLAG_PAYLOAD_LEN` flag",
    ),
    Citation(
        "client.extended-write-payload-len",
        MUST,
        "Request message",
        "The command `NBD_CMD_WRITE` MUST use the flag `NBD_CMD_FLAG_PAYLOAD_LEN` in this mode",
    ),
    Citation(
        "client.extended-request-when-negotiated",
        MUST,
        "Option types",
        "Extended headers have been negotiated; the client MUST use the 32-byte extended "
        "request header",
    ),
    Citation(
        "client.compact-request-unless-negotiated",
        MUST,
        "Request message",
        "The compact request message is sent by the client when extended transactions are not "
        "in use",
    ),
    Citation(
        "client.disc-fields-zero",
        MUST,
        "Request types",
        "The values of the length and offset fields in a disconnect request MUST be zero.",
    ),
    Citation(
        "client.flush-fields-zero",
        MUST,
        "Request types",
        "For a flush request, *length* and *offset* are reserved, and MUST be set to all-zero.",
    ),
    Citation(
        "client.nothing-after-disc",
        MUST_NOT,
        "Request types",
        "A client MUST NOT send anything to the server after sending an `NBD_CMD_DISC` command.",
    ),
    Citation(
        "client.disc-waits-for-replies",
        SHOULD,
        "Terminating the transmission phase",
        "The client MAY issue a soft disconnect at any time, but SHOULD wait until there are "
        "no inflight requests first.",
    ),
    Citation(
        "server.no-reply-to-disc",
        MUST,
        "Request types",
        "There is no reply to an `NBD_CMD_DISC`.",
    ),
    Citation(
        "server.reply-cookie-matches",
        MUST,
        "Transmission",
        "the server MUST use the same value for cookie as was sent by the client in the "
        "corresponding request",
    ),
    Citation(
        "client.cookie-distinct",
        SHOULD,
        "Transmission",
        "Clients SHOULD use a cookie that is distinct from all other currently pending "
        "transactions",
    ),
    Citation(
        "client.request-within-export",
        MUST_NOT,
        "Size constraints",
        "For those requests, the client MUST NOT use a *length* which, when added to *offset*, "
        "would exceed the export size.",
    ),
    Citation(
        "client.request-alignment",
        MUST,
        "Size constraints",
        "the client MUST ensure that *offset* and *length* are integer multiples of any "
        "advertised minimum block size",
    ),
    Citation(
        "client.request-max-payload",
        MUST_NOT,
        "Size constraints",
        "the client MUST NOT request a length larger than the maximum payload size",
    ),
    Citation(
        "server.read-only-write-errors",
        MUST,
        "Transmission flags",
        "If this flag is set, the server MUST error subsequent write operations to the export.",
    ),
    Citation(
        "client.soft-disconnect-on-eshutdown",
        MUST,
        "Terminating the transmission phase",
        "If the client receives an `NBD_ESHUTDOWN` error it MUST initiate a soft disconnect.",
    ),
    # --- The export's content (checked in harness/conformance/rules_semantics.py) -------------
    Citation(
        "server.write-writes-data",
        MUST,
        "Request types",
        "The server MUST write the data to disk, and then send the reply message.",
    ),
    Citation(
        "server.write-zeroes-zeroes",
        MUST,
        "Request types",
        "The server MUST zero out the data on disk, and then send the reply message.",
    ),
    Citation(
        "server.cache-keeps-data",
        MUST_NOT,
        "Request types",
        "other than any difference in performance, there MUST NOT be any difference in "
        "semantics compared to if the client had not used this command.",
    ),
    Citation(
        "server.status-zero-reads-zero",
        MUST,
        "Request types",
        "For a successful return, the server MUST use a structured reply, containing exactly "
        "one chunk of type `NBD_REPLY_TYPE_BLOCK_STATUS` per selected context id, where the "
        "status field of each descriptor is determined by the flags field as defined by the "
        "metadata context.",
    ),
    Citation(
        "server.fast-zero-refusal-keeps-data",
        SHOULD_NOT,
        "Request types",
        "SHOULD NOT alter the contents of the export when returning an `NBD_ENOTSUP` failure.",
    ),
    # --- Baseline (checked in harness/conformance/rules_baseline.py) --------------------------
    Citation(
        "server.baseline-fixed-newstyle",
        MUST,
        "Baseline",
        "The following MUST be implemented by all implementations, and should be considered a "
        "baseline:",
    ),
    Citation(
        "server.baseline-info-go",
        MUST,
        "Baseline",
        "The following MUST be implemented by all implementations, and should be considered a "
        "baseline:",
    ),
    Citation(
        "server.baseline-list",
        MUST,
        "Baseline",
        "The following MUST be implemented by all implementations, and should be considered a "
        "baseline:",
    ),
    Citation(
        "client.go-in-preference",
        SHOULD,
        "Option types",
        "A client thus SHOULD use `NBD_OPT_GO` in preference to `NBD_OPT_EXPORT_NAME`",
    ),
    # --- The session as a whole: answers, closes (checked in rules_session.py) ----------------
    Citation(
        "server.read-answered",
        MUST,
        "Request types",
        "The server MUST reply with either a simple reply or a structured reply, according to "
        "whether the structured replies have been negotiated using `NBD_OPT_STRUCTURED_REPLY`.",
    ),
    Citation(
        "server.simple-reply-to-all",
        MUST,
        "Simple reply message",
        "The simple reply message MUST be sent by the server in response to all requests if "
        "structured replies have not been negotiated using `NBD_OPT_STRUCTURED_REPLY`.",
    ),
    Citation(
        "server.simple-read-data-length",
        MUST,
        "Request types",
        "If structured replies were not negotiated, then a read request MUST always be answered "
        "by a simple reply, as documented above (using magic 0x67446698 "
        "`NBD_SIMPLE_REPLY_MAGIC`, and containing length bytes of data according to the "
        "client's request)",
    ),
    Citation(
        "server.no-hard-disconnect-in-options",
        MUST_NOT,
        "Termination of the session during option haggling",
        "A party MUST NOT initiate a hard disconnect save where set out in this section.",
    ),
    Citation(
        "server.no-hard-disconnect-in-transmission",
        MUST_NOT,
        "Terminating the transmission phase",
        "The client and the server MUST NOT initiate any form of disconnect other than in one "
        "of the above circumstances.",
    ),
    Citation(
        "client.abort-before-close",
        MUST,
        "Termination of the session during option haggling",
        "In the client's case, if it wishes to do so it MUST use soft disconnect.",
    ),
    Citation(
        "client.disc-before-close",
        MUST_NOT,
        "Terminating the transmission phase",
        "The client and the server MUST NOT initiate any form of disconnect other than in one "
        "of the above circumstances.",
    ),
)


def _index(citations: tuple[Citation, ...]) -> dict[str, Citation]:
    by_id: dict[str, Citation] = {}
    for citation in citations:
        if citation.id in by_id:
            raise ValueError(f"rule {citation.id} is cited twice")
        by_id[citation.id] = citation
    return by_id


CITATIONS: dict[str, Citation] = _index(_TABLE)
"""Every rule by id, grouped as the conformance modules that check them."""


def cite(rule_id: str) -> Citation:
    """The citation of ``rule_id``; a ValueError names an id nobody cited."""
    try:
        return CITATIONS[rule_id]
    except KeyError:
        raise ValueError(f"rule {rule_id!r} has no citation in harness/protocol/rules.py") from None


__all__ = [
    "CITATIONS",
    "LEVELS",
    "MANDATORY_LEVELS",
    "MUST",
    "MUST_NOT",
    "ROLES",
    "SHOULD",
    "SHOULD_NOT",
    "Citation",
    "cite",
]
