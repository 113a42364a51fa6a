"""EnvPool: many env copies in worker processes, with per-call timeouts and automatic restart.

Each episode of a rollout owns a slot; slot s lives in worker s % num_workers. Commands for one call are sent to
every worker before any answer is read, so workers step their envs in parallel. A worker that dies or exceeds the
per-command timeout is killed and restarted; the commands it owed come back as StepResult(error=…) with
truncated=True, and its other slots report "env lost" on their next call. No exception reaches the caller for an
env failure. `num_workers=0` runs everything in-process (debugging); env exceptions are still turned into results.

Misbehaving envs end their episode with a reason and the run goes on: an exception or `sys.exit` inside the env,
an observation that is not a string or is longer than `max_observation_chars` (checked before anything tokenises
it), an `info` that is not a dict, admissible actions that are not a list of strings, a `won` that is not a bool, a
non-finite reward. Oversized `info` text (a task longer than `max_observation_chars`, more than MAX_ADMISSIBLE
admissible actions, one longer than MAX_ACTION_CHARS) is cut down with a warning. Each worker is its own process
group with an address-space cap (`memory_mb` above what it had at start): a leaking env hits MemoryError, its worker
answers, exits and is restarted. Workers die with the process that started them however it dies (Linux: a
parent-death signal, elsewhere a watchdog on the parent), and take every process their envs spawned with them —
their process group and, as the subreaper of their envs' descendants, processes that left it with `setsid`.

In-process (`num_workers=0`) the same checks apply and two guards hold: a step that runs past `timeout_s` is
interrupted (a signal to the main thread; a call blocked inside C code that never returns to Python is not), and
`os._exit` from the env ends the episode instead of the trainer. What in-process mode gives up: the memory cap, a
hard crash of the interpreter (a segfault) or a hang in C code, and cleanup of processes the env spawned.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing as mp
import os
import resource
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from agentrl.envs import make_env
from agentrl.envs.tools import check_messages, check_tools
from agentrl.processes import PR_SET_CHILD_SUBREAPER, PR_SET_PDEATHSIG, kill_tree, prctl

EnvFactory = Callable[[], gym.Env]

_REAL_EXIT = os._exit
MAX_ADMISSIBLE = 4096  # admissible actions kept per step; the rest are dropped with a warning
MAX_ACTION_CHARS = 2048  # a longer admissible action is dropped with a warning (no reply could name it usefully)


@dataclass
class StepResult:
    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # set when the env raised, hung or its worker died; the episode is then truncated
    elapsed_s: float = 0.0  # time the env spent on this command (in its worker)
    restart_worker: bool = False  # the worker is unusable after this (out of memory): restart it

    @classmethod
    def failed(cls, reason: str) -> StepResult:
        return cls(observation="", truncated=True, error=reason)


def env_factory(env_id: str, **kwargs: Any) -> EnvFactory:
    """A picklable factory for a registered env id."""
    return functools.partial(make_env, env_id, **kwargs)


@dataclass
class Pending:
    """Commands sent to workers whose answers have not been read yet."""

    results: list[StepResult | None]
    owed: dict[int, list[int]] = field(default_factory=dict)  # worker → command indices, in send order
    generation: dict[int, int] = field(default_factory=dict)  # worker → its restart count when the commands went out


class EnvInterrupted(BaseException):
    """Raised inside an in-process env call by its guard (a BaseException: an env's `except Exception` keeps it)."""


class SlotEnvs:
    """The envs of one worker (or of the in-process pool), one per slot, created on first reset. `guard_s`: the
    in-process guard's time limit per call (None in a worker, whose pool enforces the limit by killing it)."""

    def __init__(self, factory: EnvFactory, max_observation_chars: int = 32_768, guard_s: float | None = None):
        self.factory, self.max_observation_chars, self.guard_s = factory, max_observation_chars, guard_s
        self.envs: dict[int, gym.Env] = {}

    def run(self, command: str, slot: int, arg: Any) -> StepResult:
        started = time.perf_counter()
        if self.guard_s is None:
            result = self._run(command, slot, arg)
        else:
            try:
                with guarded(self.guard_s):
                    result = self._run(command, slot, arg)
            except EnvInterrupted as stop:  # raised after _run returned, before the guard was lifted
                self.envs.pop(slot, None)
                result = StepResult.failed(f"env {stop} during {command}")
        result.elapsed_s = time.perf_counter() - started
        return result

    def _run(self, command: str, slot: int, arg: Any) -> StepResult:
        try:
            if command == "reset":
                env = self.envs.get(slot)
                if env is None:
                    env = self.envs[slot] = self.factory()
                seed, options = arg
                obs, info = env.reset(seed=seed, options=options)
                return self._checked(StepResult(obs, info=info), command)
            env = self.envs.get(slot)
            if env is None:
                return StepResult.failed(f"env of slot {slot} lost (its worker was restarted); reset it")
            obs, reward, terminated, truncated, info = env.step(arg)
            return self._checked(StepResult(obs, float(reward), bool(terminated), bool(truncated), info), command)
        except MemoryError:
            self.envs.pop(slot, None)
            result = StepResult.failed(f"env ran out of memory during {command} (its worker is restarted)")
            result.restart_worker = True
            return result
        except SystemExit as exit_:
            self.envs.pop(slot, None)
            return StepResult.failed(f"env called sys.exit({exit_.code!r}) during {command}")
        except EnvInterrupted as stop:  # in-process guard: a timeout or os._exit
            self.envs.pop(slot, None)
            return StepResult.failed(f"env {stop} during {command}")
        except Exception:
            return StepResult.failed(f"env raised during {command}:\n{traceback.format_exc(limit=6)}")

    def _checked(self, result: StepResult, command: str) -> StepResult:
        """The result, or a failure naming the contract the env broke (DESIGN.md: str observation, dict info)."""
        obs, info = result.observation, result.info
        if not isinstance(obs, str):
            return StepResult.failed(f"env {command} returned a {type(obs).__name__} observation, not a str")
        if len(obs) > self.max_observation_chars:
            return StepResult.failed(
                f"env {command} returned an observation of {len(obs)} characters, over "
                f"rollout.max_observation_chars={self.max_observation_chars}"
            )
        if not isinstance(info, dict):
            return StepResult.failed(f"env {command} returned a {type(info).__name__} info, not a dict")
        admissible = info.get("admissible_actions")
        if admissible is not None and (
            not isinstance(admissible, list | tuple) or not all(isinstance(a, str) for a in admissible)
        ):
            return StepResult.failed(f"env {command} returned admissible_actions that are not a list of strings")
        won = info.get("won", False)
        if not isinstance(won, bool) and type(won).__name__ != "bool_":  # numpy's bool is fine; "False" is not
            return StepResult.failed(
                f"env {command} returned info['won'] = {won!r:.40} (a {type(won).__name__}), not a bool"
            )
        if not math.isfinite(result.reward):
            return StepResult.failed(f"env {command} returned a non-finite reward {result.reward}")
        if problem := self._chat_problem(info):
            return StepResult.failed(f"env {command}: {problem}")
        result.info = capped_info(info, self.max_observation_chars)
        return result

    def _chat_problem(self, info: dict[str, Any]) -> str | None:
        """Why a chat env's info["messages"] / info["tools"] (envs/tools.py) break the contract, or are longer
        together than max_observation_chars (as an observation would be); None when they are fine."""
        messages, tools = info.get("messages"), info.get("tools")
        problem = None if messages is None else check_messages(messages)
        problem = problem or (None if tools is None else check_tools(tools))
        if problem is None and messages is not None:
            size = sum(len(m["content"]) for m in messages) + (len(json.dumps(tools)) if tools else 0)
            if size > self.max_observation_chars:
                problem = (
                    f"its messages and tools hold {size} characters, over "
                    f"rollout.max_observation_chars={self.max_observation_chars}"
                )
        return problem

    def close(self) -> None:
        for slot, env in self.envs.items():
            try:
                env.close()
            except Exception as err:  # closing is best effort: say what failed, in one line, and close the rest
                warnings.warn(f"env of slot {slot}: close() raised {type(err).__name__}: {err}"[:500], stacklevel=2)
        self.envs.clear()


def capped_info(info: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """`info` with every text value cut to `max_chars` and the admissible actions to MAX_ADMISSIBLE of at most
    MAX_ACTION_CHARS characters, with a warning naming what was cut (a 10 MB task would otherwise be tokenised into
    every prompt of the episode). An info within the limits is returned as it is."""
    cut: list[str] = []
    out = dict(info)
    for key, value in info.items():
        if isinstance(value, str) and len(value) > max_chars:
            out[key] = value[:max_chars]
            cut.append(f"info[{key!r}] from {len(value)} to {max_chars} characters")
    admissible = info.get("admissible_actions")
    if admissible is not None:
        kept = [a for a in admissible if len(a) <= MAX_ACTION_CHARS]
        if len(kept) < len(admissible):
            cut.append(f"{len(admissible) - len(kept)} admissible actions longer than {MAX_ACTION_CHARS} characters")
        if len(kept) > MAX_ADMISSIBLE:
            cut.append(f"admissible actions from {len(kept)} to the first {MAX_ADMISSIBLE}")
            kept = kept[:MAX_ADMISSIBLE]
        if len(kept) < len(admissible):
            out["admissible_actions"] = kept
    if cut:
        warnings.warn("env info cut down: " + "; ".join(cut), stacklevel=2)
    return out


class _Watchdog:
    """One thread that sends SIGUSR2 to the main thread when an armed deadline passes (a thread per call cost
    ~270 µs; arming this one costs a few)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():  # (a forked child has no thread: start one)
                self._thread = threading.Thread(target=self._watch, name="agentrl-env-watchdog", daemon=True)
                self._thread.start()
            self._deadline = time.monotonic() + seconds
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def _watch(self) -> None:
        main = threading.main_thread().ident
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                elif time.monotonic() >= self._deadline:
                    self._deadline = None
                    signal.pthread_kill(main, signal.SIGUSR2)
                else:
                    self._cond.wait(self._deadline - time.monotonic())


_WATCHDOG = _Watchdog()


_GUARD: dict[str, Any] = {"message": None, "previous": None}  # the armed guard's message; SIGUSR2's prior handler


def _on_sigusr2(signum: int, frame: Any) -> None:
    """Installed once and kept: a signal that lands after the guarded call returned finds no message and is passed
    to the handler that was there before (restoring the default could kill the process on a late signal)."""
    message = _GUARD["message"]
    if message is not None:
        raise EnvInterrupted(message)
    if callable(_GUARD["previous"]):
        _GUARD["previous"](signum, frame)


@contextlib.contextmanager
def guarded(seconds: float, limit_name: str = "rollout.env_timeout_s") -> Iterator[None]:
    """An in-process env call under a time limit and with os._exit disarmed: past `seconds` the main thread gets
    SIGUSR2, whose handler raises EnvInterrupted (off the main thread, no time limit: signals reach only it). Also
    for the envs agentrl makes in its own process: config checks, scripted agents' panels."""
    real_exit = os._exit

    def refuse_exit(code: int) -> None:
        raise EnvInterrupted(f"called os._exit({code})")

    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "pthread_kill")
    if timed and _GUARD["message"] is not None:  # inside another guard: its limit holds
        yield
        return
    if timed and signal.getsignal(signal.SIGUSR2) is not _on_sigusr2:
        _GUARD["previous"] = signal.signal(signal.SIGUSR2, _on_sigusr2)
    os._exit = refuse_exit  # type: ignore[assignment]
    if timed:
        _GUARD["message"] = f"ran past {limit_name}={seconds:g}s"
        _WATCHDOG.arm(seconds)
    try:
        yield
    finally:
        os._exit = real_exit
        if timed:
            _WATCHDOG.disarm()
            _GUARD["message"] = None


def _die_with_parent(parent: int) -> None:
    """This process ends, taking its whole tree with it, when `parent` dies, however it dies (SIGKILL included):
    Linux's parent-death signal (SIGTERM, handled here) and, everywhere, a thread watching the parent."""

    def end(signum: int = 0, frame: Any = None) -> None:
        kill_tree(os.getpid(), None)
        os._exit(0)

    signal.signal(signal.SIGTERM, end)
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        end()

    threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        end()


def _keep(worker: int, parent: int) -> None:
    """The keeper: the process the pool started, which runs no env code. It is the subreaper of its worker's tree
    (a process an env spawned, even with setsid or a double fork, stays in it), and when the worker exits or crashes
    it kills what is left of the tree and exits with the worker's code. Never returns."""
    _die_with_parent(parent)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    _, status = os.waitpid(worker, 0)
    kill_tree(os.getpid(), None)
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, 0)[0]:  # reap the orphans just killed
            pass
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit_memory(memory_mb: int) -> None:
    """Cap this process's address space at what it has now plus `memory_mb` (Linux; elsewhere a no-op)."""
    if memory_mb <= 0 or not os.path.exists("/proc/self/statm"):
        return
    cap = _address_space() + memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))


def _worker_main(conn: Any, factory: EnvFactory, max_observation_chars: int, memory_mb: int, parent: int) -> None:
    os.setpgrp()  # its own process group: killing the worker kills what its envs spawned
    keeper = os.getpid()
    worker = os.fork()  # the env code runs in the child; this process keeps its tree (see _keep)
    if worker:
        conn.close()
        _keep(worker, parent)
    _die_with_parent(keeper)
    conn.send(os.getpid())  # the pool's handle on the process that runs the envs
    _limit_memory(memory_mb)
    slots = SlotEnvs(factory, max_observation_chars)
    try:
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            command, slot, arg = message
            result = slots.run(command, slot, arg)
            conn.send(result)
            if result.restart_worker:
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        slots.close()
        kill_tree(os.getpid(), None)  # processes the envs left behind, setsid'd ones included


class _Worker:
    def __init__(self, ctx: Any, factory: EnvFactory, max_observation_chars: int, memory_mb: int):
        self.conn, child = ctx.Pipe()
        args = (child, factory, max_observation_chars, memory_mb, os.getpid())
        self.process = ctx.Process(target=_worker_main, args=args, daemon=True)
        self.process.start()  # the keeper; it forks the worker, which says its pid first
        child.close()
        self.pid = self.process.pid
        with contextlib.suppress(EOFError, OSError):  # a worker that died at birth is found dead on first use
            self.pid = self.conn.recv() if self.conn.poll(60) else self.pid

    def kill(self) -> None:
        """Kill the worker, every process in its group and every descendant (what its envs spawned)."""
        kill_tree(self.process.pid, self.process.pid)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


class EnvPool:
    def __init__(
        self,
        factory: EnvFactory,
        num_workers: int = 2,
        timeout_s: float = 60.0,
        start_method: str = "fork",  # env workers never touch torch; spawn would re-import a user's __main__
        *,
        max_observation_chars: int = 32_768,
        memory_mb: int = 8192,  # per worker, above its size at start; 0: no cap
    ):
        self.factory, self.num_workers, self.timeout_s = factory, num_workers, timeout_s
        self.max_observation_chars, self.memory_mb = max_observation_chars, memory_mb
        self.restarts = 0
        self._local = SlotEnvs(factory, max_observation_chars, guard_s=timeout_s) if num_workers == 0 else None
        self._ctx = mp.get_context(start_method)
        self._workers = [self._new_worker() for _ in range(num_workers)]
        self._generation = [0] * num_workers

    def reset(self, requests: Sequence[tuple[int, int | None, dict[str, Any] | None]]) -> list[StepResult]:
        """requests: (slot, seed, options) → one StepResult per request, in order."""
        return self.collect(self.submit([("reset", slot, (seed, options)) for slot, seed, options in requests]))

    def step(self, requests: Sequence[tuple[int, str]]) -> list[StepResult]:
        """requests: (slot, action) → one StepResult per request, in order."""
        return self.collect(self.step_async(requests))

    def step_async(self, requests: Sequence[tuple[int, str]]) -> Pending:
        """Send steps to the workers and return at once; `collect` the results later (overlap with generation)."""
        return self.submit([("step", slot, action) for slot, action in requests])

    def submit(self, commands: list[tuple[str, int, Any]]) -> Pending:
        pending = Pending([None] * len(commands))
        if self._local is not None:
            pending.results = [self._local.run(*c) for c in commands]
            return pending
        for i, (command, slot, arg) in enumerate(commands):
            w = slot % self.num_workers
            try:
                self._workers[w].conn.send((command, slot, arg))
                pending.owed.setdefault(w, []).append(i)
                pending.generation[w] = self._generation[w]
            except (BrokenPipeError, OSError) as err:
                pending.results[i] = StepResult.failed(f"env worker {w} unreachable: {err}")
                self._restart(w)
        return pending

    def collect(self, pending: Pending) -> list[StepResult]:
        results = pending.results
        for w, indices in pending.owed.items():
            if pending.generation[w] != self._generation[w]:  # the worker that owed these was restarted meanwhile
                for i in indices:
                    results[i] = StepResult.failed(f"env worker {w} was restarted before answering")
                continue
            for k, i in enumerate(indices):
                reason = self._receive(w)
                if isinstance(reason, StepResult):
                    results[i] = reason
                    if not reason.restart_worker:
                        continue
                    reason = f"env worker {w} was restarted (out of memory) before answering"
                    k += 1
                for j in indices[k:]:
                    results[j] = StepResult.failed(reason)
                self._restart(w)
                break
        pending.owed = {}
        return [r if r is not None else StepResult.failed("no result") for r in results]

    def _receive(self, w: int) -> StepResult | str:
        worker = self._workers[w]
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                if worker.conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                    return worker.conn.recv()
            except (EOFError, OSError):
                worker.process.join(timeout=2)  # its keeper exits with the worker's code once the tree is gone
                return f"env worker {w} died (exit code {worker.process.exitcode})"
            if not worker.process.is_alive():
                return f"env worker {w} died (exit code {worker.process.exitcode})"
            if time.monotonic() >= deadline:
                return f"env worker {w} timed out after {self.timeout_s:.0f}s"

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self.factory, self.max_observation_chars, self.memory_mb)

    def _restart(self, w: int) -> None:
        self._workers[w].kill()
        self._workers[w] = self._new_worker()
        self._generation[w] += 1
        self.restarts += 1

    def worker_pids(self) -> list[int]:
        """The processes that run the envs (each under a keeper process, the pool's child)."""
        return [w.pid for w in self._workers]

    def close(self) -> None:
        if self._local is not None:
            self._local.close()
        for worker in self._workers:
            try:
                worker.conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            worker.process.join(timeout=5)
            worker.kill()
        self._workers = []

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
