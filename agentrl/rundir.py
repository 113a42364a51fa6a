"""Run directories: where a run goes, one process per directory, and never destroying a run by accident.

    runs/<experiment>/<YYYY-mm-dd_HH-MM-SS>/     a fresh run (trainer.run_dir unset), printed at start
    runs/<experiment>/latest                      → the newest run of that experiment (trainer.resume=auto uses it)

A run directory holds config.yaml (the resolved config), metrics.jsonl, checkpoints/ and `.lock` while a process
trains in it. A fresh run (trainer.resume=never) refuses a directory that already holds a run unless
trainer.overwrite=true; `.tmp-*` folders left by interrupted checkpoint writes are removed on the next start.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import warnings
from pathlib import Path

from agentrl.errors import ConfigError
from agentrl.processes import process_alive

LOCK_NAME = ".lock"
RUNS_ROOT = Path("runs")


def default_run_dir(experiment: str, resume: str, root: Path = RUNS_ROOT) -> Path:
    """The run directory when trainer.run_dir is unset: `latest` of the experiment when resuming (if any), else a
    new timestamped folder (a second in the same second gets a suffix)."""
    base = root / (experiment or "default")
    if resume == "auto" and (base / "latest").exists():
        return (base / "latest").resolve()
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path, k = base / stamp, 1
    while path.exists():
        path, k = base / f"{stamp}-{k}", k + 1
    return path


def point_latest(run_dir: Path) -> None:
    """Make `<run_dir>/../latest` point at run_dir (a relative symlink; best effort where links are unsupported)."""
    link = run_dir.parent / "latest"
    try:
        tmp = run_dir.parent / f".latest-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, link)
    except OSError as err:
        warnings.warn(f"could not update {link}: {err}", stacklevel=2)


def holds_run(run_dir: Path) -> list[str]:
    """What of a previous run is in run_dir (empty: nothing)."""
    found = []
    if (run_dir / "metrics.jsonl").exists():
        found.append("metrics.jsonl")
    ckpts = run_dir / "checkpoints"
    if ckpts.exists() and any(p.name.startswith("iter-") for p in ckpts.iterdir()):
        found.append(f"{sum(p.name.startswith('iter-') for p in ckpts.iterdir())} checkpoint(s)")
    return found


def nearest_existing(path: Path) -> Path:
    """`path`, or its closest ancestor that exists (where a mkdir -p of `path` would start)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def writable_location(path: Path) -> bool:
    """Whether a folder can be created (or written) at `path`."""
    parent = nearest_existing(path)
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def _can_write_in(folder: Path) -> bool:
    """A file can really be created in `folder` (os.access says yes to root everywhere, /proc included)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


RUN_FOLDERS = ("checkpoints", "eval", "tensorboard")  # what a run writes into, besides its files
RUN_FILES = ("metrics.jsonl", "config.yaml")


def run_dir_entry_problems(run_dir: Path) -> list[str]:
    """What in an existing run directory the run could not write (found before weights load, not after an
    iteration of training): a folder it writes into that is a file or refuses files, a log that is not a file."""
    problems = []
    for name in RUN_FOLDERS:
        entry = run_dir / name
        if entry.exists() and not (entry.is_dir() and _can_write_in(entry)):
            problems.append(f"{entry} is not a writable folder; fix or remove it")
    for name in RUN_FILES:
        entry = run_dir / name
        if entry.exists() or entry.is_symlink():
            try:
                with entry.open("a"):
                    pass
            except OSError as err:
                problems.append(f"{entry} cannot be written ({type(err).__name__}: {err.strerror}); fix or remove it")
    return problems


def check_run_dir(run_dir: Path, resume: str, overwrite: bool) -> list[str]:
    """Problems found before any weights load: an unwritable location (or an entry in it the run writes to), or a
    fresh run over an existing one."""
    problems = []
    parent = nearest_existing(run_dir)
    if not (writable_location(run_dir) and _can_write_in(parent)):
        problems.append(f"trainer.run_dir={str(run_dir)!r}: {parent} is not a writable folder; choose another run_dir")
    elif run_dir.is_dir() and (bad := run_dir_entry_problems(run_dir)):
        problems += [f"trainer.run_dir: {problem}" for problem in bad]
    elif resume == "never" and not overwrite and (found := holds_run(run_dir)):
        problems.append(
            f"trainer.run_dir={str(run_dir)!r} already holds a run ({', '.join(found)}); continue it with "
            "trainer.resume=auto, start elsewhere (leave trainer.run_dir unset for a new timestamped folder), or "
            "replace it with trainer.overwrite=true"
        )
    return problems


def prepare_run_dir(run_dir: Path, resume: str, overwrite: bool) -> None:
    """Create run_dir, clear it when a fresh run overwrites, and remove leftovers of interrupted writes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume == "never" and overwrite:
        for name in ("checkpoints", "tensorboard"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    ckpts = run_dir / "checkpoints"
    if ckpts.exists():
        for tmp in ckpts.glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _as_pid(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else -1


class RunLock:
    """One training process per run directory: an exclusive flock on `.lock` (the kernel drops it when its process
    dies, however it dies, so a dead run's lock is taken over and two processes can never both take it), holding the
    holder's pid and host for the message. A `.lock` whose named holder is alive on this host is refused even without
    the flock (a run of an older agentrl). Released on exit (context manager)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_NAME
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(20):  # retried only when the file was replaced between open and flock
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                self._refuse(self._holder(), me)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:  # its holder released it (and removed the file) meanwhile
                same = False
            if not same:
                os.close(fd)
                continue
            holder = self._holder()
            if holder and holder.get("host") == me["host"] and holder.get("pid") != me["pid"]:
                if process_alive(_as_pid(holder.get("pid"))):
                    os.close(fd)
                    self._refuse(holder, me)
                warnings.warn(
                    f"taking over the stale lock of dead process {holder['pid']} in {self.path}", stacklevel=2
                )
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(me).encode())
            self._fd, self.held = fd, True
            return
        raise ConfigError(f"could not lock {self.path.parent}: {self.path} keeps being replaced")

    def _refuse(self, holder: dict | None, me: dict) -> None:
        alive = holder and (holder.get("host") != me["host"] or process_alive(_as_pid(holder.get("pid"))))
        who = f"process {holder.get('pid')} on {holder.get('host')}" if holder and alive else "another process"
        raise ConfigError(
            f"{self.path.parent} is in use by {who}; wait for it to finish, or use another trainer.run_dir "
            f"(if that process is gone, delete {self.path})"
        ) from None

    def _holder(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)  # under the flock: a process that opened it sees the inode change
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self.held = None, False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
