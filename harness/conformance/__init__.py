"""Conformance rules: each normative sentence of the NBD spec as a check over a decoded session.

A rule has an id (``server.option-reply-answers-option``), a level (the spec's
key word: MUST, MUST NOT, SHOULD, SHOULD NOT), the role it binds (client or
server), the spec section and the sentence it enforces.  Rules read what
:mod:`harness.dissect` decoded (never the reference codec) and return
:class:`Finding` objects that point at the frame and stream offset of the
offending message::

    findings = check_capture("session.pcapng")

Rules live one function each in the ``rules_*`` modules, registered by the
:func:`rule` decorator; importing this package registers them all.
"""

from harness.conformance import (  # noqa: F401 (importing registers the rules)
    rules_block_size,
    rules_block_status,
    rules_errors,
    rules_framing,
    rules_handshake,
    rules_options,
    rules_strings,
    rules_structured,
    rules_tls,
    rules_transmission,
)

# isort: split
# Modules added since the citation table was first laid out: imported last, in the order
# their citation blocks close the table in harness/protocol/rules.py.
from harness.conformance import rules_semantics  # noqa: F401  # isort: skip
from harness.conformance import rules_baseline, rules_session  # noqa: F401  # isort: skip
from harness.conformance._rule import (
    LEVELS,
    MANDATORY_LEVELS,
    MUST,
    MUST_NOT,
    REGISTRY,
    SHOULD,
    SHOULD_NOT,
    Hit,
    Rule,
    rule,
)
from harness.conformance._view import SessionView
from harness.conformance.check import all_rules, check_capture, check_session
from harness.conformance.findings import Finding

__all__ = [
    "LEVELS",
    "MANDATORY_LEVELS",
    "MUST",
    "MUST_NOT",
    "REGISTRY",
    "SHOULD",
    "SHOULD_NOT",
    "Finding",
    "Hit",
    "Rule",
    "SessionView",
    "all_rules",
    "check_capture",
    "check_session",
    "rule",
]
