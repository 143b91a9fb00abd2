"""The report's header: where its numbers come from. The machine that ran the night (the typed
facts its daemon_start events carry, so a report written elsewhere still names it), the wall clock,
the seeds, the runs and the CPU / GPU hours they spent (each run's metrics.json, the evolution
window's candidates from their archive entries), the LLM tokens and cost, who decided, and which
split selected the best. One record (`NightHeader`) for the paper report and the dashboard."""
from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from loop.archive.paths import ModelPaths
from loop.domains.base import SPLIT_NAMES
from loop.journal.machine import MachineFacts
from loop.journal.metrics import RunMetrics, entry_trainer_metrics
from loop.report.data import ReportData
from loop.report.deciders import Deciders, deciders
from loop.report.helpers import parse_ts, plural, tokens_final, val_count
from loop.util.progress import format_seconds

SELECTION_SPLIT = "val"                       # the split a run's score (and so the kept best) is measured on
PROBE_SPLITS = ("recall", "delta", "drift")   # the promotion gates' probe sets (loop/archive/gates.py)


class Compute(BaseModel):
    """What the night's training cost, from the runs' own metrics.json."""

    runs: int = 0                     # the daemon's training runs (failed ones included)
    ok_runs: int = 0
    candidates: int = 0               # evolution-window candidates trained (from their archive entries)
    measured: int = 0                 # of runs + candidates, those with a metrics.json
    cpu_hours: float = 0.0            # user + system CPU of the trainers and their loader workers
    gpu_hours: float = 0.0            # wall time of the trainings that ran on a GPU (one GPU each)
    train_hours: float = 0.0          # wall time of every training, summed
    devices: list[str] = Field(default_factory=list)


class NightHeader(BaseModel):
    """Where a report's numbers come from."""

    machines: list[MachineFacts] = Field(default_factory=list)    # distinct machines the daemon started on
    started: str | None = None        # the first daemon_start (else the first event)
    ended: str | None = None          # the last event
    wall_seconds: float = 0.0
    daemon_starts: int = 0
    seeds: list[int] = Field(default_factory=list)   # the runs' seeds
    split_seed: int | None = None     # the task's split seed (the data report)
    compute: Compute = Field(default_factory=Compute)
    tokens: int = 0
    llm_calls: int = 0
    estimated_calls: int = 0          # calls whose tokens were estimated (the server sent no usage)
    cost: float = 0.0
    deciders: Deciders = Field(default_factory=Deciders)
    selection_split: str = SELECTION_SPLIT
    val_images: int | None = None
    splits: dict[str, int] = Field(default_factory=dict)          # split -> images (the data report)

    # ---- the lines (the paper's header, the dashboard's) ----
    def machine_text(self) -> str:
        if not self.machines:
            return "not recorded (a daemon that predates the machine record)"
        return " | ".join(f"{m.describe()}; host {m.hostname or '?'}, Python {m.python or '?'}" for m in self.machines)

    def wall_text(self) -> str:
        if not self.started:
            return "no events yet"
        return (f"{self.started} to {self.ended} ({format_seconds(self.wall_seconds)}, "
                f"{plural(self.daemon_starts, 'daemon start')})")

    def seeds_text(self) -> str:
        runs = ", ".join(map(str, self.seeds)) or "none recorded"
        return f"runs {runs}" + (f"; data splits {self.split_seed}" if self.split_seed is not None else "")

    def compute_text(self) -> str:
        c = self.compute
        failed = c.runs - c.ok_runs
        text = (f"{plural(c.runs, 'training run')} ({c.ok_runs} ok, {failed} failed)"
                + (f" and {plural(c.candidates, 'evolution candidate')}" if c.candidates else "")
                + f"; {c.cpu_hours:.3f} CPU-hours, {c.gpu_hours:.3f} GPU-hours, {c.train_hours:.3f} training hours"
                + f" on {', '.join(c.devices) or 'no recorded device'}")
        unmeasured = c.runs + c.candidates - c.measured
        return text + (f" ({unmeasured} without a metrics.json: their CPU and GPU time is not counted)"
                       if unmeasured else "")

    def llm_text(self) -> str:
        if not self.llm_calls:
            return "0 tokens, no cost: no LLM call was made"
        estimated = f", {self.estimated_calls} estimated" if self.estimated_calls else ""
        cost = f"cost {self.cost:.4f}" if self.cost else "no cost recorded (no llm_prices entry for its models)"
        return f"{self.tokens} tokens ({plural(self.llm_calls, 'call')}{estimated}), {cost}"

    def selection_text(self) -> str:
        named = ", ".join(f"{s} {self.splits[s]}" if s in self.splits else s for s in SPLIT_NAMES)
        probes = ", ".join(s for s in PROBE_SPLITS)
        images = f", {self.val_images} images" if self.val_images else ""
        return (f"the best run was selected on the `{self.selection_split}` split (validation accuracy{images}); "
                f"GEN_HEAD candidates were gated and ranked on the probe splits {probes}. The task's splits "
                f"({named}) are disjoint and no run trained on a held-out one; no split was kept back unused, "
                "so no score here is a test score: measure one with `llmloop predict` on images the loop never saw")

    def items(self) -> list[tuple[str, str, str]]:
        """(key, label, text) of each fact, in the order the paper and the page show them."""
        return [("machine", "Machine", self.machine_text()), ("wall", "Wall clock", self.wall_text()),
                ("seeds", "Seeds", self.seeds_text()), ("compute", "Compute", self.compute_text()),
                ("llm", "LLM", self.llm_text()), ("decisions", "Decisions", self.deciders.text()),
                ("selection", "Selection", self.selection_text())]

    def lines(self) -> list[str]:
        """The paper's header: one fact a line."""
        return [f"- {label}: {text}." for _, label, text in self.items()]


# ------------------------------------------------------------- building ----

def night_header(data: ReportData) -> NightHeader:
    """The header of `data`'s night."""
    starts = [e for e in data.events if e.get("kind") == "daemon_start"]
    machines: dict[str, MachineFacts] = {}
    for event in starts:
        facts = MachineFacts.from_event(event)
        if facts is not None:
            machines.setdefault(facts.describe() + facts.hostname, facts)
    stamps = [t for t in (parse_ts(e.get("ts")) for e in data.events) if t]
    first = next((t for t in (parse_ts(e.get("ts")) for e in starts) if t), min(stamps, default=None))
    last = max(stamps, default=None)
    tokens = tokens_final(data).values()
    report = data.data_report
    split_seed = (report.domain_args.get("split_seed") if report else None)
    return NightHeader(
        machines=list(machines.values()), daemon_starts=len(starts),
        started=first.strftime("%Y-%m-%d %H:%M UTC") if first else None,
        ended=last.strftime("%Y-%m-%d %H:%M UTC") if last else None,
        wall_seconds=(last - first).total_seconds() if first and last else 0.0,
        seeds=sorted({int(s) for s in (r.key()["seed"] for r in data.runs) if isinstance(s, int)}),
        split_seed=split_seed if isinstance(split_seed, int) else None,
        compute=compute(data), tokens=sum(u.total_tokens for u in tokens), llm_calls=sum(u.calls for u in tokens),
        estimated_calls=sum(u.estimated_calls for u in tokens), cost=sum(u.cost for u in tokens),
        deciders=deciders(data), val_images=val_count(data),
        splits={name: s.images for name, s in report.splits.items()} if report else {})


def compute(data: ReportData) -> Compute:
    """The runs' hours from their metrics.json; a run without one counts its recorded minutes as
    training hours only. Window candidates are read from their archive entries (the trainer's
    metrics under `trainer`), those of daemon runs already counted left out."""
    out = Compute(runs=len(data.runs), ok_runs=len(data.ok_runs))
    devices: set[str] = set()
    for r in data.runs:
        if r.metrics:
            add_training(out, r.metrics, devices)
        elif r.minutes:
            out.train_hours += r.minutes / 60
    labels = {r.label for r in data.runs}
    for trainer in archived_trainings(ModelPaths(data.ws.root).archive):
        if trainer.run_label not in labels:
            out.candidates += 1
            add_training(out, trainer, devices)
    out.devices = sorted(devices)
    return out          # unrounded: the report rounds once, as it prints (rounding here first misprinted a 5)


def add_training(out: Compute, metrics: RunMetrics, devices: set[str]) -> None:
    wall = metrics.walltime_seconds or 60 * metrics.walltime_minutes
    device = metrics.device
    out.measured += 1
    out.cpu_hours += metrics.cpu_seconds / 3600
    out.train_hours += wall / 3600
    if device.startswith("cuda"):
        out.gpu_hours += wall / 3600
    if device:
        devices.add(device.split(":")[0])


def archived_trainings(archive: Path) -> list[RunMetrics]:
    """The trainer's metrics of every archive entry (its metrics.json's `trainer`)."""
    found = (entry_trainer_metrics(path.parent) for path in sorted(archive.glob("*/metrics.json"))) \
        if archive.is_dir() else ()
    return [m for m in found if m is not None]
