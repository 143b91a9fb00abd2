"""Knowledge-distillation gain on digits: does a student trained with kd.teacher beat the same
student trained without it?

How: train one teacher (timm resnet10t, 32px, full digits train split, the default digits
recipe: affine augmentation, label smoothing 0.05, cosine schedule, TEACHER_EPOCHS epochs).
Then, per setting, train a small student (timm `test_resnet`, ~0.37M parameters vs the
teacher's 4.9M) on a small stratified share (10%) of the train split, batch 16, once WITHOUT KD
and once WITH KD (kd.teacher = the teacher's run folder), for each of SEEDS (the same seeds in
both arms; the train share is fixed by the domain's split seed, so both arms see the same
images). Everything else in the two arms is identical. Metric: final validation accuracy
(digits val split). Reports each run, mean/std/min/max per arm and of the per-seed difference
KD minus no-KD. The second setting is only run when the first shows no mean gain (the rule
fixed before running: at most one retry, both reported).

CPU, torch.set_num_threads(2); temporary run folders, deleted at the end.
Run from the repo root: .venv/bin/python bench/kd_gain.py
Smoke size (tests/test_bench_smoke.py; no RESULTS.md write): add --smoke (one seed, 16 px, a
quarter of the split for the teacher, 1 epoch everywhere).
"""
from __future__ import annotations

import copy
import statistics
import tempfile
import time

import torch
from _results import machine_facts, smoke, spread, write_section

from loop.config import validate
from loop.domains import resolve_domain
from loop.trainer.config import TrainerConfig
from loop.trainer.train import train

SEEDS = [0, 1, 2]
TEACHER_EPOCHS = 12
SIZE, TEACHER_FRACTION, STUDENT_EPOCHS = 32, 1.0, 20   # px; teacher's share of the train split
if smoke():
    SEEDS, TEACHER_EPOCHS, SIZE, TEACHER_FRACTION, STUDENT_EPOCHS = [0], 1, 16, 0.25, 1
BASE = {  # the default digits recipe (config/trainer/digits.yaml), CPU, 2 threads, quiet log
    "data": {"domain": "digits", "image_size": SIZE, "batch_size": 64, "train_fraction": TEACHER_FRACTION,
             "augment": [{"name": "Affine", "args": {"translate_percent": [-0.06, 0.06], "rotate": [-8, 8],
                                                     "scale": [0.92, 1.08], "p": 0.5}}]},
    "model": {"name": "resnet10t"},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "schedule": {"name": "cosine", "warmup_epochs": 1},
    "loss": {"label_smoothing": 0.05},
    "run": {"seed": 42, "epochs": TEACHER_EPOCHS, "device": "cpu", "threads": 2, "log_every_steps": 1000},
}
SETTINGS = [  # student: test_resnet on a share of the train split; KD hyper-parameters
    {"name": "A", "train_fraction": 0.1, "batch_size": 16, "epochs": STUDENT_EPOCHS, "alpha": 0.1, "beta": 0.9,
     "temperature": 2.0},   # the trainer's default KD weights
    {"name": "B", "train_fraction": 0.1, "batch_size": 16, "epochs": STUDENT_EPOCHS, "alpha": 0.5, "beta": 0.5,
     "temperature": 4.0},
]


def config(**sections) -> TrainerConfig:
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return validate(TrainerConfig, data, "<bench kd_gain>")


def run_setting(s: dict, teacher_dir: str, tmp: str, domain) -> tuple[str, float]:
    rows, arms = [], {"no-KD": [], "KD": []}
    for seed in SEEDS:
        for arm in arms:
            kd = {"teacher": teacher_dir, "alpha": s["alpha"], "beta": s["beta"],
                  "temperature": s["temperature"]} if arm == "KD" else {}
            cfg = config(data={"train_fraction": s["train_fraction"], "batch_size": s["batch_size"]},
                         model={"name": "test_resnet"}, kd=kd, run={"seed": seed, "epochs": s["epochs"]})
            m = train(cfg, f"{tmp}/{s['name']}-{arm}-{seed}", domain=domain)
            arms[arm].append(m.eval.accuracy)
            print(f"setting {s['name']} seed {seed} {arm}: val acc {m.eval.accuracy:.4f}")
        rows.append(f"| {seed} | {arms['no-KD'][-1]:.4f} | {arms['KD'][-1]:.4f} "
                    f"| {arms['KD'][-1] - arms['no-KD'][-1]:+.4f} |")
    diffs = [k - n for k, n in zip(arms["KD"], arms["no-KD"])]
    n_train = round(s["train_fraction"] * len(domain.splits.train))
    text = "\n".join([
        f"### setting {s['name']}: student test_resnet, train_fraction {s['train_fraction']} (~{n_train} images), "
        f"batch {s['batch_size']}, {s['epochs']} epochs; KD alpha {s['alpha']}, beta {s['beta']}, "
        f"temperature {s['temperature']}", "",
        "| seed | no-KD val acc | KD val acc | KD - no-KD |", "|---|---|---|---|", *rows, "",
        f"- no-KD: {spread(arms['no-KD'])}",
        f"- KD: {spread(arms['KD'])}",
        f"- per-seed difference KD - no-KD: {spread(diffs)}", ""])
    return text, statistics.mean(diffs)


def main() -> None:
    torch.set_num_threads(2)
    facts = machine_facts()
    domain = resolve_domain("digits")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-kd-") as tmp:
        teacher_dir = f"{tmp}/teacher"
        teacher = train(config(), teacher_dir, domain=domain)
        print(f"teacher val acc {teacher.eval.accuracy:.4f}")
        parts = [f"Teacher: resnet10t {SIZE}px, train split share {TEACHER_FRACTION} "
                 f"({round(TEACHER_FRACTION * len(domain.splits.train))} images), "
                 f"{TEACHER_EPOCHS} epochs, default digits recipe, seed 42: val accuracy "
                 f"**{teacher.eval.accuracy:.4f}** ({teacher.walltime_seconds:.0f} s). "
                 f"Val split: {len(domain.splits.val)} images (one image = {1 / len(domain.splits.val):.4f}). "
                 f"Seeds {SEEDS}, the same in both arms; std below is the sample std (n-1).", ""]
        for i, s in enumerate(SETTINGS):
            text, gain = run_setting(s, teacher_dir, tmp, domain)
            parts.append(text)
            if gain > 0 or i == len(SETTINGS) - 1:
                break
            parts.append(f"No mean gain in setting {s['name']}; running setting {SETTINGS[i + 1]['name']} "
                         "(the only retry allowed).\n")
    parts.append(f"Total runtime: {time.perf_counter() - t0:.0f} s.")
    body = "\n".join(parts)
    print(body)
    write_section("kd_gain", body, facts)


if __name__ == "__main__":
    main()
