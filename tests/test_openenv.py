"""OpenEnv adapter (env.id=openenv:<url> and openenv:<module>:<Class>): episodes over the real openenv-core server on
loopback, dropped, closed and timed-out connections truncate their episode and the next one connects afresh,
malformed answers are env errors, and a tiny model learns a CueBandit-like task served this way."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from agentrl import envs
from agentrl.config import load_config
from agentrl.envs.pool import EnvPool, env_factory
from agentrl.errors import ConfigError

SERVED = "openenv:tests.openenv_cue:CueEnvironment"


@pytest.fixture(scope="module")
def faulty_url():
    import uvicorn

    from tests.openenv_cue import faulty_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # pings every 0.2 s, answered within 0.2 s or the server closes the connection (uvicorn's default: 20 s each)
    config = uvicorn.Config(
        faulty_app(), log_level="warning", lifespan="off", ws_ping_interval=0.2, ws_ping_timeout=0.2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def test_a_served_class_plays_episodes_over_one_session_each():
    env = envs.make_env("openenv:tests.openenv_cue:TwoCues", num_instances=8, system="Answer with one word.")
    obs, info = env.reset(options={"instance": 1})  # cues "down", then "up"
    assert obs == "Cue: down. Which word goes with this cue? Choices: up, down, left, right."  # its one text field
    assert info["messages"][0] == {"role": "system", "content": "Answer with one word."}
    obs, reward, terminated, truncated, info = env.step("down")
    assert (reward, terminated, truncated) == (0.5, False, False) and "Correct. Cue: up." in obs
    assert info["messages"] == [{"role": "user", "content": obs}]
    _, reward, terminated, _, info = env.step("left")
    assert (reward, terminated, info["won"]) == (0.0, True, False)  # a return of 0.5, under pass_threshold (1.0)
    env.reset(options={"instance": 1})
    assert [env.step(word)[4]["won"] for word in ("down", "up")] == [False, True]  # both right: won when it ends
    env.reset(options={"instance": 2})  # the next episode: a fresh session on the same server
    assert env.step("left")[1] == 0.5
    env.close()


def test_dropped_closed_and_timed_out_connections_truncate_the_episode_and_the_next_connects_afresh(faulty_url):
    pool = EnvPool(env_factory(f"openenv:{faulty_url}", num_instances=8, message_timeout_s=1.0), num_workers=0)
    for seed, reason in ((1, "closed by the server"), (6, "closed by the server"), (2, "message_timeout_s=1")):
        pool.reset([(0, None, {"instance": seed})])
        started = time.perf_counter()
        [result] = pool.step([(0, "hello")])
        assert result.truncated and not result.terminated and result.error is None
        assert reason in result.info["truncation_reason"], result.info
        assert time.perf_counter() - started < 10
        [again] = pool.reset([(0, None, {"instance": 0})])  # a fresh connection: the next episode plays normally
        assert again.error is None and again.observation == "episode 0"
        time.sleep(1.0)  # the model thinks for a while: the client answers the server's pings meanwhile
        [done] = pool.step([(0, "hi")])
        assert (done.reward, done.terminated, done.observation) == (1.0, True, "ok")
    pool.close()


@pytest.mark.parametrize(
    "seed, problem", [(3, "not a number"), (4, "'done' is None"), (5, "not an object")], ids=["reward", "done", "obs"]
)
def test_malformed_answers_are_env_errors_with_a_clear_message(faulty_url, seed, problem):
    pool = EnvPool(env_factory(f"openenv:{faulty_url}", num_instances=8), num_workers=0)
    pool.reset([(0, None, {"instance": seed})])
    [result] = pool.step([(0, "hello")])
    assert result.error is not None and problem in result.error and result.truncated
    [again] = pool.reset([(0, None, {"instance": 0})])
    assert again.error is None
    pool.close()


def test_openenv_ids_are_checked_before_anything_runs():
    assert envs.hub_module("openenv:http://127.0.0.1:8000") is None
    assert envs.hub_module(SERVED) == "tests.openenv_cue"
    with pytest.raises(ConfigError, match="cannot load"):
        envs.probe_env("openenv:tests.openenv_cue:NoSuchEnvironment", {})
    with pytest.raises(ConfigError, match="Action and Observation"):
        envs.probe_env("openenv:tests.openenv_cue:Environment", {})
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # a port nothing listens on
    with pytest.raises(ConfigError, match="cannot reach the OpenEnv server"):
        envs.probe_env(f"openenv:http://127.0.0.1:{closed.getsockname()[1]}", {"connect_timeout_s": 5})
    closed.close()


def test_tiny_model_learns_a_task_served_by_openenv(tmp_path):
    """CueBandit's task (2 cues an episode, won with one right) as an OpenEnv Environment served on loopback by the
    real openenv-core server, set as the verifiers learning test is: greedy panel success rises by at least 40
    points."""
    from agentrl import trainer as trainer_module

    cfg = load_config(
        ["experiment=cuebandit", "env.id=openenv:tests.openenv_cue:TwoCues", f"trainer.run_dir={tmp_path}"]
        + ["+env.kwargs.num_instances=64", "+env.kwargs.pass_threshold=0.5", "+env.kwargs.system=Answer with one word."]
        + ["rollout.max_turns=2", "rollout.eval_max_turns=2", "rollout.max_new_tokens=3"]
        + ["trainer.random_baseline_seeds=0", "env.eval_instances=16", "trainer.iterations=25", "trainer.eval_every=25"]
    )
    result = trainer_module.train(cfg)
    before, after = result["before"]["eval/panel/success"], result["after"]["eval/panel/success"]
    assert after - before >= 0.4, (before, after)
