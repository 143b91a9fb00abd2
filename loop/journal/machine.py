"""The machine a night ran on, collected once when the daemon starts and stored with its
`daemon_start` event, so a report written later (or on another machine) describes the machine that
trained, not the one that reads.

Collected without importing torch: its version and the CUDA it was built with come from the package's
metadata and its `torch/version.py` read as text; GPUs from `nvidia-smi` when it is on PATH, or from
torch only when the process has already imported it. A start never pays for a torch import here."""
from __future__ import annotations

import ast
import os
import platform
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

from pydantic import Field, ValidationError

from loop.config.load import StrictModel

NVIDIA_SMI_TIMEOUT_S = 10.0     # a wedged driver must not hold the start up for long
NVIDIA_SMI_QUERY = ["--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]


class GpuFacts(StrictModel):
    name: str
    memory_mb: int | None = None


class MachineFacts(StrictModel):
    """Where a night ran: CPU, memory, GPUs, and the torch / CUDA that trained."""

    # ---- the host ----
    hostname: str = ""
    os: str = ""
    python: str = ""
    # ---- CPU and memory ----
    cpu_model: str = ""
    cpu_cores: int = 0                 # logical CPUs of the machine
    cpu_usable: int = 0                # those this process may run on (affinity, a container's cpuset)
    memory_gb: float | None = None
    # ---- GPUs ----
    gpus: list[GpuFacts] = Field(default_factory=list)
    gpu_source: str = "none"           # nvidia-smi | torch | none
    gpu_note: str = ""                 # why no GPU is listed (no nvidia-smi, it failed, torch sees none)
    gpu_driver: str = ""
    # ---- the software that trained ----
    torch: str = ""                    # "" when torch is not installed
    torch_cuda: str = ""               # the CUDA torch was built with; "" for a CPU-only build
    collect_seconds: float = 0.0       # what collecting these cost the start

    def cpu_text(self) -> str:
        cores = f"{self.cpu_cores} cores" + (f" ({self.cpu_usable} usable)" if self.cpu_usable
                                              and self.cpu_usable != self.cpu_cores else "")
        memory = f", {self.memory_gb:.0f} GB RAM" if self.memory_gb else ""
        return f"{self.cpu_model or 'unknown CPU'}, {cores}{memory}"

    def gpu_text(self) -> str:
        if not self.gpus:
            return "no GPU" + (f" ({self.gpu_note})" if self.gpu_note else "")
        names: dict[str, int] = {}
        for g in self.gpus:
            label = g.name + (f" {g.memory_mb / 1024:.0f} GB" if g.memory_mb else "")
            names[label] = names.get(label, 0) + 1
        return ", ".join(f"{n} x {label}" if n > 1 else label for label, n in names.items())

    def software_text(self) -> str:
        if not self.torch:
            return "torch not installed"
        build = f"built with CUDA {self.torch_cuda}" if self.torch_cuda else "CPU-only build"
        return f"torch {self.torch} ({build})"

    def describe(self) -> str:
        """One line: 'AMD EPYC, 16 cores, 128 GB RAM; NVIDIA H100 80 GB; torch 2.5.1 (built with CUDA 12.4)'."""
        return f"{self.cpu_text()}; {self.gpu_text()}; {self.software_text()}"

    @classmethod
    def from_event(cls, event: dict) -> "MachineFacts | None":
        """The facts a daemon_start event carries (None: an event from before they were recorded, or
        one this version cannot read)."""
        try:
            return cls.model_validate(event["machine"]) if isinstance(event.get("machine"), dict) else None
        except ValidationError:
            return None


# ------------------------------------------------------------- collect ----

def collect_machine() -> MachineFacts:
    """This machine's facts, torch-free unless torch is already imported."""
    started = time.perf_counter()
    torch_version, torch_cuda = torch_versions()
    gpus, source, note, driver = gpus_from_nvidia_smi()
    if source == "none" and "torch" in sys.modules:
        gpus, source, note = gpus_from_torch(note)
    facts = MachineFacts(hostname=platform.node(), os=platform.platform(terse=True), python=platform.python_version(),
                         cpu_model=cpu_model(), cpu_cores=os.cpu_count() or 0, cpu_usable=usable_cpus(),
                         memory_gb=memory_gb(), gpus=gpus, gpu_source=source, gpu_note=note, gpu_driver=driver,
                         torch=torch_version, torch_cuda=torch_cuda)
    facts.collect_seconds = round(time.perf_counter() - started, 4)
    return facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)      # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def torch_versions() -> tuple[str, str]:
    """torch's version from its package metadata, and the CUDA it was built with from its
    version.py read as text (importing torch costs seconds)."""
    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        return "", ""
    try:
        spec = find_spec("torch")
        locations = list(spec.submodule_search_locations or []) if spec else []
        tree = ast.parse(Path(locations[0], "version.py").read_text(encoding="utf-8"))
    except (ImportError, OSError, IndexError, SyntaxError, ValueError):
        return torch_version, ""
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if isinstance(target, ast.Name) and target.id == "cuda" and isinstance(node.value, ast.Constant):
            return torch_version, str(node.value.value or "")
    return torch_version, ""


def gpus_from_nvidia_smi() -> tuple[list[GpuFacts], str, str, str]:
    """(GPUs, source, note, driver): source 'nvidia-smi' when it answers, else 'none' with why."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "none", "no nvidia-smi on PATH", ""
    try:
        done = subprocess.run([exe, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return [], "none", f"nvidia-smi failed: {type(exc).__name__}", ""
    if done.returncode != 0:
        return [], "none", f"nvidia-smi exited {done.returncode}", ""
    gpus, driver = parse_nvidia_smi(done.stdout)
    return gpus, "nvidia-smi", "" if gpus else "nvidia-smi lists none", driver


def parse_nvidia_smi(stdout: str) -> tuple[list[GpuFacts], str]:
    """GPUs and the driver from `nvidia-smi --query-gpu=name,memory.total,driver_version
    --format=csv,noheader,nounits` (one 'name, MiB, driver' line a GPU; '[N/A]' memory: unknown)."""
    gpus, driver = [], ""
    for line in stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[0]:
            memory = parts[1]
            gpus.append(GpuFacts(name=parts[0], memory_mb=int(float(memory)) if memory.replace(".", "", 1).isdigit()
                                 else None))
            driver = parts[2] if len(parts) > 2 else driver
    return gpus, driver


def gpus_from_torch(note: str) -> tuple[list[GpuFacts], str, str]:
    """The GPUs torch sees; only called when torch is already imported."""
    torch = sys.modules["torch"]
    try:
        if not torch.cuda.is_available():
            return [], "torch", f"{note}; torch sees no CUDA device"
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    except Exception as exc:            # a broken driver: said, never a failed start
        return [], "none", f"{note}; torch.cuda failed: {type(exc).__name__}"
    return [GpuFacts(name=p.name, memory_mb=int(p.total_memory // 2 ** 20)) for p in props], "torch", ""
