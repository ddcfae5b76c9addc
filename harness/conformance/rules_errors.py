"""Rules of error values: which errors exist, and which error answers which mistake.

Section "Error values" (and the error sentences of "Request types").  Most of
these are SHOULD-level: the spec recommends errors, it rarely mandates them.
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._view import SessionView, Transaction, reply_error
from harness.dissect.model import WireMessage
from harness.protocol import constants as c

CF = c.CmdFlag
_DEFINED_ERRORS = frozenset(int(e) for e in c.Errno if e)
_KNOWN_FLAGS = int(sum(CF))


def _failed_reply(transaction: Transaction) -> WireMessage | None:
    """The reply that carries the transaction's first error."""
    for reply in transaction.replies:
        if reply_error(reply):
            return reply
    return None


def _answer(transaction: Transaction) -> WireMessage:
    return _failed_reply(transaction) or transaction.replies[-1]


def _outcome(transaction: Transaction) -> str:
    if not transaction.error:
        return "succeeded"
    if transaction.error < 0:
        return "failed with error 0"
    return f"failed with {c.name_of(c.Errno, transaction.error)}"


def _beyond_end(view: SessionView, transaction: Transaction) -> bool:
    size = view.transmission.size
    return size is not None and transaction.offset + transaction.effect_length > size


def _unaligned(view: SessionView, transaction: Transaction) -> bool:
    minimum = view.transmission.minimum_block
    return minimum > 1 and bool(transaction.offset % minimum or transaction.effect_length % minimum)


_WRITES = (c.Cmd.WRITE, c.Cmd.WRITE_ZEROES)


def _recommended(view: SessionView, transaction: Transaction) -> set[int]:
    """Every error some SHOULD of the spec recommends for this request.

    A request can be wrong several ways at once (a write past the end of a
    read-only export), and the spec recommends a different error for each (it
    even recommends two for a write past the end: ENOSPC in "Error values",
    EINVAL in "Size constraints").  A server that follows any one of them
    follows the spec, so each error rule accepts them all.
    """
    command = transaction.command
    flags = transaction.flags
    allowed = c.CMD_ALLOWED_FLAGS.get(command)
    errors: set[int] = set()
    if _beyond_end(view, transaction):
        errors |= {c.Errno.ENOSPC, c.Errno.EINVAL} if command in _WRITES else {c.Errno.EINVAL}
    if _unaligned(view, transaction):
        errors.add(c.Errno.EINVAL)
    if view.transmission.has(c.TransmissionFlag.READ_ONLY) and command in c.WRITE_COMMANDS:
        errors.add(c.Errno.EPERM)
    if allowed is None or flags & ~int(allowed):
        errors.add(c.Errno.EINVAL)  # unknown command, or a flag not documented for it
    needed = c.CMD_REQUIRES_TFLAG.get(command)
    if needed is not None and not view.transmission.has(needed):
        errors.add(c.Errno.EINVAL)  # a command the server did not advertise
    return errors


def _misanswered(view: SessionView, transaction: Transaction) -> bool:
    """Complete, and answered with none of the recommended errors."""
    return transaction.complete and transaction.error not in _recommended(view, transaction)


@rule(id="server.error-values-defined", midstream=True)
def error_values_defined(view: SessionView) -> Iterator[Hit]:
    """Replies use only the error values the spec defines."""
    for message, error in view.error_replies:
        if error > 0 and error not in _DEFINED_ERRORS:
            yield Hit(message, f"{message.name} with error {error}, which the spec does not define")


@rule(id="server.read-only-eperm")
def read_only_eperm(view: SessionView) -> Iterator[Hit]:
    """A failed WRITE or TRIM on a read-only export fails with NBD_EPERM (or with another
    recommended error, when the request is also wrong in another way)."""
    if not view.transmission.has(c.TransmissionFlag.READ_ONLY):
        return
    for transaction in view.transactions_of(c.Cmd.WRITE, c.Cmd.TRIM):
        if (
            transaction.error  # success is a MUST-level finding: another rule
            and _misanswered(view, transaction)
        ):
            yield Hit(
                _answer(transaction),
                f"{transaction.name} on a read-only export {_outcome(transaction)}, not NBD_EPERM",
            )


@rule(id="server.enospc-write-beyond-end")
def enospc_write_beyond_end(view: SessionView) -> Iterator[Hit]:
    """A WRITE past the end of the export fails with NBD_ENOSPC (NBD_EINVAL, which "Size
    constraints" recommends instead, is accepted too)."""
    for transaction in view.transactions_of(c.Cmd.WRITE):
        if _beyond_end(view, transaction) and _misanswered(view, transaction):
            yield Hit(
                _answer(transaction),
                f"NBD_CMD_WRITE past the end of the export {_outcome(transaction)}, not NBD_ENOSPC",
            )


@rule(id="server.einval-beyond-end-or-unaligned")
def einval_beyond_end_or_unaligned(view: SessionView) -> Iterator[Hit]:
    """READ or TRIM past the end, or unaligned READ or WRITE, fail with NBD_EINVAL."""
    for transaction in view.transactions_of(c.Cmd.READ, c.Cmd.TRIM, c.Cmd.WRITE):
        command = transaction.command
        if command in (c.Cmd.READ, c.Cmd.TRIM) and _beyond_end(view, transaction):
            why = "past the end of the export"
        elif command in (c.Cmd.READ, c.Cmd.WRITE) and _unaligned(view, transaction):
            why = "not aligned to the minimum block size"
        else:
            continue
        if _misanswered(view, transaction):
            yield Hit(
                _answer(transaction),
                f"{transaction.name} {why} {_outcome(transaction)}, not NBD_EINVAL",
            )


@rule(id="server.einval-unknown-command")
def einval_unknown_command(view: SessionView) -> Iterator[Hit]:
    """An unknown command fails with NBD_EINVAL."""
    known = {int(cmd) for cmd in c.Cmd}
    for transaction in view.transactions:
        if (
            transaction.command not in known
            and transaction.complete
            and transaction.error != c.Errno.EINVAL
        ):
            yield Hit(
                _answer(transaction),
                f"unknown command {transaction.command} {_outcome(transaction)}, not NBD_EINVAL",
            )


@rule(id="server.einval-unknown-flag")
def einval_unknown_flag(view: SessionView) -> Iterator[Hit]:
    """A request with an unknown command flag fails with NBD_EINVAL."""
    for transaction in view.transactions:
        if (
            transaction.flags & ~_KNOWN_FLAGS
            and transaction.complete
            and transaction.error != c.Errno.EINVAL
        ):
            yield Hit(
                _answer(transaction),
                f"{transaction.name} with unknown flag bits "
                f"{transaction.flags & ~_KNOWN_FLAGS:#06x} "
                f"{_outcome(transaction)}, not NBD_EINVAL",
            )


@rule(id="server.einval-inapplicable-flag")
def einval_inapplicable_flag(view: SessionView) -> Iterator[Hit]:
    """A request with a known flag not documented for its command fails with NBD_EINVAL."""
    for transaction in view.transactions:
        allowed = c.CMD_ALLOWED_FLAGS.get(transaction.command)
        if allowed is None:
            continue
        inapplicable = transaction.flags & _KNOWN_FLAGS & ~int(allowed)
        if inapplicable and transaction.complete and transaction.error != c.Errno.EINVAL:
            yield Hit(
                _answer(transaction),
                f"{transaction.name} with "
                f"{c.spec_name(CF(inapplicable))} "
                f"{_outcome(transaction)}, not NBD_EINVAL",
            )


@rule(id="server.eoverflow-only-documented")
def eoverflow_only_documented(view: SessionView) -> Iterator[Hit]:
    """NBD_EOVERFLOW only for a READ with DF, or for a length over the maximum payload."""
    maximum = view.transmission.maximum_payload or c.DEFAULT_MAX_PAYLOAD
    for transaction in view.transactions:
        if transaction.error != c.Errno.EOVERFLOW:
            continue
        if transaction.command == c.Cmd.READ and transaction.flags & CF.DF:
            continue
        if transaction.command != c.Cmd.WRITE and transaction.effect_length > maximum:
            continue
        yield Hit(
            _answer(transaction),
            f"{transaction.name} of {transaction.effect_length} bytes failed with NBD_EOVERFLOW",
        )


@rule(id="server.enotsup-only-fast-zero")
def enotsup_only_fast_zero(view: SessionView) -> Iterator[Hit]:
    """NBD_ENOTSUP only answers WRITE_ZEROES, and only when fast zero is advertised."""
    fast_zero = view.transmission.has(c.TransmissionFlag.SEND_FAST_ZERO)
    for transaction in view.transactions:
        if transaction.error != c.Errno.ENOTSUP:
            continue
        if transaction.command == c.Cmd.WRITE_ZEROES and fast_zero:
            continue
        yield Hit(_answer(transaction), f"{transaction.name} failed with NBD_ENOTSUP")


@rule(id="server.no-enotsup-without-fast-zero")
def no_enotsup_without_fast_zero(view: SessionView) -> Iterator[Hit]:
    """WRITE_ZEROES without NBD_CMD_FLAG_FAST_ZERO never fails with NBD_ENOTSUP."""
    if not view.transmission.has(c.TransmissionFlag.SEND_FAST_ZERO):
        return
    for transaction in view.transactions_of(c.Cmd.WRITE_ZEROES):
        if not transaction.flags & CF.FAST_ZERO and transaction.error == c.Errno.ENOTSUP:
            yield Hit(
                _answer(transaction),
                "NBD_CMD_WRITE_ZEROES without NBD_CMD_FLAG_FAST_ZERO failed with NBD_ENOTSUP",
            )


@rule(id="server.no-enomem", midstream=True)
def no_enomem(view: SessionView) -> Iterator[Hit]:
    """Replies avoid NBD_ENOMEM."""
    for message, error in view.error_replies:
        if error == c.Errno.ENOMEM:
            yield Hit(message, f"{message.name} with NBD_ENOMEM")
