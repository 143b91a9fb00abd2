"""The GPU path, checked end to end (run by bench/gpu_check.sh; see its header). Each step is one
row of the table: what ran, its result, and the figure it produced.

  trainer amp+cl   `train()` on digits at 32 px, run.device cuda, amp on, channels_last on
  sandbox gpu      a run through the local executor and the real sandbox (bubblewrap when present)
                   on slot 0: it must see exactly one CUDA device
  two gpus         two runs at once on two GPU slots, each seeing its own GPU (skipped with one GPU)
  throughput       trainer vs a bare torch loop over pre-normalised tensors on the GPU (images/s of
                   epochs 2-3, AMP and channels_last on both sides), ratio trainer/bare

--cpu-dry-run runs the same steps on the CPU with tiny sizes (1 epoch, 16 px, a quarter of the split):
it proves the script itself works on a machine without a GPU (its figures mean nothing); it is the
smoke size tests/test_bench_smoke.py runs, and it never writes RESULTS.md.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loop.config import DaemonConfig, validate  # noqa: E402
from loop.domains import resolve_domain  # noqa: E402
from loop.run.local_executor import LocalExecutor  # noqa: E402
from loop.run.plan import RunPlan  # noqa: E402
from loop.run.sandbox_setup import load_sandbox  # noqa: E402
from loop.run.slots import SlotPool, plan_slots  # noqa: E402
from loop.run.supervise import run_all  # noqa: E402
from loop.trainer.config import TrainerConfig  # noqa: E402
from loop.trainer.data import ImageDataset  # noqa: E402
from loop.trainer.train import train  # noqa: E402
from loop.util.exiting import exit_process  # noqa: E402

DRY = "--cpu-dry-run" in sys.argv
DEVICE = "cpu" if DRY else "cuda"
EPOCHS = 1 if DRY else 4
BATCH = 64 if DRY else 256
SIZE = 16 if DRY else 32          # image side in px
FRACTION = 0.25 if DRY else 1.0   # share of the digits train split (the dry run only proves the script)
PROBE = ("import os, torch; print(os.environ.get('CUDA_VISIBLE_DEVICES'), torch.cuda.device_count(), "
         "torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); "
         "import gc; gc.freeze()")     # its exit skips the collector's walk over torch's objects


def trainer_cfg(epochs: int) -> TrainerConfig:
    return validate(TrainerConfig, {
        "data": {"domain": "digits", "image_size": SIZE, "batch_size": BATCH, "augment": [],
                 "train_fraction": FRACTION},
        "model": {"name": "resnet10t"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0},
        "schedule": {"name": "constant", "warmup_epochs": 0},
        "run": {"seed": 0, "epochs": epochs, "device": DEVICE, "amp": "off" if DRY else "on",
                "channels_last": "off" if DRY else "on", "log_every_steps": 1000}}, "<gpu_check>")


def step_trainer() -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        m = train(trainer_cfg(EPOCHS), Path(tmp) / "run")
    return m.status, f"val acc {m.eval.accuracy:.4f}, {m.images_per_second:.0f} img/s on {m.device}"


def executor(tmp: Path, gpus: list[int] | None) -> LocalExecutor:
    cfg = validate(DaemonConfig, {"workspace": str(tmp / "ws"), "sandbox": "optional"}, "<gpu_check>")
    slots = plan_slots(gpus if gpus is not None else "auto", 1)
    return LocalExecutor(ROOT, load_sandbox(cfg, ROOT, tmp / "ws"), SlotPool(tmp / "ws" / "slots", slots))


def probe_runs(n: int) -> tuple[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ex = executor(tmp, None if DRY else list(range(n)))
        plans = [RunPlan(f"probe{i}", "gpu", "command", [sys.executable, "-c", PROBE], tmp / f"probe{i}", 120, None)
                 for i in range(n)]
        runs = []
        status = run_all(ex, plans, max_parallel=n, on_finish=lambda run, st: runs.append(run))
        seen = [(run.device, (Path(run.log_path).read_text().strip().splitlines() or ["?"])[-1]) for run in runs]
        ok = all(s == "finished" for s in status.values()) and (DRY or all(line.split()[1] == "1" for _, line in seen))
        return ("ok" if ok else "FAILED"), "; ".join(f"{d}: CUDA_VISIBLE_DEVICES/count/name = {line}"
                                                     for d, line in seen) + f" ({ex.sandbox.note})"


def bare_loop(domain, epochs: int) -> float:
    dev = torch.device(DEVICE)
    ds = ImageDataset(domain.splits.train, SIZE)
    n = round(len(ds) * FRACTION)
    mean, std = (torch.tensor(v, device=dev).view(1, -1, 1, 1) * 255 for v in domain.norm_stats)
    x_all = ((ds.all_images()[:n].to(dev).float() - mean) / std)
    y_all = ds.labels[:n].to(dev)
    model = timm.create_model("resnet10t", num_classes=domain.num_classes, in_chans=domain.in_chans).to(dev)
    if not DRY:
        model = model.to(memory_format=torch.channels_last)
        x_all = x_all.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    rate = 0.0
    for _ in range(epochs):
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0, images = time.perf_counter(), 0
        perm = torch.randperm(n, device=dev)
        for s in range(n // BATCH):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=not DRY):
                loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            images += len(idx)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        rate = images / (time.perf_counter() - t0)      # the last epoch: warm
    return rate


def step_throughput() -> tuple[str, str]:
    domain = resolve_domain("digits")
    bare = bare_loop(domain, EPOCHS)
    with tempfile.TemporaryDirectory() as tmp:
        m = train(trainer_cfg(EPOCHS), Path(tmp) / "run", domain=domain)
    last = m.curve[-1]
    steps = round(len(domain.splits.train) * FRACTION) // BATCH
    trainer = steps * BATCH / last.seconds
    return "ok", f"bare {bare:.0f} img/s, trainer {trainer:.0f} img/s (last epoch, validation included), " \
                 f"ratio {trainer / bare:.3f}"


def main() -> None:
    from _results import machine_facts, write_section

    facts = machine_facts()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows = []
    for name, step in (("trainer amp+cl", step_trainer), ("sandbox gpu", lambda: probe_runs(1)),
                       ("two gpus", lambda: probe_runs(2) if (DRY or gpus >= 2) else ("skipped", f"{gpus} GPU")),
                       ("throughput", step_throughput)):
        t0 = time.perf_counter()
        try:
            status, figure = step()
        except Exception as exc:  # noqa: BLE001 (a failed step is a row, the others still run)
            status, figure = "FAILED", f"{type(exc).__name__}: {exc}"[:300]
        rows.append((name, status, figure, time.perf_counter() - t0))
    table = ["| step | result | figure | seconds |", "|---|---|---|---|"]
    table += [f"| {n} | {s} | {f} | {t:.1f} |" for n, s, f, t in rows]
    body = ("(CPU dry run: proves the script, the figures mean nothing)\n\n" if DRY else "") + "\n".join(table)
    print(body)
    if not DRY:
        write_section("gpu_check", body, facts)
    print(json.dumps({"failed": [r[0] for r in rows if r[1] == "FAILED"]}))
    exit_process(1 if any(r[1] == "FAILED" for r in rows) else 0)    # no collector walk over torch's objects


if __name__ == "__main__":
    main()
