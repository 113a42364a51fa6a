"""An env that misbehaves on command, for EnvPool failure tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import gymnasium as gym

from agentrl.envs.base import TextEnv, empty_info


class FaultyEnv(TextEnv):
    def __init__(self, close_raises: bool = False) -> None:
        super().__init__()
        self.close_raises = close_raises

    def close(self) -> None:
        if self.close_raises:
            raise RuntimeError("close failed")

    @property
    def num_instances(self) -> int:
        return 4

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.index = self.pick_instance(options)
        return f"start {self.index}", empty_info(task="say ok", instance=str(self.index), pid=os.getpid())

    def step(self, action: str):
        if action == "crash":
            os._exit(3)
        if action == "hang":
            time.sleep(600)
        if action == "raise":
            raise ValueError("boom")
        if action == "exit":
            sys.exit(0)
        if action == "bad info":
            return "ok", 0.0, False, False, ["not", "a", "dict"]
        if action == "bad actions":
            return "ok", 0.0, False, False, empty_info(admissible_actions=["look", 3, None])
        if action == "bad obs":
            return b"bytes", 0.0, False, False, empty_info()
        if action == "huge":
            return "x" * 10_000_000, 0.0, False, False, empty_info()
        if action == "nan":
            return "ok", float("nan"), False, False, empty_info()
        if action == "leak":
            self.hoard = [bytearray(2**20) for _ in range(4096)]  # 4 GiB, far over the test's cap
        if action == "won string":
            return "ok", 0.0, True, False, empty_info(won="False")
        if action == "huge task":
            return "ok", 0.0, False, False, empty_info(task="t" * 10_000_000, admissible_actions=["look"])
        if action == "many actions":
            return "ok", 0.0, False, False, empty_info(admissible_actions=[f"go to {i}" for i in range(300_000)])
        if action == "long action":
            return "ok", 0.0, False, False, empty_info(admissible_actions=["look", "x" * 100_000])
        if action.startswith(("spawn ", "setsid ")):  # a child process that would outlive a carelessly killed worker
            kind, path = action.split(" ", 1)
            child = subprocess.Popen(["sleep", "600"], start_new_session=kind == "setsid")
            with open(path, "w") as f:
                f.write(str(child.pid))
        return f"echo {action}", 1.0, action == "ok", False, empty_info(won=action == "ok", pid=os.getpid())


class HangingEnv(FaultyEnv):
    """Hangs where told: in its constructor ("init") or in every step ("step")."""

    def __init__(self, hang_in: str = "step") -> None:
        super().__init__()
        self.hang_in = hang_in
        if hang_in == "init":
            time.sleep(600)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = super().reset(seed=seed, options=options)
        return obs, {**info, "admissible_actions": ["wait"]}

    def step(self, action: str):
        time.sleep(600)
        return super().step(action)


if "test/Hanging-v0" not in gym.registry:
    gym.register("test/Hanging-v0", entry_point="tests.faulty_env:HangingEnv")
