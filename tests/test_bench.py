"""``dtlnd bench --paced --pipeline``: the rows it promises, and its advice (no timing asserted)."""

from __future__ import annotations

import json

from audio_util import dtlnd

from dtlnd.bench import BenchResult, Timing, recommend


def test_paced_pipelined_json_rows(models_dir):
    r = dtlnd("bench", "--model", "dtln_ns_quant", "--blocks", "100", "--paced", "--paced-blocks", "100",
              "--pipeline", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    kinds = sorted((row["paced"], row["pipeline"]) for row in data["results"])
    assert kinds == [(False, False), (False, True), (True, False), (True, True)]
    for row in data["results"]:
        assert row["engine"]["median"] > 0 and row["floor"]["median"] > 0
        if row["paced"]:
            # CPU per audio second: more than nothing, less than one core per stream.
            assert 0 < row["cpu_per_s"] < 2
        else:
            assert row["cpu_per_s"] is None
    assert len(data["recommendation"]) == 1 and data["recommendation"][0].startswith("dtln_ns_quant: ")


def _row(pipeline: bool, mean_ms: float, median_ms: float, p99_ms: float) -> BenchResult:
    t = Timing(mean_ms * 1000, median_ms * 1000, p99_ms * 1000)
    return BenchResult("m", "aec", "rt", "pyfftw", 1, 1000, t, t, 1.0, mean_ms / 8, True, pipeline, 0.1)


def test_recommendation_follows_the_rule():
    assert "pipeline: false" in recommend([_row(False, 2.0, 2.0, 3.0), _row(True, 1.5, 1.5, 2.0)])[0]
    assert "pipeline: true" in recommend([_row(False, 5.0, 5.0, 6.0), _row(True, 3.0, 3.0, 4.0)])[0]
    assert "--pipeline" in recommend([_row(False, 5.0, 5.0, 6.0)])[0]
    assert "too slow" in recommend([_row(False, 12.0, 12.0, 14.0), _row(True, 8.5, 8.5, 9.0)])[0]
    assert "busy or throttled" in recommend([_row(False, 1.0, 0.5, 12.0), _row(True, 0.8, 0.3, 11.0)])[0]
    # Fast on average with a slow tail is a busy CPU, never "over half the budget".
    assert "busy or throttled" in recommend([_row(False, 0.9, 0.45, 10.5), _row(True, 0.5, 0.26, 5.5)])[0]
