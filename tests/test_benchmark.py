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


def test_gpu_profile_code_runs_on_cpu_with_a_small_shape(tmp_path):
    """scripts/gpu_profile.py's every section on the CPU with a tiny shape, so the GPU profile does not rot between
    sessions that have a GPU; its numbers here mean nothing, its bookkeeping is checked."""
    from scripts import gpu_profile

    out = tmp_path / "profile.json"
    report = gpu_profile.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text())["update"] == report["update"]
    assert set(gpu_profile.SECTIONS) <= set(report)
    batch = report["batch"]
    assert 0 < batch["action_tokens"] < batch["tokens"] and batch["update_model_tflop"] > 0
    assert report["update"]["s"] > 0 and 0 < report["update"]["mfu"]
    assert set(report["phases"]) == {"old_log_probs_s", "forward_backward_s", "clip_and_adamw_s"}
    grouping = report["grouping"]
    assert all(row["micro_batches_per_pass"] >= 1 and 0 <= row["padding_frac"] < 1 for row in grouping.values())
    # the learner's own allowance (0.1) groups as the budgets section's learner does
    assert grouping["2048/0.1"]["micro_batches_per_pass"] == report["budgets"]["2048"]["micro_batches_per_pass"]
    assert gpu_profile.kind_of("nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_NTN") == "matmul"
    assert gpu_profile.kind_of("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16") == "attention"
