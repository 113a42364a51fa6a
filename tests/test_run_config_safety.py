"""Nothing a run directory's config.yaml names runs code: a run is something people share and download. Each case
ran code (a shell command, an imported module) before its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from agentrl import envs, eval_cli
from agentrl.config import config_yaml, load_config, validate_config
from agentrl.errors import ConfigError


def _run_dir(tmp_path: Path, **env: object) -> Path:
    """A run directory whose config.yaml is cuebandit's with `env` entries replaced (as a hostile sharer would)."""
    cfg = yaml.safe_load(config_yaml(load_config(["experiment=cuebandit"])))
    cfg["env"].update(env)
    run = tmp_path / "shared-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def _eval(run: Path, tmp_path: Path, *extra: str) -> str:
    """agentrl-eval --run on `run` with a model given (no weights load before the checks); its error text."""
    args = ["--run", str(run), "--model", "tiny-qwen2", "--instances", "2", "--workers", "0", *extra]
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([*args, "--out", str(tmp_path / "out"), "--no-progress"])
    assert exit_info.value.code == 2
    return str(exit_info.value)


def test_a_run_config_cannot_call_a_function_as_prompt_format(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _run_dir(tmp_path, prompt_format="os:system", prompt={"command": f"touch {marker}"})
    _eval(run, tmp_path)
    assert not marker.exists()
    assert "not a prompt-format class" in capsys.readouterr().err


def test_a_run_config_cannot_import_a_module_through_its_prompt_format(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "imported"
    (tmp_path / "sneaky_format.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Fmt: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = _run_dir(tmp_path, prompt_format="sneaky_format:Fmt")
    _eval(run, tmp_path)
    err = capsys.readouterr().err
    assert not marker.exists() and "sneaky_format" not in sys.modules
    assert "does not import modules named by a run directory" in err and "--imports sneaky_format" in err


def test_a_run_configs_env_imports_load_only_when_named_again(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "imported"
    (tmp_path / "sneaky_env.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run = _run_dir(tmp_path, imports=["sneaky_env"])
    _eval(run, tmp_path)
    err = capsys.readouterr().err
    assert not marker.exists() and "sneaky_env" not in sys.modules
    assert "run's env.imports names 'sneaky_env'" in err and "--imports sneaky_env" in err


def test_only_prompt_format_classes_load_from_the_command_line_too():
    with pytest.raises(ConfigError, match="not a prompt-format class"):
        envs.make_prompt_format("agentrl/CueBandit-v0", "os:system")
    with pytest.raises(ConfigError, match="not a prompt-format class"):  # a class, but not a prompt format
        envs.make_prompt_format("agentrl/CueBandit-v0", "subprocess:Popen", args=["true"])
    cfg = load_config(["experiment=cuebandit", "env.prompt_format=os:system", "+env.prompt.command=true"])
    with pytest.raises(ConfigError, match="not a prompt-format class"):
        validate_config(cfg, resources=False)
    fmt = envs.make_prompt_format("agentrl/ALFWorld-v0", "agentrl.envs.prompting:TersePromptFormat")
    assert type(fmt).__name__ == "TersePromptFormat"  # agentrl's own formats always load
