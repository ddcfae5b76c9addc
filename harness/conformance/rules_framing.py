"""Rules of framing: messages whose bytes do not add up to what their header promised.

The stream decoder resynchronises after bytes it cannot read (see
:mod:`harness.dissect._resync`): a message its sender cut short, because the next
message starts inside the length it promised or because the sender closed its
stream first, is decoded as far as it goes and marked ``missing``.  Bytes with a
wrong magic are judged by the magic rules of each phase (``server.reply-magic``,
``client.request-magic``, ``server.option-reply-magic``, ``client.option-magic``).
"""

from __future__ import annotations

from collections.abc import Iterator

from harness.conformance._rule import Hit, rule
from harness.conformance._view import SessionView
from harness.dissect.model import CLIENT
from harness.protocol import constants as c


@rule(id="client.write-data-follows", midstream=True)
def write_data_follows(view: SessionView) -> Iterator[Hit]:
    """NBD_CMD_WRITE is followed by all the data its length announces."""
    for transaction in view.transactions_of(c.Cmd.WRITE):
        message = transaction.request
        if message.direction == CLIENT and message.truncated:
            sent = len(message.fields.get("data") or b"")
            yield Hit(
                message,
                f"NBD_CMD_WRITE announces {sent + message.missing} bytes of data but only "
                f"{sent} follow before "
                + (
                    "the next request"
                    if view.session.messages[-1] is not message
                    else "the client closes the connection"
                ),
            )
