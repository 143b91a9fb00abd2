"""Data pipeline at scale: throughput against a bare torch loop, and memory from 5,000 to 50,000 images.

Data: a generated folder of 50,000 PNG images, 64x64 RGB, 10 classes (a class-coloured blob at a
random place on noise), made once under ~/.cache/llmloop-bench/data_scale (reused when complete),
and two CSVs over it for the `csv_labels` domain: the first 5,000 rows and all 50,000.

Throughput (5,000-image task, resnet10t at 64 px, batch 64, SGD, no augmentation, 2 threads):
  reference  a bare torch loop over the whole train split pre-decoded into one uint8 NCHW tensor
             (and the val split likewise): each epoch a randperm shuffle, full batches, normalise
             on the fly, forward / cross-entropy / backward / step, then a forward pass over val.
  trainer    loop.trainer.train.train() with the same config, reading the memory-mapped cache.
  Both run EPOCHS epochs; the figure is epoch 2's images/s (train images / the epoch's seconds,
  its validation included on both sides): "after the first epoch". ROUNDS paired rounds, the side
  going first alternating; the headline is the median paired ratio trainer/reference (target >= 0.9).

Memory (each in a fresh process, for 5,000 and 50,000 images; the cache is built first, in its own
process): anonymous resident memory (RssAnon from /proc/self/status, sampled every 10 ms: the
memory-mapped cache's file pages are not counted) at its peak during
  run    one epoch of training at 32 px (test_resnet, the smallest timm net, so 50,000 images take
         minutes, not an hour) with its validation pass, and
  probe  LoadedModel.logits() over the four probe splits (val, recall, delta, drift).
  Target: the peak at 50,000 is less than 1.25x the peak at 5,000.

Run from the repo root: .venv/bin/python bench/data_scale.py [--rounds 2]
Smoke size (tests/test_bench_smoke.py; no RESULTS.md write): add --smoke (400 and 200 images of
32 px in a throw-away folder, never the cached 50,000; one round; the two builds share one fresh
process, and so do the two memory runs).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("LLMLOOP_BENCH_DATA", Path.home() / ".cache" / "llmloop-bench" / "data_scale"))
N_ALL, N_SMALL, SIZE, CLASSES = 50_000, 5_000, 64, 10
EPOCHS, BATCH, THREADS = 2, 64, 2
SMOKE = "--smoke" in sys.argv or os.environ.get("LLMLOOP_BENCH_SMOKE") == "1"   # children inherit the env
if SMOKE:
    N_ALL, N_SMALL, SIZE = 400, 200, 32


# ---------------------------------------------------------------- the data ----

def make_data() -> None:
    """N_ALL PNGs and the two CSVs, unless a previous run left them complete."""
    done = DATA / "complete"
    if done.exists():
        return
    from PIL import Image

    images = DATA / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(CLASSES, 3))
    rows = []
    for i in range(N_ALL):
        label = int(rng.integers(CLASSES))
        img = rng.integers(0, 90, size=(SIZE, SIZE, 3), dtype=np.uint8)
        y, x = rng.integers(0, SIZE - 24, size=2)
        img[y:y + 24, x:x + 24] = palette[label]
        Image.fromarray(img).save(images / f"{i:05d}.png", compress_level=1)
        rows.append((f"{i:05d}", f"class{label}"))
    for n in (N_SMALL, N_ALL):
        with open(DATA / f"labels_{n}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "label"])
            w.writerows(rows[:n])
    done.write_text("ok\n")


def smoke_data() -> None:
    """Point this process and its children at a fresh folder, removed at exit."""
    import atexit
    import shutil

    global DATA
    DATA = Path(tempfile.mkdtemp(prefix="data-scale-smoke-"))
    atexit.register(shutil.rmtree, DATA, ignore_errors=True)
    os.environ.update(LLMLOOP_BENCH_DATA=str(DATA), LLMLOOP_BENCH_SMOKE="1")


def domain(n: int):
    from loop.domains import resolve_domain

    return resolve_domain("csv_labels", {"csv": str(DATA / f"labels_{n}.csv"), "images": str(DATA / "images")})


# ---------------------------------------------------------------- memory ----

class AnonPeak:
    """Peak RssAnon of this process while the block runs (file-backed pages excluded)."""

    def __enter__(self):
        self.peak, self.stop = rss_anon(), threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss_anon())


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


# ----------------------------------------------------------- child modes ----

def trainer_config(n: int, model: str, size: int, epochs: int):
    from loop.trainer.config import TrainerConfig

    return TrainerConfig.model_validate({
        "data": {"domain": "csv_labels", "domain_args": {"csv": str(DATA / f"labels_{n}.csv"),
                                                         "images": str(DATA / "images")},
                 "image_size": size, "batch_size": BATCH, "num_workers": 0},
        "model": {"name": model}, "run": {"epochs": epochs, "seed": 0, "threads": THREADS, "device": "cpu"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": True},
        "schedule": {"name": "constant", "warmup_epochs": 0},
    })


def child_build(n: int) -> dict:
    """A fresh build, timed in an empty cache folder (then thrown away); the shared cache the other
    children read is built after it, untimed."""
    import shutil

    from loop.domains.pixels import CACHE_ENV

    shared = os.environ[CACHE_ENV]
    fresh = tempfile.mkdtemp(prefix="data-scale-build-")
    os.environ[CACHE_ENV] = fresh
    try:
        d = domain(n)
        d.splits  # noqa: B018 (listing and header scan: timed apart from decoding)
        t0 = time.perf_counter()
        for size in (SIZE, 32):
            d.splits.train.view(size)
        seconds = time.perf_counter() - t0
    finally:
        os.environ[CACHE_ENV] = shared
        shutil.rmtree(fresh, ignore_errors=True)
    d = domain(n)
    for size in (SIZE, 32):
        d.splits.train.view(size)
    return {"seconds": seconds}


def child_trainer(n: int) -> dict:
    from loop.trainer.train import train

    d = domain(n)
    with tempfile.TemporaryDirectory() as out:
        m = train(trainer_config(n, "resnet10t", SIZE, EPOCHS), Path(out) / "run", domain=d)
    rec = m.curve[-1]
    return {"images_per_second": len(d.splits.train) // BATCH * BATCH / rec.seconds, "val": rec.val_accuracy}


def child_reference(n: int) -> dict:
    import timm
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    d = domain(n)
    train_u8 = d.splits.train.view(SIZE)[:]               # the whole split as one tensor: the reference
    val_u8 = d.splits.val.view(SIZE)[:]
    labels = torch.as_tensor(d.splits.train.labels)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) * 255 for v in d.norm_stats)
    model = timm.create_model("resnet10t", num_classes=d.num_classes, in_chans=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = len(train_u8) // BATCH
    rate = 0.0
    for _ in range(EPOCHS):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(train_u8))
        for s in range(steps):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            x = (train_u8[idx].float() - mean) / std
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(val_u8), 256):
                model((val_u8[i:i + 256].float() - mean) / std)
        rate = steps * BATCH / (time.perf_counter() - t0)
    return {"images_per_second": rate}


def child_memory(n: int) -> dict:
    from loop.archive.probes import PROBE_SPLITS, LoadedModel
    from loop.trainer.train import train

    d = domain(n)
    d.splits   # noqa: B018 (listing, scan and splits: not what is measured)
    with tempfile.TemporaryDirectory() as out:
        with AnonPeak() as run:
            train(trainer_config(n, "test_resnet", 32, 1), Path(out) / "run", domain=d)
        with AnonPeak() as probe:
            model = LoadedModel(Path(out) / "run", d)
            for split in PROBE_SPLITS:
                model.logits(split)
    return {"run_peak_mb": run.peak / 2**20, "probe_peak_mb": probe.peak / 2**20,
            "train_images": len(d.splits.train)}


CHILDREN = {"build": child_build, "trainer": child_trainer, "reference": child_reference, "memory": child_memory}


def in_child(mode: str, n: int) -> dict:
    return in_children(mode, (n,))[n]


def in_children(mode: str, ns: tuple[int, ...]) -> dict[int, dict]:
    """One fresh process running `mode` for each image count in turn."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), LLMLOOP_PIXEL_CACHE=str(DATA / "cache"))
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--n", ",".join(map(str, ns))], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} {ns} failed:\n{done.stderr[-3000:]}")
    return {int(n): got for n, got in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def per_size(mode: str) -> dict[int, dict]:
    """`mode` for both sizes: each in its own fresh process, or (a smoke run, the same code twice) one process."""
    if SMOKE:
        return in_children(mode, (N_SMALL, N_ALL))
    return {n: in_child(mode, n) for n in (N_SMALL, N_ALL)}


# ------------------------------------------------------------------ main ----

def main() -> None:
    from _results import machine_facts, write_section

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1 if SMOKE else 2)
    ap.add_argument("--smoke", action="store_true", help="seconds of work in a temporary folder, no RESULTS.md")
    args = ap.parse_args()
    facts = machine_facts()
    if SMOKE:
        smoke_data()
    t0 = time.perf_counter()
    make_data()
    made = time.perf_counter() - t0
    build = per_size("build")
    ratios, pairs = [], []
    for r in range(args.rounds):
        order = ("reference", "trainer") if r % 2 == 0 else ("trainer", "reference")
        got = {mode: in_child(mode, N_SMALL) for mode in order}
        pairs.append(got)
        ratios.append(got["trainer"]["images_per_second"] / got["reference"]["images_per_second"])
    mem = per_size("memory")
    run_growth = mem[N_ALL]["run_peak_mb"] / mem[N_SMALL]["run_peak_mb"]
    probe_growth = mem[N_ALL]["probe_peak_mb"] / mem[N_SMALL]["probe_peak_mb"]
    lines = [f"- data: {N_ALL} PNG {SIZE}x{SIZE} RGB, {CLASSES} classes ({'made' if made > 5 else 'reused'} in "
             f"{made:.0f} s); decoding into a fresh cache ({SIZE} px and 32 px, after the listing and "
             f"header scan): {N_SMALL:,} images {build[N_SMALL]['seconds']:.1f} s, {N_ALL:,} images "
             f"{build[N_ALL]['seconds']:.1f} s",
             f"- throughput, {N_SMALL:,}-image task, resnet10t {SIZE} px, epoch 2 images/s (validation included):"]
    for i, got in enumerate(pairs):
        lines.append(f"  - round {i + 1}: reference {got['reference']['images_per_second']:.1f}, trainer "
                     f"{got['trainer']['images_per_second']:.1f} (val acc {got['trainer']['val']:.3f}), "
                     f"ratio {ratios[i]:.3f}")
    lines.append(f"  - **median paired ratio trainer/reference: {statistics.median(ratios):.3f}** (target >= 0.90)")
    lines.append("- memory (RssAnon peak, MiB; cache pages excluded), test_resnet 32 px, 1 epoch:")
    for n in (N_SMALL, N_ALL):
        lines.append(f"  - {n} images ({mem[n]['train_images']} train): run {mem[n]['run_peak_mb']:.0f}, "
                     f"probe pass {mem[n]['probe_peak_mb']:.0f}")
    lines.append(f"  - **growth {N_SMALL:,} -> {N_ALL:,}: run x{run_growth:.3f}, probe pass x{probe_growth:.3f}** "
                 "(target < 1.25)")
    body = "\n".join(lines)
    print(body)
    write_section("data_scale", body, facts)


if __name__ == "__main__":
    if "--child" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--child", choices=CHILDREN)
        ap.add_argument("--n", help="image counts, comma-separated: run in turn in this process")
        a = ap.parse_args()
        print(json.dumps({n: CHILDREN[a.child](int(n)) for n in a.n.split(",")}))
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        main()
    from loop.util.exiting import exit_process

    exit_process(0)     # no collector walk over everything torch made at the exit
