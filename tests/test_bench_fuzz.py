"""A seeded smoke run of benchmarks/bench_fuzz.py: the mutator is deterministic, and a few
hundred mutated sessions leave the reference server crash-free, leak-free and serving."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    path = REPO / "benchmarks" / "bench_fuzz.py"
    spec = importlib.util.spec_from_file_location("bench_fuzz", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fuzz"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_inputs_are_reproducible_and_mutated(bench: ModuleType) -> None:
    first = [bench.make_input(7, n) for n in range(50)]
    assert first == [bench.make_input(7, n) for n in range(50)]
    assert first != [bench.make_input(8, n) for n in range(50)]
    valid = {bytes(s.data) for s in bench.session_pool(7)}
    mutated = [data for data, names in first if names != "valid"]
    assert mutated and sum(data not in valid for data in mutated) >= len(mutated) * 0.9


def test_small_campaign_finds_the_server_healthy(bench: ModuleType,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    status = bench.main(["--inputs", "300", "--batch", "100", "--seconds", "60", "--seed", "3"])
    out = capsys.readouterr().out
    assert "seed 3: 300 inputs" in out
    assert "crashes 0, hangs (> 5.0 s) 0, well-behaved client not served 0" in out
    assert "fd leaks 0" in out
    assert status == 0
