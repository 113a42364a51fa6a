"""OpenEnv environments for the adapter's tests: CueBandit's task (answer the cue with its word; the word is the
cue itself) as an openenv-core Environment served by agentrl on loopback, and a misbehaving server (plain FastAPI
speaking OpenEnv's /ws protocol) whose episode seed picks how it fails."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, WebSocket  # module level: FastAPI resolves the string annotations in these globals
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State

WORDS = ("up", "down", "left", "right")


class CueAction(Action):
    message: str


class CueObservation(Observation):
    prompt: str


class CueEnvironment(Environment[CueAction, CueObservation, State]):
    """One cue per turn (`TURNS`); reward 1/TURNS for each reply whose first choice word is the cue."""

    SUPPORTS_CONCURRENT_SESSIONS = True
    TURNS = 1

    def __init__(self) -> None:
        super().__init__()
        self._state = State()
        self.cues: list[str] = []

    def _prompt(self) -> str:
        cue = self.cues[self._state.step_count]
        return f"Cue: {cue}. Which word goes with this cue? Choices: {', '.join(WORDS)}."

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> CueObservation:
        seed = seed or 0
        self._state = State(episode_id=episode_id, step_count=0)
        self.cues = [WORDS[(seed + 3 * t) % len(WORDS)] for t in range(self.TURNS)]
        return CueObservation(prompt=self._prompt(), done=False, reward=None)

    def step(self, action: CueAction, timeout_s: float | None = None, **kwargs: Any) -> CueObservation:
        text = action.message.lower()
        hits = sorted((text.find(w), w) for w in WORDS if w in text)
        right = bool(hits) and hits[0][1] == self.cues[self._state.step_count]
        self._state.step_count += 1
        done = self._state.step_count >= self.TURNS
        prompt = ("Correct." if right else "Wrong.") + ("" if done else " " + self._prompt())
        return CueObservation(prompt=prompt, done=done, reward=(1.0 / self.TURNS) if right else 0.0)

    @property
    def state(self) -> State:
        return self._state


class TwoCues(CueEnvironment):
    TURNS = 2


def faulty_app():
    """A server that speaks OpenEnv's /ws protocol and fails on its first step as the reset seed says: 0 answers
    well (done after one step), 1 closes with code 1000, 2 never answers, 3 sends the reward as a string, 4 omits
    `done`, 5 sends an observation that is a list, 6 closes with code 1011."""
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        seed = 0
        while True:
            message = json.loads(await socket.receive_text())
            if message["type"] == "close":
                await socket.close()
                return
            if message["type"] == "reset":
                seed = message["data"].get("seed", 0)
                data: Any = {"observation": {"prompt": f"episode {seed}"}, "reward": None, "done": False}
            elif seed == 1:
                await socket.close(code=1000)
                return
            elif seed == 2:
                await asyncio.sleep(3600)
            elif seed == 6:
                await socket.close(code=1011)
                return
            else:
                data = {
                    0: {"observation": {"prompt": "ok"}, "reward": 1.0, "done": True},
                    3: {"observation": {"prompt": "x"}, "reward": "1.0", "done": True},
                    4: {"observation": {"prompt": "x"}, "reward": 1.0},
                    5: {"observation": ["x"], "reward": 1.0, "done": True},
                }[seed]
            await socket.send_text(json.dumps({"type": "observation", "data": data}))

    return app
