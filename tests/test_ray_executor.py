"""The Ray executor against a real Ray cluster on this machine: a head and a second worker node
(`ray.cluster_utils.Cluster`, real GCS and raylet processes on 127.0.0.1), runs placed as detached
named actors, the walltime kill, the run folder sent back by hash when storage is not shared, an
evolution window and daemon cycles through Ray, and a kill -9 of the daemon mid-run with re-adoption
on restart. Every Ray process the tests start is stopped at the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

ray = pytest.importorskip("ray", reason="the cluster extra is not installed (pip install -e '.[cluster]')")

from loop.config import DaemonConfig, ExecutorConfig, validate  # noqa: E402
from loop.run.plan import RunPlan  # noqa: E402
from loop.run.ray_executor import RayExecutor, unpack  # noqa: E402
from loop.run.supervise import exit_code, monitor  # noqa: E402
from tests.conftest import REPO, ray_drivers, tiny_config_dict, wait_for  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.xdist_group("ray")]   # one cluster at a time


# A trace id of its own per test run: a run is killed with every process carrying its tag (trace:label),
# and two test runs on one machine (a developer's and CI) must not kill each other's runs.
UNIQUE_TRACE = f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # no node_ip_address 127.0.0.1 here: Cluster then binds the GCS to loopback only, and ray.init
    # rewrites 127.0.0.1 to this host's address (tests/test_ray_unreachable.py uses `ray start` for that)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)          # a second node: runs may land on either
    c.wait_for_nodes()
    # the executors' drivers are child processes; the test looks at the cluster through its own
    ray.init(address=c.address, namespace="llmloop-test", log_to_driver=False)
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


OPEN: list[RayExecutor] = []


@pytest.fixture(autouse=True)
def close_executors():
    yield
    while OPEN:
        OPEN.pop().close()


def executor(cluster, tmp_path, shared=True, **extra) -> RayExecutor:
    cfg = ExecutorConfig(kind="ray", address=cluster.address, namespace="llmloop-test", shared_storage=shared,
                         **extra)
    OPEN.append(RayExecutor(cfg, REPO, tmp_path / "ws", sandbox=None))
    return OPEN[-1]


def plan(tmp_path: Path, name: str, code: str, walltime: float | None = None, stall: float | None = None) -> RunPlan:
    return RunPlan(name, UNIQUE_TRACE, "command", [sys.executable, "-c", code], tmp_path / "ws" / "runs" / name,
                   walltime, stall)


def test_a_run_is_a_named_actor_and_finishes_with_its_folder(cluster, tmp_path):
    ex = executor(cluster, tmp_path)
    code = "import os; from pathlib import Path; print('hello from', os.getpid()); Path('out').mkdir(); " \
           "Path('out/result.txt').write_text(os.environ['OMP_NUM_THREADS'])"
    p = plan(tmp_path, "hello", code.replace("'out", f"'{tmp_path}/ws/runs/hello/out"))
    run = ex.submit(p, cycle=1)
    assert run.executor == "ray" and run.task.startswith("llmloop-") and run.device.startswith("cpu@")
    assert ray.get_actor(run.task, namespace="llmloop-test") is not None
    assert monitor(ex, run, 60, lambda: False, poll_seconds=0.1) == "finished"
    assert exit_code(run) == 0 and "hello from" in Path(run.log_path).read_text()
    assert (Path(run.run_dir) / "out" / "result.txt").read_text() == "1"
    placed = json.loads((Path(run.run_dir) / "placement.json").read_text())
    assert placed["executor"] == "ray" and placed["task"] == run.task and placed["device"] == run.device
    with pytest.raises(ValueError):            # collected: the actor is gone from the cluster
        ray.get_actor(run.task, namespace="llmloop-test")


def test_past_its_walltime_a_run_is_killed_on_the_cluster(cluster, tmp_path):
    ex = executor(cluster, tmp_path)
    run = ex.submit(plan(tmp_path, "slow", "import time; time.sleep(120)", walltime=2), cycle=1)
    assert ex.alive(run)
    assert monitor(ex, run, 60, lambda: False, poll_seconds=0.1) == "timed_out"
    assert not psutil.pid_exists(run.pid) or psutil.Process(run.pid).status() == psutil.STATUS_ZOMBIE
    assert not ex.alive(run)


def test_without_shared_storage_the_folder_comes_back_checked_by_hash(cluster, tmp_path):
    ex = executor(cluster, tmp_path, shared=False)
    run_dir = tmp_path / "ws" / "runs" / "far"
    code = (f"from pathlib import Path; Path('{run_dir}/out').mkdir(); "
            f"Path('{run_dir}/out/w.bin').write_bytes(b'x' * 999)")
    run = ex.submit(plan(tmp_path, "far", code, stall=45.0), cycle=1)
    # no shared storage: the log is not here until the folder comes back, so no stall limit is kept
    # (the plan asked for one: a run judged stalled for a log it cannot see would be killed for nothing)
    assert run.stall_seconds is None
    assert monitor(ex, run, 60, lambda: False, poll_seconds=0.1) == "finished"
    assert (run_dir / "out" / "w.bin").read_bytes() == b"x" * 999 and exit_code(run) == 0
    import hashlib
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(run_dir / "out", arcname="out")
    data = buf.getvalue()
    with pytest.raises(Exception, match="does not match its sha256"):
        unpack(data, hashlib.sha256(b"other").hexdigest(), tmp_path / "elsewhere")
    unpack(data, hashlib.sha256(data).hexdigest(), tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "out" / "w.bin").exists()


def test_strays_of_this_workspace_are_cancelled_and_others_kept(cluster, tmp_path):
    ex = executor(cluster, tmp_path)
    keep = ex.submit(plan(tmp_path, "keep", "import time; time.sleep(60)"), cycle=1)
    stray = ex.submit(plan(tmp_path, "stray", "import time; time.sleep(60)"), cycle=1)
    cancelled = ex.cancel_strays({keep.run_tag})
    assert cancelled == [stray.task] and not ex.alive(stray) and ex.alive(keep)
    ex.kill(keep)
    assert not ex.alive(keep)


def test_kind_ray_without_ray_is_a_config_error_naming_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(Exception, match=r"pip install -e '\.\[cluster\]'"):
        validate(DaemonConfig, {"executor": {"kind": "ray"}}, "<test>")


def daemon_config(tmp_path: Path, cluster, **extra) -> dict:
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.1})))
    return {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer), "sandbox": "optional",
            "daemon_poll_seconds": 0, "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.01},
            "phase": {"schedule": "off"}, "evo_period_cycles": 2, "max_concurrent_experiments": 2,
            "evolution": {"rules": {"per_class_accuracy_floor": None}},
            "executor": {"kind": "ray", "address": cluster.address, "namespace": "llmloop-test"}, **extra}


def test_daemon_cycles_and_an_evolution_window_run_on_ray(cluster, tmp_path):
    from loop.daemon.process import run_daemon, workspace_of
    from loop.journal.history import read_history

    cfg = validate(DaemonConfig, daemon_config(tmp_path, cluster), "<test>")
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=2, say=lambda *_: None)
    assert state.cycle == 2
    # its Ray driver ended with it (one left behind outlived the cluster spinning: 44 CPU-s in a test run)
    wait_for(lambda: not ray_drivers(), 10, "the daemon's Ray driver to end with it")
    runs = read_history(ws)
    assert runs and all(r.ok for r in runs)
    cycles = [json.loads(ln) for ln in ws.events.open() if '"kind": "cycle"' in ln]
    started = [c["run"] for c in cycles if c.get("run")]
    assert started and all(r["executor"] == "ray" and r["device"].startswith("cpu@") for r in started)
    window = next(c["evolution"] for c in cycles if c.get("evolution"))
    assert len(window["ranking"]) == 2 and all(o["status"] for o in window["ranking"])
    archive = ws.root / "models" / "archive"
    entries = [p.name for p in archive.iterdir() if (p / "model.safetensors").exists()]
    generation = window["gen_id"]
    assert len([n for n in entries if f"-G{generation:03d}-" in n]) == 2     # both candidates archived
    assert len(entries) == 2 + len(runs)            # and each daemon run, handed to the candidate path
    assert [n for n in ray.util.list_named_actors() if str(n).startswith("llmloop-")] == []   # nothing left


@pytest.mark.timeout(900)      # the run trains 12 epochs: minutes on a busy 2-core machine
def test_kill_9_of_the_daemon_mid_run_then_a_restart_readopts_the_ray_run(cluster, tmp_path):
    # short monitor windows: state.json names the run while it trains, so the kill lands mid-run
    cfg = daemon_config(tmp_path, cluster, default_monitor_seconds=1, evo_period_cycles=99)
    trainer = tmp_path / "tiny.yaml"
    # 12 epochs: long enough to outlive the kill and the restart (seconds), short enough to be followed to its
    # end inside one window on a loaded machine (30 epochs once outlasted a 700 s window there)
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.3}, run={"epochs": 12})))
    config = tmp_path / "daemon.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "loop.cli.main", "start", "--daemon-config", str(config), "--foreground",
            "--max-cycles", "3"]
    daemon_log = open(tmp_path / "daemon.log", "wb")
    daemon = subprocess.Popen(argv, cwd=REPO, env=env, stdout=daemon_log, stderr=subprocess.STDOUT)
    state_path = tmp_path / "ws" / "state.json"

    def active():
        try:
            runs = json.loads(state_path.read_text()).get("active_runs")
            return runs[0] if runs else None
        except (OSError, ValueError):
            return None

    try:
        wait_for(lambda: active() is not None or daemon.poll() is not None, 120, "a run to be active")
        assert daemon.poll() is None, (tmp_path / "daemon.log").read_text()[-3000:]
        run = active()
        assert run["executor"] == "ray"
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        ray.init(address=cluster.address, namespace="llmloop-test", ignore_reinit_error=True)
        assert ray.get_actor(run["task"], namespace="llmloop-test") is not None   # the run outlived its daemon
        # follow it to its end: the window closes as soon as it ends, however long that takes here
        config.write_text(yaml.safe_dump({**cfg, "default_monitor_seconds": 760, "max_monitor_seconds": 760}))
        again = subprocess.run(argv[:-1] + ["1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=840)
        assert again.returncode == 0, again.stderr[-2000:]
        starts = [json.loads(ln) for ln in (tmp_path / "ws" / "events.jsonl").open() if '"daemon_start"' in ln]
        assert starts[-1]["reaped"]["adopted_run"] == run["label"]
        cycles = [json.loads(ln) for ln in (tmp_path / "ws" / "events.jsonl").open() if '"kind": "cycle"' in ln]
        followed = [c["followed_run"] for c in cycles if c.get("followed_run")]
        assert any(f["label"] == run["label"] and f["status"] == "ok" for f in followed), followed
    finally:
        if daemon.poll() is None:
            daemon.kill()
        for name in ray.util.list_named_actors():     # a failure leaves no actor to fill the next test's cluster
            if str(name).startswith("llmloop-"):
                ray.kill(ray.get_actor(name), no_restart=True)


def test_a_full_cluster_makes_a_run_wait_not_block(cluster, tmp_path):
    """More runs than the cluster holds: without waiting the extra one is refused at once, with
    waiting it starts once a run ends; a stop while waiting gives up."""
    ex = executor(cluster, tmp_path, num_cpus_per_run=2)     # 2 CPUs a run: one run fills a node
    full = [ex.submit(plan(tmp_path, f"fill{i}", "import time; time.sleep(4)"), cycle=1) for i in range(2)]
    assert all(r is not None for r in full)
    assert ex.submit(plan(tmp_path, "extra", "print('x')"), cycle=1, wait=False) is None
    assert ex.submit(plan(tmp_path, "stopped", "print('x')"), cycle=1, should_stop=lambda: True) is None
    waited, result = [], {}

    def submit_late():
        result["late"] = ex.submit(plan(tmp_path, "late", "print('late')"), cycle=1, on_wait=lambda: waited.append(1))

    import threading

    t = threading.Thread(target=submit_late)
    t.start()
    wait_for(lambda: waited == [1], 30, "the late run to wait for room")
    for run in full:         # collecting a finished run ends its actor: its node is free again
        assert monitor(ex, run, 60, lambda: False, poll_seconds=0.1) == "finished"
    t.join(60)
    late = result["late"]
    assert late is not None and monitor(ex, late, 60, lambda: False, poll_seconds=0.1) == "finished"
