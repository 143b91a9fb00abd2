"""A control group per run, where the machine lets the daemon make one: a hard cap on the run's
memory (its /dev/shm and /tmp tmpfs pages included), its number of tasks and, when configured, its
CPU share. The rlimits (loop/run/runwrap.py) stay beside it: they hold where no cgroup can be made
(a daemon that is not root, a container without the controllers).

runwrap (root, outside the sandbox) makes the group, moves the run's first process into it before
exec (everything the run starts inherits it), kills what is left in it when the run ends and removes
it. A group a killed runwrap left behind is removed by the next one that finds it empty and its
runwrap gone (a live runwrap's group is empty for a moment, between its making and the join).

  cgroup v1   one folder per controller: /sys/fs/cgroup/{memory,pids,cpu}/llmloop/run-<pid>
  cgroup v2   one folder: <cgroup2 mount>/llmloop/run-<pid>, the controllers enabled for llmloop/
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "llmloop"
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Caps:
    """What one run may use; None leaves that controller alone."""

    memory_bytes: int | None = None
    tasks: int | None = None
    cpus: float | None = None

    def wanted(self) -> tuple[str, ...]:
        return tuple(c for c, v in zip(CONTROLLERS, (self.memory_bytes, self.tasks, self.cpus)) if v)


@dataclass(frozen=True)
class Group:
    """The run's group: one folder per v1 controller, or one v2 folder for all of them."""

    folders: tuple[Path, ...]
    v2: bool

    def join_self(self) -> None:
        """Move the calling process in (runwrap calls it in the child, between fork and exec)."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text("0")

    def pids(self) -> set[int]:
        found: set[int] = set()
        for folder in self.folders:
            try:
                found |= {int(p) for p in (folder / "cgroup.procs").read_text().split()}
            except (OSError, ValueError):
                pass
        return found

    def oom_killed(self) -> bool:
        """Whether the memory cap killed a process of the run."""
        for folder in self.folders:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                try:
                    fields = dict(line.split() for line in (folder / name).read_text().splitlines() if " " in line)
                except (OSError, ValueError):
                    continue
                if int(fields.get(key, 0)):
                    return True
        return False

    def remove(self, patience: float = 5.0) -> None:
        """Kill whatever the run left in the group, then remove it (best effort: a folder still busy
        is removed by the next run that finds it empty)."""
        kill = self.folders[0] / "cgroup.kill"
        if self.v2 and kill.exists():
            _write(kill, "1")
        deadline = time.monotonic() + patience
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for folder in self.folders:
            try:
                folder.rmdir()
            except OSError:
                pass


def make(name: str, caps: Caps, root: Path = ROOT) -> tuple[Group | None, str]:
    """The run's group with `caps` set, or None and why not (said once in the run's log)."""
    wanted = caps.wanted()
    if not wanted:
        return None, "no cgroup caps configured"
    v2_root = _v2_root(root)
    try:
        if v2_root is not None and set(wanted) <= _v2_controllers(v2_root):
            group = _make_v2(v2_root, name, wanted)
        elif all((root / c / "cgroup.procs").exists() for c in wanted):
            group = Group(tuple(_fresh(root / c / PARENT, name) for c in wanted), v2=False)
        else:
            return None, f"no cgroup with the {', '.join(wanted)} controllers under {root}"
        _set_caps(group, caps)
    except OSError as exc:
        return None, f"cannot make a cgroup under {root}: {exc.strerror or exc}"
    return group, ""


def _set_caps(group: Group, caps: Caps) -> None:
    try:
        for folder in group.folders:
            if caps.memory_bytes and (folder / ("memory.max" if group.v2 else "memory.limit_in_bytes")).exists():
                (folder / ("memory.max" if group.v2 else "memory.limit_in_bytes")).write_text(str(caps.memory_bytes))
                if group.v2 and (folder / "memory.swap.max").exists():
                    (folder / "memory.swap.max").write_text("0")      # the cap is RAM, not RAM then swap
            if caps.tasks and (folder / "pids.max").exists():
                (folder / "pids.max").write_text(str(caps.tasks))
            if caps.cpus:
                quota = max(1000, int(caps.cpus * CPU_PERIOD_US))
                if group.v2 and (folder / "cpu.max").exists():
                    (folder / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
                elif (folder / "cpu.cfs_quota_us").exists():
                    (folder / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                    (folder / "cpu.cfs_quota_us").write_text(str(quota))
    except OSError:
        group.remove(patience=0)
        raise


def _fresh(parent: Path, name: str) -> Path:
    """`parent/name`, made fresh; empty groups a killed runwrap left beside it are removed first."""
    parent.mkdir(exist_ok=True)
    for old in parent.glob("run-*"):
        try:
            if _left_behind(old) and not (old / "cgroup.procs").read_text().strip():
                old.rmdir()
        except OSError:
            pass
    folder = parent / name
    folder.mkdir()
    return folder


def _left_behind(group: Path) -> bool:
    """A `run-<pid>` group whose runwrap is gone. A live runwrap's group is empty between its mkdir
    and its child's join; removing it then would fail that run's start (seen under load)."""
    pid = group.name.removeprefix("run-")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _v2_root(root: Path) -> Path | None:
    for candidate in (root, root / "unified"):
        if (candidate / "cgroup.controllers").exists() and (candidate / "cgroup.subtree_control").exists():
            return candidate
    return None


def _v2_controllers(v2_root: Path) -> set[str]:
    try:
        return set((v2_root / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


def _make_v2(v2_root: Path, name: str, wanted: tuple[str, ...]) -> Group:
    enable = " ".join(f"+{c}" for c in wanted)
    (v2_root / "cgroup.subtree_control").write_text(enable)
    parent = v2_root / PARENT
    parent.mkdir(exist_ok=True)
    (parent / "cgroup.subtree_control").write_text(enable)
    return Group((_fresh(parent, name),), v2=True)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError:
        pass
