"""Rules of the export's content: what the server says the export holds must agree with itself.

Sections "Request types" (``NBD_CMD_WRITE``, ``NBD_CMD_WRITE_ZEROES``,
``NBD_CMD_CACHE``, ``NBD_CMD_BLOCK_STATUS``) and "``base:allocation`` metadata
context" (``NBD_STATE_ZERO``: "if set, the block contents read as all zeroes").
:mod:`harness.conformance._content` keeps what one session reveals about the export's
bytes and finds the contradictions; each rule here takes those that breach its sentence.
A finding points at the later message (the read's data, the status chunk) and carries
the earlier one it contradicts as ``related``.

Not here, for want of a normative sentence: data that changes between two reads of
bytes never written (the spec promises nothing about unwritten bytes, and calls an
area reported as a hole not known to be zero unstable), data read after ``NBD_CMD_TRIM``
(the client "MUST NOT make any assumptions about the contents"), and reads or status
queries that change data (no sentence says they must not).  A successful write on a
read-only export is ``server.read-only-write-errors`` (rules_transmission).
A fast ``NBD_CMD_WRITE_ZEROES`` refused with ``NBD_ENOTSUP`` is, like ``NBD_CMD_CACHE``,
a command that must not change data (at SHOULD NOT level).
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._content import READ, STATUS_ZERO, WRITE, ZEROES, Contradiction, Fact
from harness.conformance._rule import Hit, rule
from harness.conformance._view import SessionView
from harness.protocol import constants as c

ALL_KINDS = (WRITE, ZEROES, STATUS_ZERO, READ)


def _said_before(fact: Fact) -> str:
    """What the earlier message said, and where."""
    frame = fact.origin.frame
    if fact.kind == WRITE:
        said = f"the NBD_CMD_WRITE acknowledged at frame {frame}"
    elif fact.kind == ZEROES:
        said = f"the NBD_CMD_WRITE_ZEROES acknowledged at frame {frame}"
    elif fact.kind == STATUS_ZERO:
        said = f"the block status at frame {frame} (NBD_STATE_ZERO)"
    else:
        said = f"the read at frame {frame}"
    if fact.confirmed_by is not None:
        said += f", read back intact at frame {fact.confirmed_by.frame}"
    return said


def _describe(contradiction: Contradiction) -> str:
    fact = contradiction.fact
    where = f"offset {contradiction.offset}"
    if contradiction.at.fields.get("context_name") is not None:
        now = f"block status reports NBD_STATE_ZERO at {where}"
    else:
        now = f"the read returns 0x{contradiction.found:02x} at {where}"
    text = f"{now}, where {_said_before(fact)} left 0x{contradiction.expected:02x}"
    between = contradiction.between
    if between is not None:
        refused = " refused with NBD_ENOTSUP" if between.command == c.Cmd.WRITE_ZEROES else ""
        text += f"; {between.name}{refused} (request at frame {between.request.frame}) came between"
    return text


def _hits(
    view: SessionView, kinds: tuple[str, ...], *, between: int | None = None
) -> Iterator[Hit]:
    """Contradictions with an earlier fact of one of ``kinds``; with ``between`` (a
    command), those where such a command that must not change data came between (it takes
    the blame: it is the only command there), else those where none did."""
    for contradiction in view.content.contradictions:
        command = None if contradiction.between is None else contradiction.between.command
        if command != between or contradiction.fact.kind not in kinds:
            continue
        yield Hit(contradiction.at, _describe(contradiction), contradiction.earlier)


def _status_chunk(message_fields: dict) -> bool:
    return message_fields.get("context_name") is not None


@rule(id="server.write-writes-data", midstream=True)
def write_writes_data(view: SessionView) -> Iterator[Hit]:
    """A later read returns what a successful NBD_CMD_WRITE wrote (nothing between
    could change it)."""
    for hit in _hits(view, (WRITE,)):
        if not _status_chunk(hit.at.fields):
            yield hit


@rule(id="server.write-zeroes-zeroes", midstream=True)
def write_zeroes_zeroes(view: SessionView) -> Iterator[Hit]:
    """A later read returns zeroes where a successful NBD_CMD_WRITE_ZEROES zeroed."""
    yield from _hits(view, (ZEROES,))


@rule(id="server.cache-keeps-data", midstream=True)
def cache_keeps_data(view: SessionView) -> Iterator[Hit]:
    """A read after NBD_CMD_CACHE returns what was written or read before the cache."""
    yield from _hits(view, ALL_KINDS, between=c.Cmd.CACHE)


@rule(id="server.status-zero-reads-zero", midstream=True)
def status_zero_reads_zero(view: SessionView) -> Iterator[Hit]:
    """base:allocation NBD_STATE_ZERO agrees with the data: not over bytes a write left
    nonzero, and a later read of the range returns zeroes."""
    yield from _hits(view, (STATUS_ZERO,))
    for hit in _hits(view, (WRITE,)):
        if _status_chunk(hit.at.fields):
            yield hit


@rule(id="server.fast-zero-refusal-keeps-data", midstream=True)
def fast_zero_refusal_keeps_data(view: SessionView) -> Iterator[Hit]:
    """A read after a fast NBD_CMD_WRITE_ZEROES refused with NBD_ENOTSUP returns what was
    there before."""
    yield from _hits(view, ALL_KINDS, between=c.Cmd.WRITE_ZEROES)
