"""Comparisons shared by both runners: errors, data, extents.

Each check raises :class:`Failed` with what was expected and what came, or
returns quietly.  :class:`FeatureMissing` is how a runner learns that a side
lacks a required feature and said so correctly; :class:`HarnessLimit` that
the harness itself cannot do what a scenario asks (a verdict of error, never
a pass or a skip).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.peers.export import ExportSpec, merge_extents, pattern
from harness.protocol import constants as c

from . import spec_names
from .content import ContentModel, first_difference

Extents = list[tuple[int, int, int]]


class Failed(Exception):
    """An expectation did not hold."""

    def __init__(self, message: str, expected: Any = None, got: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.got = got


class FeatureMissing(Exception):
    """A side lacks a required feature; ``evidence`` says how it showed."""

    def __init__(self, feature: str, evidence: str, side: str = "server") -> None:
        super().__init__(f"{side} lacks {feature}: {evidence}")
        self.feature = feature
        self.evidence = evidence
        self.side = side


class HarnessLimit(Exception):
    """The harness cannot do what the scenario asks (reported as an error)."""


# --- errors ----------------------------------------------------------------------------


def errno_label(errno: int) -> str:
    return c.name_of(c.Errno, errno)


def as_list(value: object) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def command_outcome(got: str, expect: Mapping[str, Any] | None, what: str) -> None:
    """Check a command's outcome label (``ok``, ``closed`` or an ``NBD_E*`` name)."""
    expect = expect or {}
    if "error" in expect:
        allowed = [errno_label(spec_names.value("Errno", e)) for e in as_list(expect["error"])]
        if got not in allowed:
            raise Failed(f"{what}: expected the error {' or '.join(allowed)}, got {got}",
                         " or ".join(allowed), got)
        return
    if "one_of" in expect:
        allowed = [e if e in ("ok", "closed", "error")
                   else errno_label(spec_names.value("Errno", e))
                   for e in expect["one_of"]]
        if "error" in allowed and got not in ("ok", "closed"):
            return  # any error value will do
        if got not in allowed:
            raise Failed(f"{what}: expected one of {', '.join(allowed)}, got {got}",
                         allowed, got)
        return
    if expect.get("closed"):
        if got != "closed":
            raise Failed(f"{what}: expected the server to close the connection, got {got}",
                         "closed", got)
        return
    if got != "ok":
        raise Failed(f"{what}: expected success, got {got}", "ok", got)


def option_error_matches(wanted: object, labels: set[str]) -> bool:
    """Whether an option outcome (its labels) is one of ``wanted`` (names, ``closed``, ``tls``)."""
    choices = as_list(wanted)
    return "any" in choices or any(choice in labels for choice in choices)


# --- data --------------------------------------------------------------------------------


def expected_data(
    expectation: object, offset: int, length: int, model: ContentModel, spec: ExportSpec
) -> tuple[bytes, list[tuple[int, int]], str]:
    """The bytes a read must return, the unknown ranges, and a name for messages."""
    if expectation in (None, "model"):
        data, unknown = model.expected(offset, length)
        return data, unknown, "the export as the scenario left it"
    if expectation == "export":
        data, unknown = ContentModel.of(spec).expected(offset, length)
        return data, unknown, "the export's initial contents"
    if expectation == "zero":
        return bytes(length), [], "zeroes"
    assert isinstance(expectation, Mapping)
    if "pattern" in expectation:
        seed = expectation["pattern"]
        return pattern(offset, length, seed), [], f"pattern seed {seed}"
    byte = expectation["byte"]
    return bytes([byte]) * length, [], f"bytes {byte:#04x}"


def check_data(got: bytes, expectation: object, offset: int, length: int,
               model: ContentModel, spec: ExportSpec, what: str) -> None:
    """Compare read data with what the scenario expects there."""
    expected, unknown, label = expected_data(expectation, offset, length, model, spec)
    if len(got) != len(expected):
        raise Failed(f"{what}: got {len(got)} bytes, expected {len(expected)} ({label})",
                     len(expected), len(got))
    where = first_difference(got, expected, unknown, offset)
    if where is not None:
        index = where - offset
        raise Failed(
            f"{what}: data differs from {label} at offset {where}",
            expected[index : index + 16].hex(),
            got[index : index + 16].hex(),
        )


# --- extents -------------------------------------------------------------------------------


def clip(extents: Iterable[tuple[int, int, int]], offset: int, length: int) -> Extents:
    """The part of ``extents`` inside ``[offset, offset+length)``, merged."""
    end = offset + length
    out = []
    for start, size, flags in extents:
        lo, hi = max(start, offset), min(start + size, end)
        if lo < hi:
            out.append((lo, hi - lo, flags))
    return merge_extents(out)


def export_extents(spec: ExportSpec, context: str) -> Extents:
    """What a correct server reports for ``context`` over the whole export, as built."""
    if context == c.BASE_ALLOCATION:
        return spec.base_allocation()
    if context == c.QEMU_ALLOCATION_DEPTH:
        return spec.allocation_depth()
    if context.startswith(c.QEMU_DIRTY_BITMAP_PREFIX):
        return spec.dirty_extents(context[len(c.QEMU_DIRTY_BITMAP_PREFIX):])
    raise HarnessLimit(f"no expected extents for context {context!r}")


def check_coverage(extents: Extents, offset: int, length: int, what: str) -> None:
    position = offset
    for start, size, _ in extents:
        if start != position or size <= 0:
            raise Failed(f"{what}: extents are not contiguous at offset {position}",
                         position, start)
        position += size
    if position != offset + length:
        raise Failed(f"{what}: extents cover up to {position}, not {offset + length}",
                     offset + length, position)


def check_extents(got: Extents, expectation: object, match: str, context: str, offset: int,
                  length: int, model: ContentModel, spec: ExportSpec, what: str) -> None:
    """Compare a map of ``context`` over a range with the expectation.

    ``exact``: the merged extents are equal.  ``hole-optional`` (``base:allocation``):
    NBD_STATE_ZERO exactly as expected, NBD_STATE_HOLE as expected or clear (the spec:
    "if clear, the block is allocated or the server could not otherwise determine its
    status"; qemu before 6.0 clears it for zero clusters it counts as allocated).
    ``safe``: for ``base:allocation``, every extent claiming NBD_STATE_ZERO reads as
    zeroes in the model; for a dirty bitmap, every granule expected dirty is reported
    dirty.
    """
    check_coverage(got, offset, length, what)  # before merging, which would hide a gap
    got = merge_extents(got)
    expected: Extents | None = None
    if expectation == "export":
        expected = clip(export_extents(spec, context), offset, length)
    elif expectation is not None:
        expected = clip([tuple(e) for e in expectation], offset, length)  # type: ignore[misc]
    if match == "exact":
        if expected is None:
            raise HarnessLimit(f"{what}: match exact needs expected extents")
        if got != expected:
            raise Failed(f"{what}: {context} extents differ", _show(expected), _show(got))
        return
    if match == "hole-optional":
        if expected is None or context != c.BASE_ALLOCATION:
            raise HarnessLimit(f"{what}: match hole-optional needs expected base:allocation "
                               "extents")
        if not _hole_optional_equal(got, expected):
            raise Failed(f"{what}: {context} extents differ (NBD_STATE_HOLE may be clear, "
                         "NBD_STATE_ZERO must match)", _show(expected), _show(got))
        return
    if context == c.BASE_ALLOCATION:
        for start, size, flags in got:
            if flags & c.StateFlag.ZERO and not model.known_zero(start, size):
                raise Failed(f"{what}: {start}+{size} is reported NBD_STATE_ZERO but holds "
                             "data", "data", _show([(start, size, flags)]))
        return
    if context.startswith(c.QEMU_DIRTY_BITMAP_PREFIX) and expected is not None:
        for start, size, flags in expected:
            if not flags & c.DirtyFlag.DIRTY:
                continue
            for g_start, g_size, g_flags in got:
                lo, hi = max(start, g_start), min(start + size, g_start + g_size)
                if lo < hi and not g_flags & c.DirtyFlag.DIRTY:
                    raise Failed(f"{what}: {lo}+{hi - lo} was written but is reported clean",
                                 _show(expected), _show(got))
        return
    if expected is not None and got != expected:
        raise Failed(f"{what}: {context} extents differ", _show(expected), _show(got))


def _hole_optional_equal(got: Extents, expected: Extents) -> bool:
    """Both maps cover the same bytes and agree everywhere, but where ``expected`` says
    NBD_STATE_HOLE, ``got`` may leave it clear."""
    hole = int(c.StateFlag.HOLE)
    bounds = sorted({p for s, n, _ in (*got, *expected) for p in (s, s + n)})
    for position in bounds[:-1]:  # each piece between two bounds has one flag value per map
        want = _flags_at(expected, position)
        have = _flags_at(got, position)
        if want is None or have is None:
            return False
        if have != want and have != want & ~hole:
            return False
    return True


def _flags_at(extents: Extents, position: int) -> int | None:
    for start, size, flags in extents:
        if start <= position < start + size:
            return flags
    return None


def _show(extents: Extents) -> list[list[int]]:
    return [list(e) for e in extents]


__all__ = [
    "Extents",
    "Failed",
    "FeatureMissing",
    "HarnessLimit",
    "as_list",
    "check_coverage",
    "check_data",
    "check_extents",
    "clip",
    "command_outcome",
    "errno_label",
    "expected_data",
    "export_extents",
    "option_error_matches",
]
