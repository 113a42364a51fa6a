"""The benchmark's quick mode still runs end to end (its timings are reported, never asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@pytest.mark.integration
def test_benchmark_quick_mode_produces_every_section(tmp_path):
    from scripts import benchmark

    out = tmp_path / "bench.json"
    report = benchmark.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    for section in ("peak", "learner", "loss", "padding", "rollout", "constrained", "lora"):
        assert section in report
    assert report["constrained"]["identical_replies"] is True and report["constrained"]["skip_forced_s"] > 0
    learner = report["learner"]
    assert learner["tokens"] > 0 and learner["update_tokens_per_s"] > 0 and learner["plain_tokens_per_s"] > 0
    padding = report["padding"]
    assert padding["padding_frac_length_grouped"] <= padding["padding_frac_naive"]
    assert report["rollout"]["episodes"] == 8 and report["rollout"]["generated_tokens"] > 0
    lora = report["lora"]
    assert 0 < lora["lora16_trainable_params"] < lora["full_trainable_params"] == lora["full_total_params"]


def test_gpu_section_code_runs_on_cpu_with_a_small_shape():
    """The GPU section's code path (learner update, generate, report) on the CPU, so it does not rot between the rare
    sessions that have a GPU; its numbers here mean nothing."""
    from scripts import benchmark

    shape = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    report = benchmark.gpu_bench("cpu", {"small": shape})
    row = report["small"]
    assert row["update_tokens"] > 0 and row["learner_tokens_per_s"] > 0 and row["generation_tokens_per_s"] > 0
    assert report["matmul_bf16_gflops"] > 0
