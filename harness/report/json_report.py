"""``report.json``: the whole result set, with counts, for machines (CI, dashboards)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.matrix.results import CaseResult

from ._summary import pair_label, summarize


def render_json(results: Sequence[CaseResult], runs: Sequence[dict[str, Any]] = ()) -> str:
    """The report as JSON text: ``summary``, ``pairs``, ``runs`` and every ``case``."""
    summary = summarize(results)
    document = {
        "summary": {"total": summary.total, "ok": summary.ok, **summary.counts},
        "pairs": summary.pair_counts,
        "runs": list(runs),
        "cases": [{**result.to_dict(), "pair": pair_label(result)} for result in results],
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_json(results: Sequence[CaseResult], path: Path,
               runs: Sequence[dict[str, Any]] = ()) -> Path:
    path.write_text(render_json(results, runs), encoding="utf-8")
    return path


__all__ = ["render_json", "write_json"]
