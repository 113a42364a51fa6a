"""One home per concept (issue #10): config groups are library dataclasses, loss options are checked by the loss,
Gymnasium's registry is the only registry, and the wheel ships one top-level package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gymnasium
import pytest

from agentrl import trainer as trainer_module
from agentrl.algo import AlgoConfig
from agentrl.config import Config, config_dict, load_config, upgrade_saved, validate_config
from agentrl.errors import ConfigError
from agentrl.learner import LearnerConfig
from agentrl.policies.models import ModelSpec
from agentrl.rollout import RolloutConfig

ROOT = Path(__file__).resolve().parents[1]


def test_config_groups_are_the_library_dataclasses():
    cfg = load_config(["experiment=cuebandit"])
    assert type(cfg) is Config
    assert (type(cfg.algo), type(cfg.rollout), type(cfg.learner), type(cfg.model)) == (
        AlgoConfig,
        RolloutConfig,
        LearnerConfig,
        ModelSpec,
    )


@pytest.fixture
def no_weights(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("weights were loaded before validation")

    monkeypatch.setattr("agentrl.components.load_model", boom)  # the name the trainer calls


def test_misspelt_loss_option_and_bad_agg_rejected_before_weights_load(no_weights, tmp_path):
    cfg = load_config(["algo=grpo", "+algo.loss_kwargs.agj=token-mean", f"trainer.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="takes no option 'agj'.*did you mean 'agg'"):
        trainer_module.train(cfg)
    cfg = load_config(["algo=grpo", "algo.loss_kwargs.agg=seq-mean", f"trainer.run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="unknown grpo aggregation 'seq-mean'"):
        trainer_module.train(cfg)
    cfg = load_config(["algo.loss=holder_seq", "+algo.loss_kwargs.agg=token-mean"])
    with pytest.raises(ConfigError, match="loss 'holder_seq' takes no option 'agg'"):
        validate_config(cfg)


def test_bad_step_credit_rejected_before_weights_load(no_weights, tmp_path):
    for overrides, message in [
        (["algo.advantage.step_weight=1", "rollout.sample_mode=full"], "needs rollout.sample_mode=window"),
        (["algo.advantage.step_weight=-1"], "step_weight must be >= 0"),
        (["algo.advantage.step_gamma=1.5"], r"step_gamma must be in \[0, 1\]"),
    ]:
        cfg = load_config([*overrides, f"trainer.run_dir={tmp_path}"])
        with pytest.raises(ConfigError, match=message):
            trainer_module.train(cfg)


def test_dr_grpo_length_normaliser_follows_the_reply_length():
    cfg = load_config(["algo=dr_grpo", "rollout.max_new_tokens=77"])
    assert cfg.algo.loss_options(cfg.rollout.max_new_tokens) == {"agg": "seq-mean-token-sum-norm", "norm_length": 77}


def test_model_dtype_auto_is_bf16_only_where_the_machine_computes_it_natively(monkeypatch):
    from agentrl.learner import Learner
    from agentrl.policies import models
    from tests.conftest import make_tiny

    for native, want in ((True, "bf16"), (False, "fp32")):  # an AVX2-only CPU emulates bf16, far slower than fp32
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda native=native: native)
        cfg = load_config(["model.dtype=auto", "model.device=cpu"])
        assert cfg.model.dtype == want  # resolved when the config loads: config.yaml records what ran
    assert load_config(["model.dtype=fp32"]).model.dtype == "fp32"  # explicit choices are kept
    with pytest.raises(ConfigError, match="unknown precision 'auto'"):
        Learner(make_tiny()[0], LearnerConfig(), precision="auto")  # an unresolved auto never reaches the learner


def test_fixed_value_fields_are_rejected_when_composed():
    with pytest.raises(ConfigError, match="window"):
        load_config(["rollout.sample_mode=windw"])
    with pytest.raises(ConfigError, match="rows"):
        load_config(["algo.advantage.statistics=row"])


def test_keys_added_with_a_plus_outside_free_form_dicts_are_refused_not_dropped():
    """`+learner.lrr=1` would be accepted by Hydra and silently dropped; env.prompt is the prompt format's own dict
    of options (set with or without a +), and the format refuses a misspelt one with a close match."""
    with pytest.raises(ConfigError, match="learner.lrr \\(did you mean learner.lr\\?\\)"):
        load_config(["+learner.lrr=1"])
    assert load_config(["+env.prompt.style=terse"]).env.prompt == {"style": "terse"}  # free-form: kept
    cfg = load_config(["experiment=alfworld_paper", "env.prompt.lenient=true", "env.prompt.reasoning=false"])
    assert cfg.env.prompt == {"lenient": True, "reasoning": False}  # no + needed
    cfg = load_config(["env=math", "env.kwargs.data_path=x.jsonl", "algo.loss_kwargs.agg=token-mean"])
    assert cfg.env.kwargs["data_path"] == "x.jsonl" and cfg.algo.loss_kwargs == {"agg": "token-mean"}  # every dict
    cfg = load_config(["env=alfworld", "env.prompt.lenent=true"])
    with pytest.raises(ConfigError, match="lenent.*did you mean 'lenient'"):
        validate_config(cfg, resources=False)


def test_moved_keys_name_their_new_place():
    """rollout.temperature and friends moved to the exploration group: the old key fails with the new one named,
    and a config saved before the move (run directory, checkpoint) reads as today's."""
    with pytest.raises(ConfigError, match="rollout.temperature_end is now exploration.temperature_end"):
        load_config(["rollout.temperature_end=1"])
    old = config_dict(load_config(["experiment=quickstart"]))
    x = old.pop("exploration")
    old["rollout"].update(temperature=x["temperature"], member_temperatures=x["member_temperatures"])
    old["rollout"]["temperature_end"] = x["temperature_end"]
    old["learner"]["temperature_compensation"] = x["temperature_compensation"]
    options = old["env"]["prompt"]
    old["env"]["prompt"] = {"environment": None, "reasoning": None, "lenient": None, "system": options.pop("system")}
    old["env"]["prompt"]["extra"] = options
    assert upgrade_saved(old) == config_dict(load_config(["experiment=quickstart"]))


def test_a_seed_out_of_range_and_an_impossible_tiny_model_are_config_errors(no_weights):
    """Both once raised raw tracebacks (numpy's seeding; a rotary embedding of odd head size) after weights load."""
    cfg = load_config(["trainer.seed=4294967296", "model.hidden_size=30"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert "trainer.seed must be in [0, 2**32)" in str(err.value) and "model.hidden_size=30" in str(err.value)


def test_run_dir_problems_and_a_failing_env_import_are_found_before_weights_load(no_weights, tmp_path, monkeypatch):
    """Each raised a raw traceback, the checkpoint folder only after an iteration of training: a run dir under
    /proc, `checkpoints` that is not a writable folder, a metrics.jsonl that is a folder, an env.imports module that
    raises while it runs (which module, and why)."""
    (tmp_path / "broken_env_module.py").write_text("x = 1\nraise RuntimeError('no licence file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    (run / "metrics.jsonl").mkdir()
    cfg = load_config([f"trainer.run_dir={run}", "trainer.resume=auto", "env.imports=[broken_env_module]"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert (
        "importing 'broken_env_module' raised RuntimeError: no licence file (broken_env_module.py, line 2)" in message
    )
    assert f"{run / 'checkpoints'} is not a writable folder" in message
    assert f"{run / 'metrics.jsonl'} cannot be written (IsADirectoryError" in message
    with pytest.raises(ConfigError, match="/proc is not a writable folder"):
        validate_config(load_config(["trainer.run_dir=/proc/agentrl-run"]))


def test_hangs_in_config_checks_and_scripted_evaluation_end_at_the_env_time_limit(no_weights, tmp_path):
    """An env whose constructor hangs, a FIFO given as a data file, and agentrl-eval --agent random on an env whose
    step hangs each hung for good: each now ends at rollout.env_timeout_s (or is refused at once) with a message."""
    import os
    import time

    import tests.faulty_env  # noqa: F401  (registers test/Hanging-v0)
    from agentrl import eval_cli

    started = time.monotonic()
    cfg = load_config(["env.id=test/Hanging-v0", "+env.kwargs.hang_in=init", "rollout.env_timeout_s=1"])
    with pytest.raises(ConfigError, match="ran past rollout.env_timeout_s=1s"):
        validate_config(cfg)
    fifo = tmp_path / "problems.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        validate_config(load_config(["env=math", f"+env.kwargs.data_path={fifo}"]))
    eval_cli.main(
        ["--env", "test/Hanging-v0", "--agent", "random", "--instances", "2", "--out", str(tmp_path / "out")]
        + ["--imports", "tests.faulty_env", "--workers", "0", "--env-timeout", "1"]
    )
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["per_seed"][0]["success"] == 0.0
    assert [e["error"] for e in report["per_seed"][0]["episodes"]] == ["env ran past rollout.env_timeout_s=1s"] * 2
    assert time.monotonic() - started < 60  # three hangs of 600 s each, before


def test_unknown_env_argument_is_a_config_error(no_weights):
    cfg = load_config(["env=math", "+env.kwargs.data_pth=x.jsonl"])
    with pytest.raises(ConfigError, match="takes no argument 'data_pth'.*did you mean 'data_path'"):
        validate_config(cfg)


class EchoFormat:
    """A prompt format passed on the command line (env.prompt_format=module:Name)."""

    def render(self, task, history, observation, admissible, *, window):
        return [{"role": "user", "content": f"{observation} Choices: {', '.join(admissible)}."}]

    def parse(self, reply, admissible=None):
        named = [a for a in admissible or [] if a in reply]
        return (named[0], True) if named else (reply[:50], False)


def test_plain_gymnasium_register_with_a_prompt_format_trains(tmp_path):
    gymnasium.register("tests/PlainCue-v0", entry_point="agentrl.envs.cue_bandit:CueBanditEnv")
    cfg = load_config(
        [
            "env.id=tests/PlainCue-v0",
            "env.prompt_format=tests.test_config:EchoFormat",
            "env.eval_instances=4",
            "rollout.num_workers=0",
            "rollout.group_size=2",
            "rollout.tasks_per_iteration=2",
            "rollout.max_turns=1",
            "rollout.max_new_tokens=4",
            "trainer.iterations=2",
            f"trainer.run_dir={tmp_path}",
            "model.device=cpu",
        ]
    )
    result = trainer_module.train(cfg)
    assert result["after"]["iteration"] == 2 and result["after"]["eval/panel/success"] >= 0.0


def test_step_limit_is_gymnasium_time_limit():
    from agentrl import envs

    env = envs.make_env("agentrl/CueBandit-v0", turns=5, max_episode_steps=2)
    env.reset(seed=0)
    assert env.step("up")[3] is False and env.step("up")[3] is True  # truncated at the limit


@pytest.mark.integration
def test_wheel_ships_only_the_agentrl_package(tmp_path):
    source = tmp_path / "src"  # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    skip = shutil.ignore_patterns(".git", ".venv*", "build", "data", "runs", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, source, ignore=skip)
    wheel_cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*wheel_cmd, str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("agentrl_holderpo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"agentrl"}, top
    for module in ("agentrl/envs/__init__.py", "agentrl/policies/hf.py", "agentrl/configs/config.yaml"):
        assert module in names


def test_machine_dependent_mistakes_are_reported_together_before_weights_load(tmp_path, monkeypatch):
    # the name the trainer calls (agentrl.components imports it when first imported, so patching
    # agentrl.policies.models.load_model would miss it once components is loaded, and leak into modules imported now)
    monkeypatch.setattr("agentrl.components.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    data = tmp_path / "bad.jsonl"
    data.write_text('{"problem": "1+1?", "answer": "2"}\n{"problem": ')
    panel = tmp_path / "panel.json"
    panel.write_text('{"instances": [0, 99]}')
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    overrides = [
        "env=math",
        f"+env.kwargs.data_path={data}",
        f"env.eval_sets=[{{name: test, kwargs: {{}}, panel: {panel}}}]",
        "env.prompt.reasoning=false",  # AnswerPromptFormat has no such option
        f"trainer.run_dir={blocker}/run",  # under a file: not writable
        "model.device=cuda:3",
    ]
    with pytest.raises(ConfigError) as err:
        trainer_module.train(load_config(overrides))
    message = str(err.value)
    for expected in (
        "bad.jsonl line 2: not a JSON object",
        "takes no option 'reasoning'",
        "is not a writable folder",
        "cuda",
    ):
        assert expected in message, (expected, message)
    good = tmp_path / "good.jsonl"
    good.write_text('{"problem": "1+1?", "answer": "2"}\n')
    with pytest.raises(ConfigError, match=r"instances \[99\] are outside this task set \(0..0\)"):
        validate_config(load_config(["env=math", f"+env.kwargs.data_path={good}", overrides[2]]))


def test_a_hub_model_id_fails_in_seconds_offline(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="not a local folder nor in the Hugging Face cache.*model.name=DIR"):
        validate_config(load_config(["model.name=SomeOrg/some-model-7b"]))
    assert time.perf_counter() - started < 20


def test_agentrl_eval_checks_every_argument_and_the_out_folder_before_loading(tmp_path, capsys):
    from agentrl import eval_cli

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        eval_cli.main(
            [
                "--env",
                "agentrl/CueBandit-v1",
                "--model",
                "no/such-folder/x",
                "--instances",
                "0",
                "--out",
                f"{blocker}/o",
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    for expected in (
        "unknown env id 'agentrl/CueBandit-v1'",
        "does not exist",
        "--instances must be >= 1",
        "not a writable location",
    ):
        assert expected in err, (expected, err)


def _other(value):
    """A value different from `value` (the flattened config compares leaves)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        return {**value, "x": 1}
    return f"{value}-x"


def test_every_key_has_help_and_resume_refusals_follow_each_fields_metadata():
    """Which keys may change on resume is the `resume` fact on each dataclass field (agentrl.types.option): changing
    any key is refused exactly when its field says so, and every key has one line of help for --help."""
    import copy

    from agentrl.config import config_dict, field_facts, flatten, resume_changes

    cfg = load_config(["experiment=cuebandit", "algo.p_schedule_steps=5"])  # trainer.iterations no longer re-times p
    saved = config_dict(cfg)
    facts = field_facts()
    assert set(facts) == set(flatten(saved)) - {
        k for k in flatten(saved) if k.startswith(("env.kwargs.", "algo.loss_kwargs."))
    }
    for key, fact in facts.items():
        assert fact["help"] and "\n" not in fact["help"], key
        changed = copy.deepcopy(saved)
        *parents, leaf = key.split(".")
        node = changed
        for name in parents:
            node = node[name]
        node[leaf] = _other(node[leaf])
        refused, applied = resume_changes(changed, cfg)
        lines = applied if fact["resume"] else refused
        assert any(line.startswith(key) for line in lines), (key, refused, applied)
        assert not any(line.startswith(key) for line in (refused if fact["resume"] else applied)), key
    assert facts["trainer.seed"]["resume"] is False and facts["learner.lr"]["resume"] is True


def test_help_gives_every_key_its_default_and_help(capsys):
    from agentrl.config import field_facts

    trainer_module.main(["--help"])
    out = capsys.readouterr().out
    for key, fact in field_facts().items():
        assert f"{key} = " in out and fact["help"] in out, key


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_refusal_is_printed_in_full_once_under_torchrun(rank, capsys, monkeypatch, tmp_path):
    """Two ranks that stop on the same bad config: rank 0 prints the whole message, every other rank one line
    naming itself (before: the full refusal once per rank)."""
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as stop:
        trainer_module.main(["learner.lr=-1", "rollout.group_size=0", f"trainer.run_dir={tmp_path}"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    if rank == "0":
        assert err[0].startswith("error: ") and any("learner.lr" in line for line in err)
        assert any("rollout.group_size" in line for line in err)
    else:
        assert len(err) == 1 and err[0].startswith("error (rank 1): ") and "rank 0's output" in err[0]
