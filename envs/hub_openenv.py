"""Environments served with OpenEnv (Meta/PyTorch, openenv-core 0.3), played as agentrl text envs.

    env.id=openenv:ws://host:8000            a running OpenEnv server (http:// works too)
    env.id=openenv:my_module:MyEnvironment   an OpenEnv Environment class, served by agentrl on loopback

One WebSocket session per env (OpenEnv keeps an episode's state only on its `/ws` endpoint: one env instance per
connection; `POST /reset` and `POST /step` build a fresh env per request). reset and step map onto Gymnasium's
five-tuple: `done` ends the episode (terminated), the step's `reward` is the reward (None: 0). An episode has no
task set of its own: instance i is `reset(seed=i)`, so panels are fixed as for our envs (`num_instances` sets how
many there are). The episode is won when it ends (`done`) with a total reward of at least `pass_threshold` (1.0).
The reply goes to the server as `{action_field: reply}` (default "message"). The observation's
text is `text_field` when given, else its only text field, else every field as "name: value" lines (OpenEnv does not
send an observation's `metadata` to clients). The env talks in chat messages (envs/tools.py), so the model sees the
whole conversation.

Failures: a connection that drops (a close with code 1000 included) or a call that times out ends that episode as
truncated with the reason in `info["truncation_reason"]`, and the next reset opens a fresh connection (a socket that
timed out can deliver the stale answer of the timed-out call). An observation that is not an object, a reward that
is not a number or a missing `done` is an env error with a clear message. Time-outs: `connect_timeout_s` (30) to
connect, `message_timeout_s` (600) per call — long enough for any env step, finite.

Serving a class (`openenv:<module>:<Class>`): agentrl imports the module, finds the Action and Observation classes
from the class's `Environment[Action, Observation, State]` parameters (or `action_cls` / `observation_cls`,
"module:Name"), and serves it with openenv-core's own `create_app` on 127.0.0.1 (a free port), one server per env
copy, stopped on close. A run's config naming a module is not loaded by `agentrl-eval --run` until the user names it
(`--imports <module>`).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import socket
import threading
import time
import typing
from typing import Any

from agentrl.envs.base import TextEnv, clean_text, empty_info
from agentrl.envs.prompting import ChatPromptFormat

URL_SCHEMES = ("http://", "https://", "ws://", "wss://")


class OpenEnvProtocolError(RuntimeError):
    """The server answered something that is not an OpenEnv observation (an env error, never a silent episode)."""


def _named(spec: str) -> Any:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"{spec!r}: write it as 'module:Name'")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load {spec!r}: {err}") from None


def _types_of(env_cls: type) -> tuple[type | None, type | None]:
    """The Action and Observation classes of `class MyEnv(Environment[MyAction, MyObservation, MyState])`."""
    for klass in env_cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(base)
            if len(args) >= 2 and all(isinstance(a, type) for a in args[:2]):
                return args[0], args[1]
    return None, None


class _LoopbackServer:
    """An OpenEnv Environment class served by openenv-core's create_app with uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, env_cls: type, action_cls: type, observation_cls: type, sessions: int = 1) -> None:
        import uvicorn
        from openenv.core.env_server.http_server import create_app

        app = create_app(env_cls, action_cls, observation_cls, max_concurrent_envs=sessions)
        self.shared = sessions > 1
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", ws_ping_interval=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="agentrl-openenv", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 30.0
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the OpenEnv server for {env_cls.__name__} did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


_SHARED: dict[str, _LoopbackServer] = {}  # one server per class and process for envs with concurrent sessions


def _serve(target: str, env_cls: type, action_cls: type, observation_cls: type) -> _LoopbackServer:
    """A loopback server for `env_cls`: one per process shared by every env copy when the class declares
    SUPPORTS_CONCURRENT_SESSIONS (each connection gets its own instance), else one per env copy."""
    if not getattr(env_cls, "SUPPORTS_CONCURRENT_SESSIONS", False):
        return _LoopbackServer(env_cls, action_cls, observation_cls, sessions=1)
    if target not in _SHARED:
        _SHARED[target] = _LoopbackServer(env_cls, action_cls, observation_cls, sessions=4096)
    return _SHARED[target]


async def _close(client: Any, wait_s: float = 2.0) -> None:
    """End a session as the protocol says: send `close`, let the server close its side (it destroys the session,
    then closes; closing first from here makes the server's own close fail loudly in its log), then close ours.
    Never raises: a connection that is already gone has nothing left to close."""
    ws, client._ws = client._ws, None
    if ws is None:
        return
    try:
        await ws.send(json.dumps({"type": "close"}))
        await asyncio.wait_for(ws.wait_closed(), wait_s)
    except Exception:  # gone, or the server did not close in time: close from this side
        pass
    try:
        await ws.close()
    except Exception:
        pass


class OpenEnvEnv(TextEnv):
    """An OpenEnv environment as an agentrl text env (module docstring)."""

    metadata = {"render_modes": [], "prompt_format": ChatPromptFormat, "requires": ("openenv",)}

    def __init__(
        self,
        target: str,
        action_field: str = "message",
        text_field: str | None = None,
        num_instances: int = 1000,
        pass_threshold: float = 1.0,
        system: str = "",
        connect_timeout_s: float = 30.0,
        message_timeout_s: float = 600.0,
        action_cls: str | None = None,
        observation_cls: str | None = None,
    ) -> None:
        super().__init__()
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        for name, value in (("connect_timeout_s", connect_timeout_s), ("message_timeout_s", message_timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        self.action_field, self.text_field, self.system = action_field, text_field, system
        self._num_instances = num_instances
        if not math.isfinite(pass_threshold):
            raise ValueError(f"pass_threshold must be a finite number, got {pass_threshold}")
        self.pass_threshold = float(pass_threshold)
        self._return = 0.0
        self.timeouts = (float(connect_timeout_s), float(message_timeout_s))
        self.server: _LoopbackServer | None = None
        if target.startswith(URL_SCHEMES):
            self.url = target
        else:
            env_cls = _named(target)
            found = _types_of(env_cls)
            act = _named(action_cls) if action_cls else found[0]
            obs = _named(observation_cls) if observation_cls else found[1]
            if act is None or obs is None:
                raise ValueError(
                    f"{target}: cannot tell its Action and Observation classes (declare the class as "
                    "Environment[MyAction, MyObservation, MyState], or pass action_cls and observation_cls)"
                )
            self.server = _serve(target, env_cls, act, obs)
            self.url = self.server.url
        # The socket's event loop runs in a thread of its own so that WebSocket pings are answered while the model
        # writes its reply (a server closes a connection whose pings go unanswered for ~40 s; a turn can take minutes)
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="agentrl-openenv-client", daemon=True)
        self._loop_thread.start()
        self._client: Any = None
        self._live = False
        self._instance = 0
        if self.server is None:  # a server of the user's: say now (before any weights load) when it cannot be reached
            try:
                self._connect()
            except ConnectionError as err:
                self.close()
                raise ValueError(f"cannot reach the OpenEnv server (is it running? is the url right?): {err}") from None
            self._drop()

    @property
    def num_instances(self) -> int:
        return self._num_instances

    def _connect(self) -> None:
        from openenv.core.generic_client import GenericEnvClient

        self._drop()
        connect_s, message_s = self.timeouts
        self._client = GenericEnvClient(self.url, connect_timeout_s=connect_s, message_timeout_s=message_s)
        self._run(self._client.connect())

    def _drop(self) -> None:
        """Close the connection (a fresh one is opened on the next reset)."""
        client, self._client = self._client, None
        if client is not None:
            self._run(_close(client))

    def _call(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One reset or step over the session's socket: the server's raw answer (`data`)."""
        client = self._client
        return self._run(client._send_and_receive({"type": kind, "data": payload})).get("data", {})

    def _run(self, coroutine: Any) -> Any:
        """Run `coroutine` on the socket's loop and wait for it (its own time-outs bound the wait)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _text(self, observation: dict[str, Any]) -> str:
        if self.text_field is not None:
            if self.text_field not in observation:
                raise OpenEnvProtocolError(
                    f"the observation has no field {self.text_field!r} (text_field); its fields: {sorted(observation)}"
                )
            value = observation[self.text_field]
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        texts = [v for v in observation.values() if isinstance(v, str)]
        if len(texts) == 1 and len(observation) == 1:
            return texts[0]
        return "\n".join(
            f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in observation.items()
        )

    def _parse(self, data: Any) -> tuple[str, float, bool]:
        """(text, reward, done) of a server answer; OpenEnvProtocolError naming what is malformed."""
        if not isinstance(data, dict):
            raise OpenEnvProtocolError(f"the server's answer is a {type(data).__name__}, not an object")
        observation, reward, done = data.get("observation"), data.get("reward"), data.get("done")
        if not isinstance(observation, dict):
            raise OpenEnvProtocolError(f"the observation is a {type(observation).__name__}, not an object")
        if reward is not None and (isinstance(reward, bool) or not isinstance(reward, int | float)):
            raise OpenEnvProtocolError(f"the reward {reward!r:.40} is a {type(reward).__name__}, not a number")
        if reward is not None and not math.isfinite(reward):
            raise OpenEnvProtocolError(f"the reward {reward} is not finite")
        if not isinstance(done, bool):
            raise OpenEnvProtocolError(f"'done' is {done!r:.40}, not true or false (an episode must be able to end)")
        return self._text(observation), float(reward or 0.0), done

    def _info(self, text: str, first: bool = False, **extra: Any) -> dict[str, Any]:
        messages = [{"role": "user", "content": text}]
        if first and self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        return empty_info(
            task=text if first else "",
            task_type="openenv",
            instance=f"seed-{self._instance}",
            messages=messages,
            **extra,
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._instance = self.pick_instance(options)
        self._connect()  # every episode on a fresh session: a dropped or timed-out socket is never reused
        try:
            text, _, done = self._parse(self._call("reset", {"seed": self._instance}))
        except Exception:
            self._drop()
            raise
        self._live, self._return = not done, 0.0
        return text, self._info(text, first=True)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self._live:
            raise RuntimeError("step() called after the episode ended; call reset()")
        try:
            data = self._call("step", {self.action_field: clean_text(action)})
        except (TimeoutError, asyncio.TimeoutError):
            return self._cut(f"the server did not answer within message_timeout_s={self.timeouts[1]:g}")
        except (ConnectionError, OSError) as err:
            return self._cut(f"connection lost: {err}")
        except Exception as err:
            if type(err).__module__.startswith("websockets"):  # closed by the server (code 1000 included)
                return self._cut(f"connection closed by the server: {err}")
            raise
        try:
            text, reward, done = self._parse(data)
        except OpenEnvProtocolError:
            self._live = False
            self._drop()
            raise
        self._live = not done
        self._return += reward
        return text, reward, done, False, self._info(text, won=done and self._return >= self.pass_threshold)

    def _cut(self, reason: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """The episode ends truncated with `reason`; the next reset connects afresh."""
        self._live = False
        self._drop()
        return "", 0.0, False, True, self._info("", truncation_reason=reason)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._drop()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=10)
            self._loop.close()
        if self.server is not None and not self.server.shared:  # a shared one serves the process's other copies
            self.server.close()
        self.server = None
