"""EnvPool failure paths, for real: killed workers, hangs past the timeout, raising envs, clean shutdown."""

from __future__ import annotations

import functools
import os
import time

import pytest

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
