"""The custom-env example of docs/environments.md (linked from the README), the evaluation CLI, the plot script."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gymnasium.utils.env_checker import check_env

from agentrl import envs, eval_cli
from agentrl.envs.agents import OracleAgent, run_panel

ROOT = Path(__file__).resolve().parents[1]


def test_readme_custom_env_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "docs" / "environments.md").read_text()
    code = re.search(r"```python\n(# my_env\.py\n.*?)```", readme, re.DOTALL).group(1)
    (tmp_path / "my_env.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_env  # noqa: F401

    env = envs.make_env("myorg/Guess-v0")
    check_env(env.unwrapped, skip_render_check=True)
    assert run_panel(env, OracleAgent(), range(3)).success == 1.0
    fmt = envs.make_prompt_format("myorg/Guess-v0")
    assert "<action>" in fmt.render("guess", [], "Guess the word.", ["apple"], window=0)[-1]["content"]
    from agentrl.config import load_config
    from agentrl.trainer import train

    runs = []
    for seed in (0, 1):  # the researcher's loop: train small with the preset, twice, ...
        run = tmp_path / f"run{seed}"
        overrides = ["experiment=custom_cpu", "env.id=myorg/Guess-v0", "env.imports=[my_env]", "model=tiny"]
        overrides += ["env.prompt.reasoning=false", "trainer.iterations=2", "trainer.progress=false"]
        result = train(load_config([*overrides, f"trainer.seed={seed}", f"trainer.run_dir={run}"]))
        assert result["after"]["iteration"] == 2 and (run / "config.yaml").exists()
        runs.append(run)
    out = tmp_path / "eval"  # ... evaluate the checkpoint under the prompt it was trained with ...
    args = ["--run", str(runs[0]), "--imports", "my_env", "--instances", "3", "--workers", "0", "--out", str(out)]
    eval_cli.main([*args, "--no-progress"])  # a run's env.imports load only when named again
    report = json.loads((out / "eval.json").read_text())
    assert report["env"] == "myorg/Guess-v0" and report["prompt_options"] == {"reasoning": False}
    assert report["prompt_format"].endswith(":AgentPromptFormat") and report["model"].endswith("iter-000002/model")
    assert report["sampling"]["max_new_tokens"] == 48 and report["sampling"]["max_turns"] == 6
    from agentrl import plot  # ... and compare the two runs in one figure

    png = plot.plot(runs, tmp_path / "compare.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_eval_cli_scripted_agent_writes_reports(tmp_path, capsys):
    eval_cli.main(
        [
            "--env",
            "agentrl/CueBandit-v0",
            "--agent",
            "oracle",
            "--instances",
            "8",
            "--seeds",
            "0",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["summary"]["All"] == {"mean": 1.0, "std": 0.0}
    assert len(report["instances"]) == 8 and report["panel_hash"]
    assert "| All | 8 | 100.0 ± 0.0 |" in (tmp_path / "eval.md").read_text()
    eval_cli.main(
        [
            "--env",
            "agentrl/CueBandit-v0",
            "--agent",
            "random",
            "--instances",
            "16",
            "--seeds",
            "0",
            "1",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    random_report = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert random_report["summary"]["All"]["mean"] < 1.0
    eval_cli.main(
        ["--env", "agentrl/CueBandit-v0", "--agent", "oracle", "--instances", "500", "--out", str(tmp_path / "all")]
    )
    assert len(json.loads((tmp_path / "all" / "eval.json").read_text())["instances"]) == 64  # capped at the task set


def test_eval_cli_with_a_model(tmp_path):
    eval_cli.main(
        [
            "--env",
            "agentrl/CueBandit-v0",
            "--model",
            "tiny-qwen2",
            "--instances",
            "4",
            "--workers",
            "0",
            "--max-new-tokens",
            "4",
            "--max-turns",
            "1",
            "--seeds",
            "0",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    assert [len(r["episodes"]) for r in report["per_seed"]] == [4, 4]


def test_plot_writes_png(tmp_path):
    from agentrl import plot

    rows = [
        {
            "iteration": i,
            "kind": "train",
            "rollout/success": i / 4,
            "train/p": 1 - i / 2,
            "train/clip_frac": 0.1,
            "rollout/invalid_rate": 0.0,
            "train/entropy": 1.0,
            "train/ppo_kl": 0.0,
        }
        for i in range(1, 4)
    ]
    rows.append({"iteration": 3, "kind": "eval", "eval/valid_seen/success": 0.5, "eval/valid_seen/success/pick": 1.0})
    assert plot.expand("eval/*/success", rows) == ["eval/valid_seen/success"]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = plot.plot([tmp_path])
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"
