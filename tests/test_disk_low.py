"""A real daemon whose workspace sits on a small tmpfs (mounted here, as root; skipped with the reason
where mounting is refused): under `retention.min_free_gb` it starts no cycle, writes one `disk_low`
and `llmloop status` says it waits and why; with space back it writes `disk_ok` and cycles again,
its retention sweep pruning as it goes; a disk filled to the last byte during its cycles leaves no
corrupt state.json, events.jsonl, runs index or archive entry, and it waits again once the floor
shows. Offline policy, timm's test_efficientnet (0.4 MB of weights) on a slice of digits."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from loop.cycle.state import LoopState
from loop.journal.events import EventLog
from tests.conftest import REPO, cli_here, tiny_config_dict, wait_for

TMPFS_MB = 24
FLOOR_MB = 8


def mount_tmpfs(folder: Path) -> str | None:
    """None once a tmpfs of TMPFS_MB is mounted on `folder`, else why not."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount -t tmpfs refused: {(done.stderr or done.stdout).strip()[:200]}"


def fill(disk: Path, leave_mb: float) -> Path:
    """A filler file that leaves about `leave_mb` free on the tmpfs (0: until ENOSPC)."""
    filler = disk / f"filler-{time.monotonic_ns()}"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    want = max(0, free - int(leave_mb * 1e6)) if leave_mb else free + (1 << 20)
    with open(filler, "wb") as fh:
        try:
            while want > 0:
                fh.write(b"\0" * min(want, 1 << 20))
                want -= 1 << 20
            fh.flush()
        except OSError:           # ENOSPC: full to the last block, as asked
            pass
    return filler


def free_mb(disk: Path) -> float:
    st = os.statvfs(disk)
    return st.f_bavail * st.f_frsize / 1e6


def cli(*args: str) -> subprocess.CompletedProcess:
    """`llmloop ARGS` with the pixel cache left to the daemon's default, the workspace's cache/pixels
    on the tmpfs (a session cache under pytest's 0700 folder is another disk, and slower to reach).
    The background start is a real process; status, archive verify and stop run in this process
    (cli_here: they read the workspace's files and act on the daemon through them)."""
    env = {k: v for k, v in os.environ.items() if k != "LLMLOOP_PIXEL_CACHE"} | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "loop.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


def log_tail(ws: Path) -> str:
    try:
        return (ws / "logs" / "daemon.log").read_text()[-3000:]
    except OSError:
        return ""


def kinds(ws: Path) -> list[str]:
    return [e["kind"] for e in EventLog(ws / "events.jsonl")]


@pytest.fixture
def disk(tmp_path):
    folder = tmp_path / "disk"
    why = mount_tmpfs(folder)
    if why:
        pytest.skip(why)
    yield folder
    pid_file = folder / "ws" / "daemon.pid"
    try:                       # a daemon the test did not stop: its session (it and its runs) goes
        os.killpg(int(pid_file.read_text().split()[0]), 9)
    except (OSError, ValueError):
        pass
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_daemon_on_a_small_disk_waits_says_why_and_never_corrupts_a_file(tmp_path, disk, capsys):
    from tests.notify_receiver import Receiver

    ws = disk / "ws"
    receiver = Receiver()                                  # disk_low must reach a person while the daemon waits
    trainer = tmp_path / "tiny.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(model={"name": "test_efficientnet"},
                                                       data={"train_fraction": 0.05})))
    cfg = tmp_path / "daemon.yaml"
    cfg.write_text(yaml.safe_dump({
        "workspace": str(ws), "default_trainer_config": str(trainer), "sandbox": "optional",
        "daemon_poll_seconds": 0, "phase": {"schedule": "off"}, "evo_period_cycles": 1000,
        "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.2},
        "evolution": {"rules": {"per_class_accuracy_floor": None}},
        "retention": {"min_free_gb": FLOOR_MB / 1000, "keep_top_k": 1, "max_workspace_gb": None,
                      "disk_poll_seconds": 0.2},
        "notify": {"urls": [receiver.url()], "events": ["disk_low", "disk_ok"], "retry_seconds": 0.5}}))
    ws.mkdir()

    # ---- under the floor from the start: no cycle, one disk_low, status says why ----
    filler = fill(disk, leave_mb=FLOOR_MB / 2)
    started = cli("start", "--daemon-config", str(cfg))
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(lambda: "disk_low" in kinds(ws), 120, "a disk_low event")
    time.sleep(1.0)                                       # a few polls: still one event, still no cycle
    assert kinds(ws).count("disk_low") == 1 and "cycle" not in kinds(ws)
    low = next(e for e in EventLog(ws / "events.jsonl") if e["kind"] == "disk_low")
    assert low["path"] == str(ws) and low["min_free_gb"] == FLOOR_MB / 1000 and low["free_gb"] < FLOOR_MB / 1000
    status = cli_here(capsys, "status", "--daemon-config", str(cfg))
    assert "WAITING: disk low" in status.stdout and "retention.min_free_gb" in status.stdout, status.stdout
    wait_for(lambda: "disk_low" in receiver.events(), 60, "the disk_low notification, sent while it waits")

    # ---- space back: disk_ok, cycles train, the sweep prunes past the top 1 ----
    filler.unlink()
    wait_for(lambda: "disk_ok" in kinds(ws), 60, "a disk_ok event")
    try:
        wait_for(lambda: "retention_sweep" in kinds(ws), 600, "a retention sweep after two trained runs", poll=0.1)
    except AssertionError:
        raise AssertionError(f"no retention sweep; the daemon's log ends:\n{log_tail(ws)}") from None
    assert "WAITING" not in cli_here(capsys, "status", "--daemon-config", str(cfg)).stdout
    sweep = next(e for e in EventLog(ws / "events.jsonl") if e["kind"] == "retention_sweep")
    assert sweep["pruned"] and sweep["bytes_freed"] > 0
    assert all("top 1" in p["reason"] for p in sweep["pruned"])

    # ---- the disk filled to the last byte while it cycles, then a little room (under the floor) ----
    full = fill(disk, leave_mb=0)
    assert free_mb(disk) < 0.1
    time.sleep(5.0)                                        # cycles (and writes) meet ENOSPC meanwhile
    with open(full, "r+b") as fh:
        fh.truncate(max(0, full.stat().st_size - int(FLOOR_MB / 2 * 1e6)))
    wait_for(lambda: kinds(ws).count("disk_low") == 2, 120, "a second disk_low once there is room to write it")
    assert "WAITING: disk low" in cli_here(capsys, "status", "--daemon-config", str(cfg)).stdout

    # ---- nothing torn, nothing half-written ----
    state = LoopState.model_validate_json((ws / "state.json").read_text())
    assert state.cycle >= 2
    for jsonl in (ws / "events.jsonl", ws / "runs" / "index.jsonl"):
        data = jsonl.read_bytes()
        assert data.endswith(b"\n")
        for line in data.splitlines():
            json.loads(line)
    strays = [str(p) for p in ws.rglob(".*.tmp") if "/runs/" not in str(p)]
    assert strays == []
    verified = cli_here(capsys, "archive", "verify", "--daemon-config", str(cfg))
    assert verified.returncode == 0, verified.stdout
    stopped = cli_here(capsys, "stop", "--wait", "60", "--daemon-config", str(cfg))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert kinds(ws)[-1] == "daemon_stop"
    assert "disk_ok" in receiver.events()
    receiver.close()
