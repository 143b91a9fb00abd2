"""One pool of device slots for everything that trains on this machine: the daemon's runs, the
evolution window's candidates and PHASE all take a slot and wait for one, so a window opened
beside a daemon run no longer puts four trainings on two cores.

A slot is one GPU (`CUDA_VISIBLE_DEVICES` set to it; round-robin over the visible GPUs, or the
config's `devices: [0, 2]`), or on a machine without one a share of the CPU threads
(`OMP_NUM_THREADS`). The pool lives in `<workspace>/slots/`: one lease file per slot in use, naming
its holder and the process that holds it. Leases are taken and given back under one file lock, so
several processes (the daemon, `llmloop evolve`, PHASE) share the pool. A lease whose process is
gone (a run that ended while its daemon was down, a killed `llmloop evolve`) is free again: a
crash never leaks a slot, and a run re-adopted after a daemon restart keeps its own.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from filelock import FileLock

from loop.run.kill import same_process
from loop.util.fsutil import atomic_write_text
from loop.util.workspace import Workspace

RESERVE_SECONDS = 120.0      # a lease taken but never bound to a process is stale after this


@dataclass(frozen=True)
class DeviceSlot:
    """Where one training runs: a GPU, or a share of the CPU threads."""

    index: int
    gpu: int | None
    threads: int

    @property
    def device(self) -> str:
        return f"cuda:{self.gpu}" if self.gpu is not None else "cpu"

    def describe(self) -> str:
        return f"{self.device} (slot {self.index}, {self.threads} CPU thread{'s' if self.threads != 1 else ''})"

    def env(self) -> dict[str, str]:
        """What a run on this slot sees: its one GPU (or none) and its thread share."""
        threads = str(self.threads)
        return {"CUDA_VISIBLE_DEVICES": "" if self.gpu is None else str(self.gpu), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                "OMP_NUM_THREADS": threads,
                "MKL_NUM_THREADS": threads, "LLMLOOP_DEVICE": self.device, "LLMLOOP_SLOT": str(self.index)}


def plan_slots(devices: str | list[int], cpu_slots: int | None, gpus: int | None = None,
               cpus: int | None = None) -> list[DeviceSlot]:
    """The machine's slots: one per GPU (all visible ones for `auto`, else the listed ones), or,
    without a GPU, `cpu_slots` shares of the CPU (default: one per 4 cores, at least one)."""
    gpus = visible_gpus() if gpus is None else gpus
    cpus = cpus or os.cpu_count() or 1
    if devices == "auto":
        chosen = list(range(gpus))
    else:
        chosen = [d for d in devices if d < gpus] if gpus else []
    if chosen:
        per = max(1, cpus // len(chosen))
        return [DeviceSlot(index=i, gpu=g, threads=per) for i, g in enumerate(chosen)]
    n = cpu_slots or max(1, cpus // 4)
    per = max(1, cpus // n)
    return [DeviceSlot(index=i, gpu=None, threads=per) for i in range(n)]


# A GPU driver shows itself here (NVIDIA's kernel module, its control device; ROCm's compute device).
GPU_DRIVER_MARKERS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def visible_gpus() -> int:
    """The GPUs torch sees. Without a GPU driver on the machine: 0, without importing torch (2 CPU-s
    and 300 MB in a daemon that may never train itself)."""
    if not any(os.path.exists(marker) for marker in GPU_DRIVER_MARKERS):
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 (a broken CUDA install means: no GPU slots)
        return 0


@dataclass
class Lease:
    slot: int
    holder: str                      # a run tag, "candidate:<name>", "phase:<id>"
    pid: int | None = None           # the process that holds it (None: reserved, not yet started)
    create_time: float | None = None
    since: float = 0.0
    reserved: bool = False           # taken by the process that will start the holder, not yet bound


class SlotPool:
    """The machine's slots, shared through lease files in `folder`."""

    def __init__(self, folder: str | Path, slots: list[DeviceSlot]):
        self.folder = Path(folder)
        self.slots = slots
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.folder / "pool.lock"), mode=0o666)

    def _lease_path(self, index: int) -> Path:
        return self.folder / f"slot-{index}.json"

    def _read(self, index: int) -> Lease | None:
        try:
            return Lease(**json.loads(self._lease_path(index).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _held(self, lease: Lease | None) -> bool:
        if lease is None:
            return False
        if lease.pid is None or lease.create_time is None:     # an unreadable owner: held for a while only
            return time.time() - lease.since < RESERVE_SECONDS
        return same_process(lease.pid, lease.create_time) is not None

    def leases(self) -> list[Lease]:
        """The live leases (stale ones are not shown)."""
        with self._lock:
            return [lease for s in self.slots if self._held(lease := self._read(s.index))]

    def try_acquire(self, holder: str) -> DeviceSlot | None:
        """A free slot, reserved for `holder`; None when every slot is held."""
        with self._lock:
            for slot in self.slots:
                lease = self._read(slot.index)
                if lease is not None and lease.holder == holder and self._held(lease):
                    return slot                  # already ours (a re-adopted run)
            for slot in self.slots:
                if not self._held(self._read(slot.index)):
                    # reserved by this process until the run's own process binds it: a kill -9 of
                    # the reserving process in between frees the slot at once
                    me = psutil.Process()
                    atomic_write_text(self._lease_path(slot.index), json.dumps(asdict(Lease(
                        slot.index, holder, me.pid, me.create_time(), time.time(), reserved=True))))
                    return slot
        return None

    def acquire(self, holder: str, should_stop=lambda: False, poll_seconds: float = 0.5,
                on_wait=None) -> DeviceSlot | None:
        """Wait for a slot (None if `should_stop` turns true first); `on_wait()` once when it must wait."""
        waited = False
        while True:
            slot = self.try_acquire(holder)
            if slot is not None or should_stop():
                return slot
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            time.sleep(poll_seconds)

    def bind(self, slot: DeviceSlot, holder: str, pid: int, create_time: float | None) -> None:
        """The process that now holds the slot: the lease lives exactly as long as it does."""
        with self._lock:
            atomic_write_text(self._lease_path(slot.index),
                              json.dumps(asdict(Lease(slot.index, holder, pid, create_time, time.time()))))

    def release(self, holder: str) -> None:
        """Give back every slot `holder` holds (nothing happens when it holds none)."""
        with self._lock:
            for slot in self.slots:
                lease = self._read(slot.index)
                if lease is not None and lease.holder == holder:
                    self._lease_path(slot.index).unlink(missing_ok=True)


def pool_for(cfg, ws_root: str | Path) -> SlotPool:
    """The workspace's pool for this config (`devices`, `cpu_slots`)."""
    return SlotPool(Workspace(ws_root).slots, plan_slots(cfg.devices, cfg.cpu_slots))
