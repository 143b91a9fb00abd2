"""What a test run shares and what it cleans up (a pytest plugin, loaded by tests/conftest.py):

- `built_once`: an expensive thing (a real daemon's workspace, a folder of 7,200 PNGs) built once per
  test run, shared by every xdist worker: the first worker builds it under a file lock, the others
  wait and reuse it.
- one torch thread per worker (and per process it starts), so workers never spin against each other's threads.
- the tiers' honesty: a test that trains (the trainer in-process or as a process), runs the daemon's
  cycles or starts a daemon or PHASE process must be marked `slow`; one that is not fails, naming
  the mark, so `-m "not slow"` stays the fast tier it says it is.
- no leftovers: at the end of a run (and of an interrupted one), every process still running whose
  command line names this run's temporary folder (a daemon, a sandboxed run, PHASE) is killed with
  its tree; at the start, such processes of an earlier run whose pytest is gone are too.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import psutil
import pytest
from filelock import FileLock

PID_FILE = ".pytest-pid"
HEAVY_MODULES = ("loop.trainer", "loop.phase", "bench/")   # a runwrap around `sleep` is not
HEAVY_COMMANDS = ("start", "train", "evolve")          # `python -m loop.cli.main <command>` that trains
_heavy: list[str] = []                                  # what the current test did that makes it slow


# ------------------------------------------------------------- built once ----

def shared_root(tmp_path_factory) -> Path:
    """The test run's base temp, the same for every xdist worker (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once per test run, whichever worker gets here first; the rest reuse it."""
    folder = shared_root(tmp_path_factory) / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".built").write_text("ok\n")
    return folder


# ------------------------------------------------------------- one thread each ----

def one_thread_each() -> None:
    """One torch thread for each worker and what it starts (unless a test's config says otherwise).
    Two workers training with two threads each on two cores spin against each other: two tiny
    trainings at once took 82-135 s with two threads each and 22-33 s with one (measured beside
    other work); a daemon's slot still sets its own runs' threads."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    # where a config or a daemon slot asks for more threads, idle ones sleep instead of spinning
    # (a 3-epoch tiny training with two threads beside other work: 55-73 s spinning, 7-10 s passive)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# ------------------------------------------------------------- slow means slow ----

def _audit(event: str, args: tuple) -> None:
    if event != "subprocess.Popen" or not _heavy:
        return
    argv = [str(a) for a in (args[1] if isinstance(args[1], (list, tuple)) else [args[1]])]
    text = " ".join(argv)
    if any(m in text for m in HEAVY_MODULES) or \
            ("loop.cli.main" in text and any(c in argv for c in HEAVY_COMMANDS)) or \
            any(a.endswith("/llmloop") for a in argv[:1]) and any(c in argv for c in HEAVY_COMMANDS):
        _heavy.append(f"started `{text[:160]}`")


def _mark_heavy(what: str):
    def wrap(fn):
        def inner(*a, **k):
            if _heavy:
                _heavy.append(what)
            return fn(*a, **k)
        return inner
    return wrap


def pytest_configure(config) -> None:
    one_thread_each()
    if getattr(config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return                         # xdist's controller runs no test: no torch to import here (4 CPU-s)
    import torch

    torch.set_num_threads(1)           # this worker's own (the environment above covers what it starts)
    sys.addaudithook(_audit)           # every Popen of this process: the trainer, a daemon, PHASE
    import loop.daemon.process as daemon
    import loop.trainer.train as trainer

    trainer._train = _mark_heavy("trained in-process (loop.trainer.train)")(trainer._train)
    daemon.cycle_until_stopped = _mark_heavy("ran daemon cycles in-process")(daemon.cycle_until_stopped)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    _heavy[:] = ["armed"]            # the test body only: a shared fixture's build is not the test's
    try:
        result = yield               # a test that failed by itself keeps its own failure
    finally:
        done = _heavy[1:]
        _heavy.clear()
    if done and item.get_closest_marker("slow") is None:
        pytest.fail(f"{item.nodeid} {done[0]}: mark it @pytest.mark.slow (the fast tier is `-m 'not slow'`)",
                    pytrace=False)
    return result


# ------------------------------------------------------------- no leftovers ----

def sweep(folder: Path, only_if_orphaned: bool = False) -> list[str]:
    """Kill every process (with its tree) whose command line names `folder`; with `only_if_orphaned`,
    only under test-run folders whose pytest is gone. Returns what was killed."""
    me = os.getpid()
    mine = {me, *(p.pid for p in psutil.Process(me).parents())}
    # the folder's own path and a separator: /tmp/pytest-of-root/pytest-26 must not match pytest-266,
    # another test run's folder (two runs at once on one machine killed each other's processes)
    needle = str(folder).rstrip("/") + "/"
    killed = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] in mine or needle not in cmd:
            continue
        if only_if_orphaned and session_alive(cmd, needle):
            continue
        try:
            for p in [*proc.children(recursive=True), proc]:
                p.kill()
            killed.append(cmd[:200])
        except psutil.Error:
            continue
    return killed


def session_alive(cmd: str, root: str) -> bool:
    """Whether the pytest that made the test-run folder a command line names still runs."""
    rest = cmd.split(root, 1)[1].lstrip("/").split("/", 1)[0]       # pytest-<N>
    try:
        pid = int((Path(root) / rest / PID_FILE).read_text())
        return psutil.pid_exists(pid)
    except (OSError, ValueError):
        return True          # not ours to judge: leave it


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(tmp_path_factory):
    """Sweep this run's processes at its end; an earlier, dead run's at its start."""
    root = shared_root(tmp_path_factory)
    worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    (root / PID_FILE).write_text(f"{os.getppid() if worker else os.getpid()}\n")   # xdist: the controller's
    sweep(root.parent, only_if_orphaned=True)
    yield
    killed = sweep(tmp_path_factory.getbasetemp())
    if killed:
        print(f"\n[tests] killed {len(killed)} leftover process(es): {killed[:3]}", file=sys.stderr)
