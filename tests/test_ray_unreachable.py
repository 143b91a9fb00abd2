"""An unreachable Ray cluster is an error, never a hang (loop/run/ray_link.py): with no head,
`llmloop evolve` and `llmloop start` exit non-zero within 60 s naming the address and the fix; a
head lost mid-night degrades the executor (one `executor_degraded`), new runs wait for it or run
locally, and it is restored (`executor_restored`) when the head is back; a daemon whose head stops
and restarts keeps cycling through the outage. The heads are real (`ray start --head
--node-ip-address 127.0.0.1`, as the README says), each stopped by killing its process group."""
from __future__ import annotations

import calendar
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e '.[cluster]')")

from loop.config import ExecutorConfig  # noqa: E402
from loop.run.kill import RUN_TAG, tagged_processes  # noqa: E402
from loop.run.plan import RunPlan  # noqa: E402
from loop.run.ray_executor import RayExecutor  # noqa: E402
from loop.run.ray_link import RayUnavailable  # noqa: E402
from loop.run.supervise import exit_code, monitor  # noqa: E402
from tests.conftest import REPO, ray_drivers, tiny_config_dict, wait_for  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("ray")]   # one Ray head at a time

RAY = str(Path(sys.executable).parent / "ray")


# A trace id of its own per test run: a run is killed with every process carrying its tag (trace:label),
# and two test runs on one machine (a developer's and CI) must not kill each other's runs.
UNIQUE_TRACE = f"t-{uuid.uuid4().hex[:8]}"

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """A real Ray head on 127.0.0.1:port (`ray start --head --block`); stop() kills it outright."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.temp = tempfile.mkdtemp(prefix="rayh", dir="/tmp")      # short: Unix socket paths are
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Head":
        argv = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", self.temp,
                "--dashboard-port", str(free_port()), "--ray-client-server-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port())]
        log = open(Path(self.temp) / "head.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: "block forever" in (Path(self.temp) / "head.log").read_text() or self.proc.poll() is not None,
                 90, "the Ray head to start", poll=0.2)
        assert self.proc.poll() is None, (Path(self.temp) / "head.log").read_text()[-2000:]
        return self

    def stop(self) -> None:
        """The head gone at once, as after a crash: every process it started, killed."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def head():
    h = Head().start()
    yield h
    h.stop()
    shutil.rmtree(h.temp, ignore_errors=True)


OPEN: list[RayExecutor] = []
ORPHANS: list[int] = []


@pytest.fixture(autouse=True)
def cleanup():
    yield
    while OPEN:
        OPEN.pop().close()
    for pid in ORPHANS:              # a run that outlived its actor's worker
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    ORPHANS.clear()


def executor(address: str, tmp_path: Path, **extra) -> RayExecutor:
    cfg = ExecutorConfig(kind="ray", address=address, namespace="llmloop-unreach", retry_seconds=0.5,
                         max_retry_seconds=1, **extra)
    OPEN.append(RayExecutor(cfg, REPO, tmp_path / "ws", sandbox=None, wait_seconds=2, say=lambda *_: None))
    return OPEN[-1]


def plan(tmp_path: Path, name: str, code: str) -> RunPlan:
    return RunPlan(name, UNIQUE_TRACE, "command", [sys.executable, "-c", code], tmp_path / "ws" / "runs" / name,
                   None, None)


def events(ws: Path, kind: str) -> list[dict]:
    path = ws / "events.jsonl"
    if not path.exists():
        return []
    return [e for e in (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()) if e["kind"] == kind]


def daemon_config(tmp_path: Path, address: str, **extra) -> Path:
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.1})))
    cfg = {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer), "sandbox": "optional",
           "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
           "phase": {"schedule": "off"}, "evo_period_cycles": 99, "max_concurrent_experiments": 2,
           "executor": {"kind": "ray", "address": address, "namespace": "llmloop-unreach", "retry_seconds": 1,
                        "max_retry_seconds": 2}, **extra}
    path = tmp_path / "daemon.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def llmloop(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "loop.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done, time.monotonic() - t0


# ------------------------------------------------------------- start-up ----

@pytest.mark.slow           # it starts `llmloop start` / `evolve` processes (the tiers' rule, tests/_session.py)
@pytest.mark.parametrize("command", [["evolve"], ["start"], ["start", "--foreground"]])
def test_with_no_head_the_commands_exit_non_zero_naming_ray_within_60s(tmp_path, command):
    address = f"127.0.0.1:{free_port()}"                  # nothing listens there
    config = daemon_config(tmp_path, address)
    done, seconds = llmloop(*command, "--daemon-config", str(config))
    assert done.returncode != 0, done.stdout
    assert "Ray cluster at " + address in done.stderr and "ray start --head" in done.stderr, done.stderr
    assert seconds < 60
    assert not (tmp_path / "ws" / "daemon.pid").exists()
    assert not list((tmp_path / "ws").glob("models/candidates/*"))        # evolve spawned nothing


def test_a_port_that_accepts_but_never_answers_is_an_error_after_the_connect_timeout(tmp_path):
    silent = socket.socket()
    silent.bind(("0.0.0.0", 0))
    silent.listen(16)
    earlier = ray_drivers()           # this worker's other tests may hold a driver of their own
    try:
        ex = executor(f"127.0.0.1:{silent.getsockname()[1]}", tmp_path, connect_timeout_seconds=3)
        with pytest.raises(RayUnavailable, match=r"did not join within 3s.*ray start --head"):
            ex.connect()
    finally:
        silent.close()
    assert ray_drivers() - earlier == set()                 # the driver that never joined was killed


# ------------------------------------------------------------- mid-night ----

@pytest.mark.slow
def test_a_lost_head_degrades_new_runs_wait_and_it_is_restored(tmp_path, head):
    ex = executor(head.address, tmp_path)
    ex.connect()
    before = ex.submit(plan(tmp_path, "before", "import time; time.sleep(30)"), cycle=1)
    assert before.executor == "ray" and before.device.endswith("@" + socket.gethostname())
    ORPHANS.append(before.pid)
    head.stop()

    # the run placed before the loss went with its worker: judged over, and nothing of it left here
    assert monitor(ex, before, 60, lambda: False, poll_seconds=0.1) == "finished"
    assert tagged_processes(RUN_TAG, before.run_tag) == []
    waited = []
    assert ex.submit(plan(tmp_path, "during", "print('x')"), cycle=2, on_wait=lambda: waited.append(1)) is None
    assert waited == [1]
    assert ex.submit(plan(tmp_path, "nowait", "print('x')"), cycle=2, wait=False) is None
    degraded = events(tmp_path / "ws", "executor_degraded")
    assert len(degraded) == 1 and degraded[0]["address"] == head.address and degraded[0]["when_unavailable"] == "wait"
    assert events(tmp_path / "ws", "executor_restored") == []

    head.start()                                          # the same address, a new cluster
    wait_for(lambda: ex.link.available(), 90, "the link to come back", poll=0.5)
    restored = events(tmp_path / "ws", "executor_restored")
    assert len(restored) == 1 and restored[0]["down_seconds"] > 0
    after = ex.submit(plan(tmp_path, "after", "print('back')"), cycle=3)
    assert after is not None and after.executor == "ray"
    assert monitor(ex, after, 60, lambda: False, poll_seconds=0.1) == "finished" and exit_code(after) == 0
    assert "back" in Path(after.log_path).read_text()
    assert len(events(tmp_path / "ws", "executor_degraded")) == 1          # one outage, one event


@pytest.mark.slow
def test_when_unavailable_local_runs_new_runs_on_this_machine(tmp_path, head):
    ex = executor(head.address, tmp_path, when_unavailable="local")
    ex.connect()
    head.stop()
    run = ex.submit(plan(tmp_path, "here", "print('local')"), cycle=1)
    assert run is not None and run.executor == "local"
    assert monitor(ex, run, 60, lambda: False, poll_seconds=0.1) == "finished" and exit_code(run) == 0
    assert "local" in Path(run.log_path).read_text()
    degraded = events(tmp_path / "ws", "executor_degraded")
    assert len(degraded) == 1 and degraded[0]["when_unavailable"] == "local"


@pytest.mark.slow
def test_a_daemon_keeps_cycling_while_its_head_is_down_and_uses_it_again_when_back(tmp_path, head):
    """The head stops while a run trains and comes back later: cycles keep ending during the outage
    (none waits for the cluster past its monitor window), one degraded and one restored event, and
    a run after the restart is placed on Ray again."""
    monitor_s = 3
    config = daemon_config(tmp_path, head.address, default_monitor_seconds=monitor_s)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen([sys.executable, "-m", "loop.cli.main", "start", "--daemon-config", str(config),
                               "--foreground"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    ws = tmp_path / "ws"

    def active() -> list[dict]:
        try:
            return json.loads((ws / "state.json").read_text()).get("active_runs") or []
        except (OSError, ValueError):
            return []

    try:
        wait_for(lambda: active() or daemon.poll() is not None, 120, "a run on Ray", poll=0.2)
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
        assert active()[0]["executor"] == "ray"
        ORPHANS.append(active()[0]["pid"])
        head.stop()
        down_at = time.time()
        wait_for(lambda: len(events(ws, "executor_degraded")) == 1, 60, "executor_degraded", poll=0.2)
        # the outage lasts until two cycles have ended inside it (a daemon that waited for the cluster
        # ends none: the wait times out), then two seconds more so their stamps are well before the return
        wait_for(lambda: len(cycles_between(ws, down_at + 1, time.time())) >= 2, 60, "two cycles during the outage",
                 poll=0.2)
        time.sleep(2)
        head.start()
        up_at = time.time()

        def placed_again() -> bool:
            restored = events(ws, "executor_restored")
            return bool(restored) and any((c.get("run") or {}).get("executor") == "ray" and c["ts"] >= restored[0]["ts"]
                                          for c in events(ws, "cycle"))

        wait_for(lambda: placed_again() or daemon.poll() is not None, 180, "a run on the restored head", poll=0.5)
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for run in active():
            ORPHANS.append(run["pid"])
    assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    assert len(events(ws, "executor_degraded")) == 1 and len(events(ws, "executor_restored")) == 1
    # cycles ended while the head was down: none of them waited for the cluster to come back
    during = cycles_between(ws, down_at + 1, up_at - 1)
    assert len(during) >= 2, [(c["cycle"], c["ts"], c.get("seconds")) for c in events(ws, "cycle")]


def cycles_between(ws: Path, start: float, end: float) -> list[dict]:
    """The cycle events stamped (to the second) strictly between two times."""
    return [c for c in events(ws, "cycle") if start < stamp(c) < end]


def stamp(event: dict) -> float:
    return calendar.timegm(time.strptime(event["ts"], "%Y-%m-%dT%H:%M:%SZ"))
