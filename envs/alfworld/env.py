"""ALFWorld (text): household tasks played by textworld's PDDL engine, over official or generated games.

Description:
    The six ALFWorld task types (pick, look, clean, heat, cool, pick-two) in rooms from the ALFRED floor plans.
    Games are read from `data_path/<split>` (official: $ALFWORLD_DATA/json_2.1.1/<split>; generated:
    scripts/generate_alfworld.py) in sorted, stable order; only games marked solvable are kept.
Observation:
    The game's text ("You are in the middle of a room. Looking quickly around you, you see a cabinet 4, …").
Action:
    A command (str). Commands that are not admissible answer "Nothing happens." like the official env.
Rewards:
    `win_reward` (10, the paper's protocol) when the goal is reached, else 0.
Episode end:
    Terminated on a win; truncated by Gymnasium's TimeLimit (registered with max_episode_steps=50; the trainer
    passes rollout.max_turns).
Arguments:
    data_path (str | None: $ALFWORLD_DATA), split ("train" | "valid_seen" | "valid_unseen"),
    win_reward (float, 10.0), task_types (list[str] | None: all six), hide_actions (list[str]: admissible commands
    starting with one of these words are not listed, e.g. ["look", "inventory", "examine"] for small models that
    loop on them; they still run if typed. Not ALFWorld's protocol: an easier setting, say so when you report it).
Version history:
    v0: initial version (the step limit moved to Gymnasium's TimeLimit; episodes are unchanged).
"""

from __future__ import annotations

import functools
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

from agentrl.envs.alfworld.constants import SHORT_NAMES, TASK_TYPES
from agentrl.envs.base import TextEnv, clean_text, empty_info
from agentrl.envs.prompting import AgentPromptFormat

HOW_TO_GET_GAMES = (
    "generate games offline with: python scripts/generate_alfworld.py --out data/alfworld --split train --num 200 "
    "(and --split valid_unseen), or point data_path / $ALFWORLD_DATA at the official data (json_2.1.1 inside it)"
)


def find_games(data_path: str | None, split: str, task_types: list[str] | None = None) -> tuple[Path, list[Path]]:
    """(split root, sorted game files). Raises with a how-to when there are none: alfworld itself would spin
    forever on an empty game list. Scans once per process (every env copy of a worker reuses the list)."""
    root, games = _scan(data_path or os.environ.get("ALFWORLD_DATA"), split, tuple(task_types or TASK_TYPES))
    return root, list(games)


@functools.cache
def _scan(root: str | None, split: str, task_types: tuple[str, ...]) -> tuple[Path, tuple[Path, ...]]:
    if not root:
        raise FileNotFoundError(f"no ALFWorld data path given and $ALFWORLD_DATA is unset; {HOW_TO_GET_GAMES}")
    base = Path(root).expanduser()
    if (base / "json_2.1.1").is_dir():
        base = base / "json_2.1.1"
    split_root = base / split
    if not split_root.is_dir():
        raise FileNotFoundError(f"ALFWorld split folder {split_root} does not exist; {HOW_TO_GET_GAMES}")
    wanted = set(task_types)
    games = []
    for game in sorted(split_root.rglob("game.tw-pddl")):
        if "movable" in str(game) or "Sliced" in str(game):
            continue  # not supported by ALFWorld's text engine either
        traj = json.loads((game.parent / "traj_data.json").read_text())
        if traj["task_type"] in wanted and json.loads(game.read_text()).get("solvable"):
            games.append(game)
    if not games:
        raise FileNotFoundError(f"no solvable ALFWorld games under {split_root}; {HOW_TO_GET_GAMES}")
    return split_root, tuple(games)


class ALFWorldEnv(TextEnv):
    metadata = {
        "render_modes": [],
        "prompt_format": partial(AgentPromptFormat, environment="the ALFRED Embodied Environment"),
        "requires": ("alfworld", "textworld"),
    }

    def __init__(
        self,
        data_path: str | None = None,
        split: str = "train",
        win_reward: float = 10.0,
        task_types: list[str] | None = None,
        hide_actions: list[str] | None = None,
    ) -> None:
        super().__init__()
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
        from textworld.envs import PddlEnv

        self.root, self.games = find_games(data_path, split, task_types)
        self.win_reward = win_reward
        self.hidden = tuple(hide_actions or ())
        infos = textworld.EnvInfos(admissible_commands=True, won=True)
        self._env = AlfredDemangler(PddlEnv(infos), shuffle=False)
        self._index = 0
        self._task, self._task_type, self._walkthrough = "", "", []
        self._won = False

    @property
    def num_instances(self) -> int:
        return len(self.games)

    def instance_name(self, index: int) -> str:
        return str(self.games[index].parent.relative_to(self.root))

    def _info(self, state: Any) -> dict[str, Any]:
        return empty_info(
            task=self._task,
            admissible_actions=[c for c in state["admissible_commands"] if c != "help" and not self._hidden(c)],
            task_type=SHORT_NAMES.get(self._task_type, self._task_type),
            instance=self.instance_name(self._index),
            won=bool(state["won"]),
            walkthrough=list(self._walkthrough),
        )

    def _hidden(self, command: str) -> bool:
        return command.split(" ", 1)[0] in self.hidden

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._index = self.pick_instance(options)
        game_file = self.games[self._index]
        game = json.loads(game_file.read_text())
        self._task_type = json.loads((game_file.parent / "traj_data.json").read_text())["task_type"]
        self._walkthrough = game.get("walkthrough") or []
        self._env.load(str(game_file))
        state = self._env.reset()
        intro = state.feedback
        self._task = intro.split("Your task is to: ", 1)[1].strip().rstrip(".") if "Your task is to: " in intro else ""
        self._won = False
        return intro.replace("-= Welcome to TextWorld, ALFRED! =-", "").strip(), self._info(state)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        command = " ".join(clean_text(action).split())[:500]
        state, _, _ = self._env.step(command)
        won = bool(state["won"]) and not self._won
        self._won = self._won or bool(state["won"])
        return state.feedback.strip(), self.win_reward if won else 0.0, self._won, False, self._info(state)

    def close(self) -> None:
        self._env.close()
