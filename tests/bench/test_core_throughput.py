"""bench.core_throughput at --size tiny: figures of the right shape, every message answered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import core_throughput
from bench.common import POSTGRES_URL_VARIABLE


def test_tiny_run_measures_all_three_systems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(POSTGRES_URL_VARIABLE, raising=False)
    assert core_throughput.main(["--size", "tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "core_throughput.json").read_text())
    sqlite = result["summary"]["sqlite"]
    assert set(sqlite["messages_per_second"]) == {"stillhere", "raw", "raw+llm"}
    assert all(rate > 0 for rate in sqlite["messages_per_second"].values())
    assert sqlite["all_answered"] is True
    assert all(run["answered"] == run["messages"] > 0 for run in result["runs"])
    breakdown = result["storage_breakdown"]
    assert breakdown["answered"] == breakdown["messages"]
    assert breakdown["store_calls_per_message"] > 0
    assert "postgresql" not in result["summary"]
    assert "PostgreSQL skipped" in capsys.readouterr().out


def test_an_experiment_is_measured_beside_the_unchanged_core(tmp_path: Path) -> None:
    chosen = core_throughput.systems(["notyping"])
    assert list(chosen) == ["stillhere", "raw", "raw+llm", "stillhere+notyping"]
