"""The executor interface and the device slot pool, with real processes: slots are planned per
GPU or per CPU share, shared across processes through lease files, freed when their process dies,
and every training (daemon run, candidate) waits for one."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from loop.run.local_executor import LocalExecutor
from loop.run.plan import RunPlan
from loop.run.slots import DeviceSlot, SlotPool, plan_slots
from loop.run.supervise import exit_code, monitor, run_all
from tests.conftest import exited

# A trace id of its own per test run: a run is killed with every process carrying its tag (trace:label),
# and two test runs on one machine (a developer's and CI) must not kill each other's runs.
UNIQUE_TRACE = f"t-{uuid.uuid4().hex[:8]}"

def test_slots_are_planned_per_gpu_or_per_cpu_share():
    gpus = plan_slots("auto", None, gpus=2, cpus=16)
    assert [(s.gpu, s.threads, s.device) for s in gpus] == [(0, 8, "cuda:0"), (1, 8, "cuda:1")]
    chosen = plan_slots([0, 2], None, gpus=4, cpus=16)
    assert [s.gpu for s in chosen] == [0, 2] and chosen[1].env()["CUDA_VISIBLE_DEVICES"] == "2"
    cpu = plan_slots("auto", None, gpus=0, cpus=2)
    assert len(cpu) == 1 and cpu[0].threads == 2 and cpu[0].env()["CUDA_VISIBLE_DEVICES"] == ""
    assert [s.threads for s in plan_slots("auto", 3, gpus=0, cpus=12)] == [4, 4, 4]
    assert len(plan_slots("auto", None, gpus=0, cpus=16)) == 4
    assert cpu[0].env()["OMP_NUM_THREADS"] == "2"


def _sleeper(seconds: float = 30) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])


def test_leases_are_shared_across_pools_and_freed_when_their_process_dies(tmp_path):
    slots = [DeviceSlot(0, None, 1), DeviceSlot(1, None, 1)]
    a, b = SlotPool(tmp_path, slots), SlotPool(tmp_path, slots)      # two processes' views of one pool
    p1, p2 = _sleeper(), _sleeper()
    try:
        s1 = a.try_acquire("run:one")
        a.bind(s1, "run:one", p1.pid, psutil.Process(p1.pid).create_time())
        s2 = b.try_acquire("candidate:two")
        b.bind(s2, "candidate:two", p2.pid, psutil.Process(p2.pid).create_time())
        assert {s1.index, s2.index} == {0, 1}
        assert b.try_acquire("phase:three") is None                 # every slot held
        assert a.try_acquire("run:one") == s1                       # a holder gets its own slot back
        p1.kill()
        p1.wait()
        got = b.try_acquire("phase:three")                          # the dead holder's slot is free
        assert got == s1 and {lease.holder for lease in a.leases()} == {"candidate:two", "phase:three"}
        b.release("candidate:two")
        assert {lease.holder for lease in a.leases()} == {"phase:three"}
    finally:
        for p in (p1, p2):
            p.kill()
            p.wait()


def test_a_reservation_dies_with_the_process_that_made_it(tmp_path):
    """A daemon killed between reserving a slot and starting its run must not block the slot."""
    pool = SlotPool(tmp_path, [DeviceSlot(0, None, 1)])
    code = ("from loop.run.slots import SlotPool, DeviceSlot; "
            f"assert SlotPool({str(tmp_path)!r}, [DeviceSlot(0, None, 1)]).try_acquire('daemon:x') is not None")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    assert pool.try_acquire("run:a") is not None           # the reserving process is gone: free
    assert pool.try_acquire("run:b") is None                # reserved by this (live) process: held


def test_acquire_waits_for_a_slot_and_gives_up_on_stop(tmp_path):
    pool = SlotPool(tmp_path, [DeviceSlot(0, None, 1)])
    p = _sleeper(1.0)
    pool.bind(pool.try_acquire("first"), "first", p.pid, psutil.Process(p.pid).create_time())
    waited = []
    t0 = time.monotonic()
    slot = pool.acquire("second", on_wait=lambda: waited.append(1), poll_seconds=0.05)
    assert slot is not None and waited == [1] and time.monotonic() - t0 >= 0.5
    p.wait()
    assert pool.acquire("third", should_stop=lambda: True, poll_seconds=0.05) is None


def _plan(tmp_path: Path, name: str, code: str, walltime: float | None = None) -> RunPlan:
    return RunPlan(name, UNIQUE_TRACE, "command", [sys.executable, "-c", code], tmp_path / name, walltime, None)


def test_runs_get_their_slot_environment_and_never_exceed_the_pool(tmp_path):
    pool = SlotPool(tmp_path / "slots", [DeviceSlot(0, None, 3)])
    ex = LocalExecutor(Path.cwd(), sandbox=None, pool=pool)
    code = ("import os, time; from pathlib import Path; "
            "Path('env.txt').write_text(os.environ['OMP_NUM_THREADS'] + ' ' + os.environ['LLMLOOP_DEVICE'] + ' ' + "
            "repr(os.environ['CUDA_VISIBLE_DEVICES'])); "
            "Path('t.txt').write_text(f'{time.time()} '); time.sleep(0.6); "
            "Path('t.txt').write_text(Path('t.txt').read_text() + f'{time.time()}')")
    plans = []
    for name in ("a", "b", "c"):
        plans.append(_plan(tmp_path, name, code.replace("'env.txt'", f"'{tmp_path / name}-env.txt'")
                           .replace("'t.txt'", f"'{tmp_path / name}-t.txt'")))
    finished = []
    status = run_all(ex, plans, max_parallel=3, on_finish=lambda run, st: finished.append((run, st)))
    assert status == {"a": "finished", "b": "finished", "c": "finished"}
    assert all(exit_code(run) == 0 and run.device == "cpu" and run.slot == 0 for run, _ in finished)
    assert (tmp_path / "a-env.txt").read_text() == "3 cpu ''"
    import json

    placed = json.loads((tmp_path / "a" / "placement.json").read_text())
    assert placed["device"] == "cpu" and placed["slot"] == 0 and placed["executor"] == "local"
    spans = sorted(tuple(map(float, (tmp_path / f"{n}-t.txt").read_text().split())) for n in "abc")
    assert all(spans[i][1] <= spans[i + 1][0] for i in range(2))   # one slot: never two at once
    assert pool.leases() == []                                      # every slot given back


def test_a_run_past_its_walltime_is_killed_and_its_slot_freed(tmp_path):
    pool = SlotPool(tmp_path / "slots", [DeviceSlot(0, None, 1)])
    ex = LocalExecutor(Path.cwd(), sandbox=None, pool=pool)
    run = ex.submit(_plan(tmp_path, "slow", "import time; time.sleep(60)", walltime=0.5), cycle=1)
    assert [lease.pid for lease in pool.leases()] == [run.pid]
    assert monitor(ex, run, 30, lambda: False, poll_seconds=0.05) == "timed_out"
    assert exited(run.pid)                               # killed (a zombie only waits for its reaper)
    assert pool.leases() == []                          # freed, zombie or not
    assert not list((tmp_path / "slots").glob("slot-*.json"))   # given back, not merely left stale
    assert pool.try_acquire("next-run").index == 0


@pytest.mark.slow
def test_an_evolution_window_and_a_daemon_run_share_one_slot(tmp_path):
    """The seen failure: a window opened beside a daemon run trained 3 candidates next to it. With one
    CPU slot, the window's candidates wait while another process holds the slot."""
    import yaml

    from loop.candidates.window import run_window
    from loop.config import DaemonConfig, validate
    from tests.conftest import tiny_config_dict

    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.1})))
    cfg = validate(DaemonConfig, {"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer),
                                  "sandbox": "optional", "cpu_slots": 1, "max_concurrent_experiments": 2,
                                  "evolution": {"rules": {"per_class_accuracy_floor": None}}}, "<test>")
    ws = Path(cfg.workspace)
    pool = SlotPool(ws / "slots", plan_slots("auto", 1))
    holder = _sleeper(3.0)            # "the daemon's run" in another process holds the only slot
    pool.bind(pool.try_acquire("daemon:run"), "daemon:run", holder.pid, psutil.Process(holder.pid).create_time())
    t0 = time.monotonic()
    result = run_window(cfg, ws, cycle=1, count=2, say=lambda *_: None)
    holder.wait()
    freed = t0 + 3.0
    assert len(result.ranking) == 2 and all(o.returncode == 0 for o in result.ranking)
    log = (ws / "models" / "evolution.log").read_text()
    assert log.count("on cpu") == 2
    # each candidate started (its finish time less its duration) only once the slot was free
    import datetime as dt

    wall_t0 = time.time() - (time.monotonic() - t0)
    for m in re.finditer(r"^(\S+ \S+) \S+: training exit 0 \(finished\) on cpu in (\d+)s", log, flags=re.M):
        started = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() - int(m.group(2))
        assert started >= wall_t0 + (freed - t0) - 2.0, log
    assert pool.leases() == []


def test_the_sandbox_shows_a_run_only_its_own_gpu_node():
    from loop.run.sandbox import gpu_device_nodes

    nodes = ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia2", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    import loop.run.sandbox as sandbox

    real = sandbox.glob.glob
    sandbox.glob.glob = lambda pattern: nodes if pattern == "/dev/nvidia*" else real(pattern)
    try:
        assert gpu_device_nodes([1]) == ["/dev/nvidia-uvm", "/dev/nvidia1", "/dev/nvidiactl", "/dev/dri"]
        assert gpu_device_nodes([]) == ["/dev/nvidia-uvm", "/dev/nvidiactl", "/dev/dri"]    # a CPU slot
        assert len(gpu_device_nodes(None)) == 6
    finally:
        sandbox.glob.glob = real


def test_the_local_and_the_ray_executor_keep_the_executor_contract():
    """`Executor` (loop/run/supervise.py) is a Protocol: both executors have each of its methods,
    with the same parameters, and its `kind`."""
    import inspect

    from loop.run.ray_executor import RayExecutor
    from loop.run.supervise import Executor

    methods = [name for name, value in vars(Executor).items() if callable(value) and not name.startswith("_")]
    assert {"submit", "alive", "kill", "collect", "adopt", "cancel_strays", "describe"} <= set(methods)
    for cls in (LocalExecutor, RayExecutor):
        assert cls.kind in ("local", "ray")
        for name in methods:
            wanted = list(inspect.signature(getattr(Executor, name)).parameters)
            assert list(inspect.signature(getattr(cls, name)).parameters) == wanted, (cls.__name__, name)
