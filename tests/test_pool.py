"""EnvPool failure paths, for real: killed workers, hangs past the timeout, raising envs, clean shutdown."""

from __future__ import annotations

import functools
import os
import time

import pytest

from agentrl.envs import pool as pool_module
from agentrl.envs.pool import EnvPool, env_factory
from tests.faulty_env import FaultyEnv


@pytest.fixture
def pool():
    p = EnvPool(functools.partial(FaultyEnv), num_workers=2, timeout_s=3)
    yield p
    p.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_parallel_workers_and_ordering(pool):
    results = pool.reset([(s, s, {"instance": s % 4}) for s in range(4)])
    assert [r.observation for r in results] == [f"start {s % 4}" for s in range(4)]
    assert len({r.info["pid"] for r in results}) == 2  # two worker processes
    steps = pool.step([(s, f"a{s}") for s in range(4)])
    assert [r.observation for r in steps] == [f"echo a{s}" for s in range(4)]


def test_killed_worker_is_restarted_and_episode_truncated(pool):
    pool.reset([(s, 0, None) for s in range(4)])
    results = pool.step([(0, "crash"), (1, "fine"), (2, "fine"), (3, "fine")])
    assert results[0].truncated and "died" in results[0].error
    assert results[2].truncated  # slot 2 shares worker 0: its command was owed by the dead worker
    assert results[1].error is None and results[3].error is None
    assert pool.restarts == 1
    lost = pool.step([(2, "again")])[0]
    assert lost.truncated and "lost" in lost.error
    fresh = pool.reset([(0, 0, None), (2, 0, None)])
    assert all(r.error is None for r in fresh)


def test_external_kill_mid_episode(pool):
    pool.reset([(s, 0, None) for s in range(2)])
    os.kill(pool.worker_pids()[1], 9)
    results = pool.step([(0, "x"), (1, "y")])
    assert results[0].error is None
    assert results[1].truncated and "died" in results[1].error


def test_hang_past_timeout_is_restarted(pool):
    pool.reset([(0, 0, None), (1, 0, None)])
    old_pid = pool.worker_pids()[0]
    results = pool.step([(0, "hang"), (1, "ok")])
    assert results[0].truncated and "timed out" in results[0].error
    assert results[1].terminated and results[1].error is None
    assert pool.worker_pids()[0] != old_pid and not _alive(old_pid)


def test_raising_env_reports_and_keeps_worker(pool):
    pool.reset([(0, 0, None)])
    pid = pool.worker_pids()[0]
    result = pool.step([(0, "raise")])[0]
    assert result.truncated and "ValueError: boom" in result.error
    assert pool.worker_pids()[0] == pid and pool.restarts == 0


def test_clean_shutdown_leaves_no_processes():
    pool = EnvPool(functools.partial(FaultyEnv), num_workers=2, timeout_s=3)
    pool.reset([(0, 0, None), (1, 0, None)])
    pids = pool.worker_pids()
    pool.close()
    assert not any(_alive(pid) for pid in pids)


def test_in_process_mode_and_registered_factory():
    with EnvPool(env_factory("agentrl/CueBandit-v0"), num_workers=0) as pool:
        (r,) = pool.reset([(0, 1, {"instance": 5})])
        assert r.info["instance"] == "cue-5"
        answer = r.info["walkthrough"][0]
        (s,) = pool.step([(0, answer)])
        assert s.reward == 1.0 and s.terminated and s.info["won"]
    with EnvPool(functools.partial(FaultyEnv), num_workers=0) as pool:
        pool.reset([(0, 0, None)])
        assert "boom" in pool.step([(0, "raise")])[0].error


def test_restart_fails_commands_still_pending_on_that_worker(pool):
    pool.reset([(s, 0, None) for s in range(4)])
    first = pool.step_async([(0, "crash"), (1, "a")])
    second = pool.step_async([(2, "b"), (3, "c")])  # slot 2 lives on the worker that is about to die
    started = time.monotonic()
    r1, r2 = pool.collect(first), pool.collect(second)
    assert "died" in r1[0].error and r1[1].error is None
    assert "restarted before answering" in r2[0].error and r2[1].error is None
    assert time.monotonic() - started < pool.timeout_s  # no wait for an answer that will never come


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    ("action", "reason"),
    [
        ("exit", "sys.exit(0)"),
        ("bad info", "list info, not a dict"),
        ("bad actions", "admissible_actions that are not a list of strings"),
        ("bad obs", "bytes observation, not a str"),
        ("huge", "observation of 10000000 characters, over rollout.max_observation_chars=32768"),
        ("nan", "non-finite reward"),
    ],
)
def test_a_misbehaving_env_ends_its_episode_with_a_reason_and_the_pool_goes_on(workers, action, reason):
    with EnvPool(functools.partial(FaultyEnv), num_workers=workers, timeout_s=10) as p:
        p.reset([(s, 0, None) for s in range(2)])
        bad, good = p.step([(0, action), (1, "fine")])
        assert bad.truncated and reason in bad.error, bad.error
        assert good.error is None and good.observation == "echo fine"
        assert p.restarts == 0  # a contract breach ends the episode, not the worker
        again = p.reset([(0, 1, None)])[0]
        assert again.error is None and again.observation.startswith("start")


def test_a_leaking_env_hits_the_memory_cap_and_its_worker_is_restarted():
    with EnvPool(functools.partial(FaultyEnv), num_workers=1, timeout_s=30, memory_mb=512) as p:
        p.reset([(0, 0, None), (1, 0, None)])
        first = p.worker_pids()[0]
        leaked, other = p.step([(0, "leak"), (1, "fine")])
        assert leaked.truncated and "out of memory" in leaked.error
        assert other.truncated and "restarted" in other.error  # it shared the worker
        assert p.restarts == 1 and p.worker_pids()[0] != first
        fresh = p.reset([(0, 0, None)])[0]
        assert fresh.error is None


def test_processes_an_env_spawned_die_with_its_worker(tmp_path):
    marker = tmp_path / "child.pid"
    p = EnvPool(functools.partial(FaultyEnv), num_workers=1, timeout_s=10)
    p.reset([(0, 0, None)])
    assert p.step([(0, f"spawn {marker}")])[0].error is None
    child = int(marker.read_text())
    assert _alive(child)
    p.step([(0, "crash")])  # the worker dies; the pool restarts it and must take the orphan down with it
    deadline = time.time() + 10
    while _alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    p.reset([(0, 0, None)])
    assert p.step([(0, f"spawn {marker}")])[0].error is None
    second = int(marker.read_text())
    p.close()  # a clean shutdown also kills what the envs spawned
    deadline = time.time() + 10
    while _alive(second) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(second)


def _gone(pids: list[int], seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def test_a_setsid_process_an_env_spawned_dies_with_its_worker(tmp_path):
    """A process the env started in a session of its own (setsid) leaves the worker's process group; killing the
    group missed it. The worker's whole tree goes, on a restart and on close."""
    marker = tmp_path / "child.pid"
    p = EnvPool(functools.partial(FaultyEnv), num_workers=1, timeout_s=10)
    try:
        p.reset([(0, 0, None)])
        assert p.step([(0, f"setsid {marker}")])[0].error is None
        child = int(marker.read_text())
        assert _alive(child) and os.getsid(child) == child
        p.step([(0, "crash")])
        assert _gone([child])
        p.reset([(0, 0, None)])
        assert p.step([(0, f"setsid {marker}")])[0].error is None
        second = int(marker.read_text())
    finally:
        p.close()
    assert _gone([second])


PARENT = """
import functools, sys, time
sys.path.insert(0, {root!r})
from agentrl.envs.pool import EnvPool
from tests.faulty_env import FaultyEnv
p = EnvPool(functools.partial(FaultyEnv), num_workers=2, timeout_s=10)
p.reset([(0, 0, None), (1, 0, None)])
p.step([(0, "spawn {marker}0"), (1, "setsid {marker}1")])
print(" ".join(map(str, p.worker_pids() + [w.process.pid for w in p._workers])), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_workers_and_what_they_spawned_die_with_a_killed_parent(tmp_path, how):
    """SIGKILL or SIGTERM of the process that owns the pool (no cleanup runs in it) leaves no env worker and no
    process an env spawned behind: each worker gets a parent-death signal and kills its tree."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    code = PARENT.format(root=root, marker=tmp_path / "child")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        children = [int((tmp_path / f"child{i}").read_text()) for i in range(2)]
        assert len(workers) == 4 and all(_alive(pid) for pid in workers + children)
        parent.send_signal(getattr(signal, how))
        parent.wait(timeout=30)
        assert _gone(workers + children), [pid for pid in workers + children if _alive(pid)]
    finally:
        parent.kill()


def test_won_must_be_a_bool(pool):
    """info["won"] = "False" once counted as a win (100% success with reward 0)."""
    pool.reset([(0, 0, None)])
    result = pool.step([(0, "won string")])[0]
    assert result.truncated and "info['won']" in result.error and "str" in result.error


def test_oversized_info_is_cut_down_with_a_warning():
    """A 10 MB task or 300,000 admissible actions once stalled every rollout: cut down in the env's process."""
    with EnvPool(functools.partial(FaultyEnv), num_workers=0, timeout_s=30, max_observation_chars=1000) as p:
        p.reset([(s, 0, None) for s in range(3)])
        with pytest.warns(UserWarning, match="env info cut down"):
            huge, many, long = p.step([(0, "huge task"), (1, "many actions"), (2, "long action")])
    assert huge.error is None and len(huge.info["task"]) == 1000 and huge.info["admissible_actions"] == ["look"]
    assert many.error is None and len(many.info["admissible_actions"]) == pool_module.MAX_ADMISSIBLE
    assert many.info["admissible_actions"][:2] == ["go to 0", "go to 1"]
    assert long.error is None and long.info["admissible_actions"] == ["look"]


def test_in_process_envs_are_guarded_against_hangs_and_os_exit():
    """rollout.num_workers=0: a hanging step ends its episode at the time limit and os._exit in the env ends the
    episode, not the trainer (it once exited with rc 7 and no message); the pool goes on."""
    with EnvPool(functools.partial(FaultyEnv), num_workers=0, timeout_s=1) as p:
        p.reset([(0, 0, None), (1, 0, None)])
        started = time.monotonic()
        hung, crashed = p.step([(0, "hang"), (1, "crash")])
        assert time.monotonic() - started < 10
        assert hung.truncated and "env_timeout_s=1" in hung.error
        assert crashed.truncated and "os._exit(3)" in crashed.error
        assert os._exit is pool_module._REAL_EXIT  # disarmed only during the env's own call
        again = p.reset([(0, 0, None), (1, 0, None)])
        assert all(r.error is None for r in again)
        assert [r.observation for r in p.step([(0, "a"), (1, "b")])] == ["echo a", "echo b"]


def test_an_env_whose_close_raises_is_one_warning_not_a_traceback():
    p = EnvPool(functools.partial(FaultyEnv, close_raises=True), num_workers=0, timeout_s=5)
    p.reset([(0, 0, None), (1, 0, None)])
    with pytest.warns(UserWarning, match="env of slot 0: close\\(\\) raised RuntimeError: close failed"):
        p.close()
