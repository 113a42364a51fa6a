"""Run directories and checkpoints under misuse: locks, fresh runs over old ones, config changes on resume,
damaged checkpoints and logs, diverging weights, Ctrl-C. Each case failed (lost or mixed a run) before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agentrl import lifecycle
from agentrl import trainer as trainer_module
from agentrl.checkpoint import list_checkpoints
from agentrl.config import config_dict, load_config, resume_changes
from agentrl.errors import ConfigError
from agentrl.learner import Learner
from agentrl.metrics import read_metrics
from agentrl.rundir import RunLock

ROOT = Path(__file__).resolve().parents[1]


def _cfg(run_dir: Path, *extra: str):
    return load_config(
        [
            "experiment=cuebandit",
            f"trainer.run_dir={run_dir}",
            "trainer.iterations=4",
            "trainer.checkpoint_every=2",
            "trainer.eval_every=2",
            "trainer.keep_checkpoints=5",
            "trainer.progress=false",
            *extra,
        ]
    )


def _weights(run_dir: Path, iteration: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / f"iter-{iteration:06d}" / "model" / "model.safetensors")


def test_a_second_run_in_a_locked_directory_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
            trainer_module.train(_cfg(tmp_path, "trainer.resume=auto"))
    assert not (tmp_path / ".lock").exists()  # released on exit
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match="stale lock"):
        trainer_module.train(_cfg(tmp_path))
    assert not (tmp_path / ".lock").exists()


def _race_for_the_lock(run_dir: str, start, wins) -> None:
    import warnings

    warnings.simplefilter("ignore")
    lock = RunLock(Path(run_dir))
    start.wait()
    try:
        lock.acquire()
    except ConfigError:
        return
    with wins.get_lock():
        wins.value += 1
    time.sleep(0.3)  # held while the others try
    lock.release()


def test_a_stale_lock_is_taken_over_by_exactly_one_of_many(tmp_path):
    """Processes that find the same dead lock once both took it over (12 of 40 trials with two): exactly one wins."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for trial in range(10):
        (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
        start, wins = ctx.Barrier(4), ctx.Value("i", 0)
        racers = [ctx.Process(target=_race_for_the_lock, args=(str(tmp_path), start, wins)) for _ in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        assert wins.value == 1, (trial, wins.value)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombie detection reads /proc (Linux)")
def test_a_lock_held_by_a_killed_but_unreaped_process_is_stale(tmp_path):
    """A torchrun rank killed together with its launcher stays a zombie until init reaps it; its lock is stale."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while time.time() < deadline:  # exited, not reaped: Popen has not waited for it
        stat = Path(f"/proc/{zombie.pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the child did not exit")
    (tmp_path / ".lock").write_text(json.dumps({"pid": zombie.pid, "host": os.uname().nodename}))
    with pytest.warns(UserWarning, match="stale lock"):
        RunLock(tmp_path).acquire()
    zombie.wait()


def test_a_fresh_run_never_destroys_an_existing_one(tmp_path):
    trainer_module.train(_cfg(tmp_path))
    before = {p.name for p in list_checkpoints(tmp_path)}
    assert before == {"iter-000002", "iter-000004"}
    with pytest.raises(ConfigError, match="already holds a run .*trainer.resume=auto.*trainer.overwrite=true"):
        trainer_module.train(_cfg(tmp_path))
    assert {p.name for p in list_checkpoints(tmp_path)} == before and read_metrics(tmp_path)
    (tmp_path / "checkpoints" / ".tmp-iter-000006-123").mkdir()  # left by a write that was killed
    trainer_module.train(_cfg(tmp_path, "trainer.overwrite=true", "trainer.iterations=2", "trainer.keep_checkpoints=1"))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter-000002"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_pruning_never_deletes_checkpoints_newer_than_the_one_just_written(tmp_path):
    from agentrl.checkpoint import save_checkpoint
    from tests.conftest import make_tiny

    model, tok = make_tiny()
    for it in (10, 20):
        save_checkpoint(tmp_path, it, model, tok, {"learner": {}}, keep=1)
    save_checkpoint(tmp_path, 3, model, tok, {"learner": {}}, keep=1)  # e.g. an older run's folder reused
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter-000003", "iter-000020"]


def test_resume_refuses_changes_that_mix_runs_and_applies_a_new_learning_rate(tmp_path):
    trainer_module.train(_cfg(tmp_path, "trainer.iterations=2"))
    saved = json.loads((tmp_path / "checkpoints" / "iter-000002" / "config.json").read_text())
    assert saved["algo"]["loss"] == "holder_seq" and (tmp_path / "config.yaml").exists()
    with pytest.raises(ConfigError) as err:
        trainer_module.train(_cfg(tmp_path, "trainer.resume=auto", "trainer.seed=7", "algo=grpo"))
    message = str(err.value)
    assert "trainer.seed: 0 → 7" in message and "algo.loss: 'holder_seq' → 'grpo'" in message
    with pytest.raises(ConfigError, match="p schedule spans trainer.iterations; set algo.p_schedule_steps=2"):
        trainer_module.train(_cfg(tmp_path, "trainer.resume=auto", "trainer.iterations=4"))
    seen = {}
    original = Learner.load_state_dict

    def spy(self, state):
        original(self, state)
        seen["lr"] = [g["lr"] for g in self.optimizer.param_groups]

    Learner.load_state_dict = spy
    try:
        trainer_module.train(
            _cfg(tmp_path, "trainer.resume=auto", "trainer.iterations=4", "algo.p_schedule_steps=2", "learner.lr=1e-4")
        )
    finally:
        Learner.load_state_dict = original
    assert seen["lr"] and all(lr == 1e-4 for lr in seen["lr"])  # the new lr took effect, not the saved one


def test_adaptive_p_resumes_the_same_p_sequence_and_weights(tmp_path):
    """algo.p_schedule=adaptive: the controller's state is in each checkpoint, so a run resumed after iteration 2
    (its newer checkpoint gone, as after a crash) sets the same p for iterations 3 and 4 and ends with the same
    weights as the run that went through; a longer resumed run does not re-time anything."""
    import shutil

    adaptive = ["algo.p_schedule=adaptive", "algo.adaptive.rule=ess", "algo.adaptive.ess_target=0.99"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    trainer_module.train(_cfg(full, *adaptive))
    trained = read_metrics(full)
    p = [r["train/p"] for r in trained if r["kind"] == "train"]
    assert p[0] == 1.0 and len(set(p)) == 4, p  # it moved every update
    assert all(r["p_control/next_p"] == q for r, q in zip([r for r in trained if r["kind"] == "train"], p[1:]))
    trainer_module.train(_cfg(cut, *adaptive, "trainer.iterations=2"))
    trainer_module.train(_cfg(cut, *adaptive, "trainer.resume=auto"))  # iterations 2 → 4: allowed for adaptive p
    resumed = [r["train/p"] for r in read_metrics(cut) if r["kind"] == "train"]
    assert resumed == p
    assert all(torch.equal(a, b) for a, b in zip(_weights(full, 4).values(), _weights(cut, 4).values()))
    shutil.rmtree(cut / "checkpoints" / "iter-000004")
    trainer_module.train(_cfg(cut, *adaptive, "trainer.resume=auto"))
    assert [r["train/p"] for r in read_metrics(cut) if r["kind"] == "train"] == p


def test_resume_refuses_new_iterations_while_the_temperature_anneals():
    """exploration.temperature_end spans trainer.iterations: a longer resumed run would re-time the annealing."""
    common = ["experiment=cuebandit", "algo.p_schedule_steps=4"]  # the p schedule alone would allow it
    for anneal, refused_expected in ((["exploration.temperature_end=0.5"], True), ([], False)):
        saved = config_dict(load_config([*common, *anneal, "trainer.iterations=4"]))
        refused, applied = resume_changes(saved, load_config([*common, *anneal, "trainer.iterations=8"]))
        assert any("temperature_end anneals" in r for r in refused) == refused_expected, refused
        assert any(a.startswith("trainer.iterations") for a in applied) != refused_expected, applied


def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(tmp_path):
    trainer_module.train(_cfg(tmp_path))
    good = _weights(tmp_path, 2)
    weights = tmp_path / "checkpoints" / "iter-000004" / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit: the file still loads, only the checksum notices
    weights.write_bytes(bytes(data))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 5, "kind": "tr')  # a row cut short by a crash
    with pytest.warns(UserWarning) as caught:
        result = trainer_module.train(_cfg(tmp_path, "trainer.resume=auto"))
    messages = " ".join(str(w.message) for w in caught)
    assert "checksum mismatch in model/model.safetensors" in messages and "damaged line" in messages
    rows = read_metrics(tmp_path)
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4]  # resumed after 2, no duplicates
    assert result["after"] is not None
    assert not torch.equal(_weights(tmp_path, 4)["model.embed_tokens.weight"], good["model.embed_tokens.weight"])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 4-iteration CueBandit run with checkpoints after iterations 2 and 4 (copied by each test that damages it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    trainer_module.train(_cfg(run))
    return run


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # the file still loads; only the checksum notices
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("manifest", [None, "{}", "[]", "null", '{"model/model.safetensors": 3}'])
def test_a_missing_or_malformed_manifest_is_damage_not_an_older_checkpoint(trained_run, tmp_path, manifest):
    """Flipped weights once resumed when checksums.json was deleted (a warning only) or emptied to {} (silently);
    [] and null raised raw errors. Each is a damaged checkpoint: resume falls back to the newest good one."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    newest = run / "checkpoints" / "iter-000004"
    _flip_a_bit(newest / "model" / "model.safetensors")
    if manifest is None:
        (newest / "checksums.json").unlink()
    else:
        (newest / "checksums.json").write_text(manifest)
    with pytest.warns(UserWarning, match="skipping a damaged checkpoint: .*iter-000004"):
        candidates = lifecycle.checkpoints_to_try(_cfg(run, "trainer.resume=auto"), run)
    assert [path.name for path, _ in candidates] == ["iter-000002"]


def test_eval_of_a_run_uses_the_newest_checkpoint_that_verifies(trained_run, tmp_path, capsys):
    """agentrl-eval --run once evaluated bit-flipped newest weights with rc 0, and truncated ones raised a raw
    SafetensorError. It verifies as resume does and falls back; its results go under the run by default."""
    import shutil

    from agentrl import eval_cli
    from agentrl.checkpoint import _manifest

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    args = ["--run", str(run), "--instances", "2", "--workers", "0", "--no-progress"]
    _flip_a_bit(run / "checkpoints" / "iter-000004" / "model" / "model.safetensors")
    with pytest.warns(UserWarning, match="skipping a damaged checkpoint: .*iter-000004.*checksum mismatch"):
        eval_cli.main(args)
    (report,) = [json.loads(p.read_text()) for p in (run / "evals").glob("*/eval.json")]
    assert report["model"].endswith("iter-000002/model")
    # weights cut short by a bad write whose manifest still matches them: the load fails, the next one is used
    older = run / "checkpoints" / "iter-000002"
    weights = older / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    (older / "checksums.json").write_text(json.dumps(_manifest(older)))
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "no model could be loaded" in err and "SafetensorError" in err
    with pytest.raises(SystemExit) as exit_info:  # without --run there is no run to write under
        eval_cli.main(["--env", "agentrl/CueBandit-v0", "--agent", "oracle"])
    assert exit_info.value.code == 2 and "give --out" in capsys.readouterr().err


def test_garbage_in_every_checkpoint_is_refused_with_the_reasons(tmp_path):
    trainer_module.train(_cfg(tmp_path, "trainer.iterations=2"))
    (tmp_path / "checkpoints" / "iter-000002" / "config.json").write_text("{not json")
    with (
        pytest.raises(ConfigError, match="(?s)no usable checkpoint.*iter-000002: checksum mismatch in config.json"),
        pytest.warns(UserWarning),
    ):
        trainer_module.train(_cfg(tmp_path, "trainer.resume=auto"))


def test_non_finite_settings_are_all_rejected_before_weights_load(tmp_path, monkeypatch):
    # the name the trainer calls (agentrl.components imports it when first imported, so patching
    # agentrl.policies.models.load_model would miss it once components is loaded, and leak into modules imported now)
    monkeypatch.setattr("agentrl.components.load_model", lambda *a, **k: pytest.fail("weights loaded"))
    bad = ["learner.lr=nan", "learner.max_grad_norm=inf", "algo.clip_low=-1", "exploration.temperature=nan"]
    with pytest.raises(ConfigError) as err:
        trainer_module.train(_cfg(tmp_path, *bad))
    message = str(err.value)
    for key in ("learner.lr", "learner.max_grad_norm", "clip", "exploration.temperature"):
        assert key in message, (key, message)


def test_weights_that_become_non_finite_stop_the_run_and_are_never_saved(tmp_path, monkeypatch):
    original = Learner.update

    def poisoned(self, samples, p, **kwargs):  # an update that overflows in iteration 3 (after a checkpoint at 2)
        out = original(self, samples, p, **kwargs)
        if self.optimizer_steps > 2 * self.cfg.mini_batches:
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(Learner, "update", poisoned)
    with pytest.raises(trainer_module.TrainingDiverged, match="non-finite in iteration 3.*resume from .*iter-000002"):
        trainer_module.train(_cfg(tmp_path))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["iter-000002"]


def test_resumed_tensorboard_log_has_no_duplicated_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer_module.train(_cfg(tmp_path, "trainer.tensorboard=true", "trainer.checkpoint_every=3"))
    (tmp_path / "checkpoints" / "iter-000004").rename(tmp_path / "checkpoints" / "gone")  # resume from 3
    trainer_module.train(
        _cfg(tmp_path, "trainer.tensorboard=true", "trainer.checkpoint_every=3", "trainer.resume=auto")
    )
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("rollout/success")]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "signum, hub", [(signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True)], ids=["int", "term", "vf"]
)
def test_ctrl_c_stops_cleanly_with_the_resume_command(tmp_path, signum, hub):
    """Ctrl-C, and SIGTERM the same way (a scheduler's stop: it once left every env worker running): exit code 128 +
    the signal, the resume command, the lock released, and no env worker (or its keeper) left behind. Also with a
    verifiers env loaded in the trainer and its worker (verifiers installs SIGINT/SIGTERM handlers of its own)."""
    from agentrl.processes import descendants

    cmd = [sys.executable, "-m", "agentrl.trainer", "experiment=cuebandit", f"trainer.run_dir={tmp_path}"]
    cmd.append("rollout.num_workers=1")
    if hub:
        cmd += ["env.id=verifiers:tests.vf_cue", "+env.kwargs.kind=single"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    workers = descendants(proc.pid)
    assert workers  # the env worker and its keeper
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert "Traceback" not in err and f"trainer.run_dir={tmp_path} trainer.resume=auto" in err
    assert not (tmp_path / ".lock").exists()
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.05)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]


def test_a_swallowed_ctrl_c_still_stops_the_run(tmp_path, monkeypatch):
    """Python prints and drops a KeyboardInterrupt raised inside a __del__ (a finished progress bar's, say: a CI run
    once trained on through a Ctrl-C that landed there). The trainer remembers the Ctrl-C and stops at the next
    iteration, exit code 130, with the lock released and the iterations done so far logged."""

    class DiesOnCtrlC:
        def __del__(self) -> None:
            lifecycle.on_sigint(signal.SIGINT, None)  # what the handler does when the signal lands here

    real_update = Learner.update

    def update(self, *args, **kwargs):
        out = real_update(self, *args, **kwargs)
        DiesOnCtrlC()  # collected at once: its KeyboardInterrupt is printed and ignored
        return out

    monkeypatch.setattr(Learner, "update", update)
    cfg = load_config(
        ["experiment=cuebandit", f"trainer.run_dir={tmp_path}", "trainer.iterations=5", "trainer.eval_before=false"]
    )
    with pytest.raises(SystemExit) as exit_info:
        trainer_module.train(cfg)
    assert exit_info.value.code == 130
    assert [r["iteration"] for r in read_metrics(tmp_path) if r["kind"] == "train"] == [1]
    assert not (tmp_path / ".lock").exists()
    assert signal.getsignal(signal.SIGINT) is not lifecycle.on_sigint  # the previous handler is back
