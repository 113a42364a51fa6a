"""LoRA through PEFT: only adapters train, the reference is the adapter-free base, generation never samples from a
stale adapter, checkpoints hold the adapter and resume exactly, export folds it in, CueBandit still learns."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.algo import AlgoConfig
from agentrl.config import load_config, validate_config
from agentrl.errors import ConfigError
from agentrl.learner import Learner, LearnerConfig
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.policies.lora import LoraSpec, adapter_state
from agentrl.policies.merge import export_merged
from agentrl.policies.models import ModelSpec, load_model
from agentrl.scoring import collate, token_log_probs
from tests.conftest import random_samples

LORA = LoraSpec(rank=4, alpha=8.0)


def _lora_model(seed: int = 0):
    return load_model(ModelSpec(name="tiny-qwen2", seed=seed, lora=LORA))


def _log_probs(model, samples):
    batch = collate(samples, list(range(len(samples))), torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        lp, _ = token_log_probs(model, batch, chunk=1024)
    return lp


def test_only_adapters_train_and_the_base_stays_bit_identical():
    model, tok = _lora_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}
    adapters_before = adapter_state(model)
    learner = Learner(model, LearnerConfig(lr=1e-2, mini_batches=2), AlgoConfig())
    assert {id(p) for p in learner.params} == {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    learner.update(random_samples(8, len(tok)), p=0.0)
    for name, p in model.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(p, base_before[name]), name
    changed = [n for n, t in adapter_state(model).items() if not torch.equal(t, adapters_before[n])]
    assert changed  # lora_B starts at zero; after the update both A and B moved
    assert any("lora_B" in n for n in changed)


def test_the_kl_reference_is_the_base_model_with_adapters_off():
    model, tok = _lora_model()
    base, _ = load_model(ModelSpec(name="tiny-qwen2", seed=0))  # the same random init, no adapters
    samples = random_samples(6, len(tok), seed=3)
    learner = Learner(model, LearnerConfig(lr=1e-2, kl_coef=0.1), AlgoConfig(), ref_model="base")
    learner.update(samples, p=0.0)  # adapters now non-zero: the policy differs from the base
    ref = learner.reference_log_probs(samples)
    expected = Learner(base, LearnerConfig(), AlgoConfig()).log_probs(base, samples)  # same micro-batching
    assert all(torch.equal(r, e) for r, e in zip(ref, expected))  # exactly the base model's
    after = learner.log_probs(model, samples)  # and the adapters are back on afterwards
    assert not all(torch.equal(a, e) for a, e in zip(after, expected))
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())


def test_generation_sees_the_new_adapter_and_a_skipped_sync_trips_the_canary():
    model, tok = _lora_model()
    learner = Learner(model, LearnerConfig(lr=5e-2), AlgoConfig())
    learner.update(random_samples(8, len(tok)), p=0.0)
    shared = HFPolicy(model, tok)  # one object: generation log-probs are the learner's, new adapter included
    prompt = tok("hello there", add_special_tokens=False)["input_ids"]
    out = shared.generate([prompt], SamplingParams(temperature=1.0, max_new_tokens=6, seed=0, logprobs=True))[0]
    from agentrl.types import Sample

    sample = Sample(prompt + out.token_ids, [0] * len(prompt) + [1] * len(out.token_ids), reward=0.0)
    learner_lp = learner.log_probs(model, [sample])[0][len(prompt) :]
    assert torch.allclose(torch.tensor(out.logprobs), learner_lp, atol=1e-5)
    copy_model = copy.deepcopy(model)  # a generation copy (another device or process, in general)
    separate = HFPolicy(copy_model, tok, source=model)
    probe = prompt + out.token_ids
    assert separate.check_sync(probe) == 0.0
    learner.update(random_samples(8, len(tok), seed=1), p=0.0)
    with pytest.raises(RuntimeError, match="sync canary"):  # the mutation: the sync is skipped
        separate.check_sync(probe)
    separate.sync_weights()
    assert separate.check_sync(probe) == 0.0


def test_lora_checkpoints_hold_the_adapter_and_resume_exactly(tmp_path):
    from agentrl.trainer import train

    common = ["experiment=cuebandit", "model.lora.rank=4", "learner.kl_coef=0.01", "trainer.progress=false"]
    common += ["trainer.iterations=4", "trainer.eval_every=4", "trainer.checkpoint_every=2"]
    train(load_config([*common, f"trainer.run_dir={tmp_path / 'full'}"]))
    train(
        load_config([*common, "trainer.iterations=2", "algo.p_schedule_steps=4", f"trainer.run_dir={tmp_path / 'cut'}"])
    )
    train(
        load_config([*common, "trainer.resume=auto", "algo.p_schedule_steps=4", f"trainer.run_dir={tmp_path / 'cut'}"])
    )
    folder = tmp_path / "full" / "checkpoints" / "iter-000004" / "model"
    assert (folder / "adapter.safetensors").exists() and not (folder / "model.safetensors").exists()
    from safetensors.torch import load_file

    a = load_file(str(folder / "adapter.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "iter-000004" / "model" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    model, tok = load_model(ModelSpec(name=str(folder)))  # agentrl-eval --model <adapter folder> loads this way
    assert all(torch.equal(t, a[n]) for n, t in adapter_state(model).items())
    merged_dir = export_merged(folder, tmp_path / "merged")
    merged, _ = load_model(ModelSpec(name=str(merged_dir)))
    samples = random_samples(4, len(tok), seed=5)
    assert torch.allclose(_log_probs(merged, samples), _log_probs(model, samples), atol=1e-5)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())


def test_bad_lora_settings_are_rejected_before_weights_load():
    cfg = load_config(["model.lora.rank=4", "model.lora.target_modules=[q_proj,qkv]", "model.lora.dropout=1.5"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "['qkv'] match no Linear layer" in str(err.value) and "model.lora.dropout" in str(err.value)


def test_cuebandit_learns_with_lora(tmp_path):
    """LoRA adapters alone (rank 16, lm_head included) learn CueBandit's reply format and its reward on the random
    tiny model. lm_head is a target here because the tiny model's frozen final RMSNorm and 0.02-scale head bound
    every logit near ±1.3: adapters on the projections alone cannot make any token likely (measured: 95% invalid
    replies after 250 iterations). Measured with these settings: invalid replies 97% → 0%, greedy panel success
    0% → 25–50% (one or two of the four cues) in 250 iterations; full fine-tuning reaches 100% (test_trainer). An
    untrained model cannot pass: its greedy replies are invalid (0% success) and 97% of its samples are invalid."""
    from agentrl.metrics import read_metrics
    from agentrl.trainer import train

    targets = "[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head]"
    cfg = load_config(
        [
            "experiment=cuebandit",
            "model.lora.rank=16",
            "model.lora.alpha=32",
            f"model.lora.target_modules={targets}",
            "learner.lr=2.5e-3",
            f"trainer.run_dir={tmp_path}",
            "trainer.progress=false",
        ]
    )
    result = train(cfg)
    rows = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert result["before"]["eval/panel/success"] == 0.0
    assert sum(r["rollout/invalid_rate"] for r in rows[:10]) / 10 > 0.9
    assert sum(r["rollout/invalid_rate"] for r in rows[-10:]) / 10 < 0.05
    assert result["after"]["eval/panel/success"] >= 0.25, result["after"]


def test_adapters_on_top_layers_only_cut_backward_below_them():
    """model.lora.layers=[-1]: adapters in the last decoder layer only, so no gradient reaches the layers below
    (the cheap CPU update the quickstart relies on); out-of-range layers are refused before weights load."""
    model, tok = load_model(ModelSpec(name="tiny-qwen2", seed=0, lora=LoraSpec(rank=4, alpha=8.0, layers=[-1])))
    top = model.config.num_hidden_layers - 1
    adapted = {n.split(".layers.")[1].split(".")[0] for n in adapter_state(model)}
    assert adapted == {str(top)}
    entered: list[int] = []
    for i, layer in enumerate(model.model.layers):
        layer.mlp.register_full_backward_pre_hook(lambda *_, i=i: entered.append(i))
    Learner(model, LearnerConfig(lr=1e-2, mini_batches=1), AlgoConfig()).update(random_samples(4, len(tok)), p=0.0)
    assert entered and set(entered) == {top}  # backward ran through the adapted layer and stopped there
    cfg = load_config(["model.name=tiny-qwen2", "model.lora.rank=4", "model.lora.layers=[0,99]"])
    with pytest.raises(ConfigError, match=r"model.lora.layers \[99\] are outside"):
        validate_config(cfg)
