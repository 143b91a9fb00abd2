"""The machine record a daemon stores with its daemon_start event (loop/journal/machine.py): collected
in a real subprocess, compared with what this machine says read raw here, and never importing torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from loop.journal.machine import MachineFacts, parse_nvidia_smi
from tests.conftest import REPO

COLLECT = ("import json, sys; from loop.journal.machine import collect_machine; facts = collect_machine(); "
           "print(json.dumps({'facts': facts.model_dump(mode='json'), 'torch_imported': 'torch' in sys.modules}))")


def test_the_facts_are_this_machines_and_torch_is_never_imported():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", COLLECT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    facts = MachineFacts.model_validate(out["facts"])
    assert out["torch_imported"] is False          # a daemon start never pays for a torch import here
    cpu = next((ln.split(":", 1)[1] for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "")
    assert facts.cpu_model == " ".join(cpu.split()) and facts.cpu_cores == os.cpu_count()
    assert facts.cpu_usable == len(os.sched_getaffinity(0))
    mem_kb = int(next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:"))
                 .split()[1])
    assert facts.memory_gb == round(mem_kb / 1024 ** 2, 1)
    # here, to compare with what the record read without importing it
    import torch

    assert facts.torch == version("torch") and torch.__version__.startswith(facts.torch)
    assert facts.torch_cuda == (torch.version.cuda or "")
    if facts.gpu_source == "nvidia-smi":
        assert len(facts.gpus) == torch.cuda.device_count()
    else:
        assert facts.gpus == [] and (shutil.which("nvidia-smi") or facts.gpu_note == "no nvidia-smi on PATH")
    assert facts.describe().startswith(f"{facts.cpu_model}, {facts.cpu_cores} cores")
    assert f"torch {facts.torch} (" in facts.describe()


def test_nvidia_smi_lines_and_an_old_event():
    gpus, driver = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 550.54.15\nNVIDIA H100 80GB HBM3, 81559, "
                                    "550.54.15\nTesla T4, [N/A], 550.54.15\n")
    assert [(g.name, g.memory_mb) for g in gpus] == [("NVIDIA H100 80GB HBM3", 81559)] * 2 + [("Tesla T4", None)]
    assert driver == "550.54.15"
    facts = MachineFacts(cpu_model="AMD EPYC 9654", cpu_cores=16, memory_gb=128.0, gpus=gpus, gpu_source="nvidia-smi",
                         torch="2.5.1", torch_cuda="12.4")
    assert facts.describe() == ("AMD EPYC 9654, 16 cores, 128 GB RAM; 2 x NVIDIA H100 80GB HBM3 80 GB, Tesla T4; "
                                "torch 2.5.1 (built with CUDA 12.4)")
    assert MachineFacts.from_event({"kind": "daemon_start"}) is None                 # before the record existed
    assert MachineFacts.from_event({"machine": {"cpu_cores": "many"}}) is None      # one this version cannot read
