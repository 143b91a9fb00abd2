"""The top-k leaderboard of successful runs: final_leaderboard_top{k}.json with full configs and
metrics, and final_leaderboard_top{k}.md as a table (also used in the paper's Results)."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from loop.journal.metrics import RunMetrics
from loop.report.data import ReportData
from loop.report.helpers import NO_RUNS, acc, head_text, table
from loop.verdict.noise import wilson


def leaderboard_entries(data: ReportData) -> list[dict]:
    return [{"rank": i, "label": r.label, "score": r.score, "interval95": wilson(r.score, r.val_count),
             "fidelity": r.fidelity, "verdict": r.verdict, "cycle": r.cycle, "cycle_trace_id": r.trace,
             "dimension": r.dimension, "key_config": r.key(), "config": r.config,
             "pretrained": pretrained_of(r.config),
             "metrics": metrics_summary(r.metrics), "run_dir": r.run_dir, "archive_path": r.archive_path,
             "promotion_status": r.promotion.status if r.promotion else None,
             "promotion_score": r.promotion.score if r.promotion else None}
            for i, r in enumerate(data.ranked[:data.top_k], start=1)]


def pretrained_of(config: dict) -> bool | str:
    """The run's initial weights: false, "timm" (timm's pretrained weights) or the weights file."""
    p = (config.get("model") or {}).get("pretrained", False)
    return p if isinstance(p, str) else ("timm" if p is True else False)


def metrics_summary(metrics: RunMetrics | None) -> dict | None:
    if metrics is None:
        return None
    m = metrics.model_dump(mode="json")
    keep = ("status", "model_name", "domain", "seed", "device", "steps", "epochs_completed", "epochs_planned",
            "loss_start", "loss_final", "walltime_minutes", "images_per_second", "budget_used")
    out = {k: m.get(k) for k in keep if k in m}
    ev = m.get("eval") or {}
    out.update(val_accuracy=ev.get("accuracy"), val_loss=ev.get("loss"), val_count=ev.get("count"),
               per_class_accuracy=ev.get("per_class_accuracy"))
    return out


def leaderboard_json(data: ReportData) -> str:
    entries = leaderboard_entries(data)
    return json.dumps({"generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "workspace": str(data.ws.root), "top_k": data.top_k, "count": len(entries),
                       "gen_head": data.head, "note": data.note or None,
                       "message": None if entries else NO_RUNS, "entries": entries}, indent=2, default=str) + "\n"


def leaderboard_table(data: ReportData) -> list[str]:
    rows = []
    for e in leaderboard_entries(data):
        k = e["key_config"]
        ci = e["interval95"]
        rows.append([e["rank"], f"`{e['label']}`", acc(e["score"]), f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "-",
                     e["verdict"] or "-", e["cycle"], f"`{e['cycle_trace_id']}`",
                     e["dimension"], k["model"], k["image_size"], f"{k['optimizer'] or '-'}/{k['lr']}", k["epochs"],
                     Path(e["archive_path"]).name if e["archive_path"] else "-"])
    if not rows:
        return [NO_RUNS]
    return table(["rank", "label", "val acc", "95% interval", "verdict", "cycle", "trace", "dimension", "model",
                  "image size",
                  "optimizer/lr", "epochs", "archive"], rows)


def leaderboard_md(data: ReportData) -> str:
    lines = [f"# Leaderboard: top {data.top_k}", ""]
    if data.note:
        lines += [f"> Note: {data.note}", ""]
    lines += [f"Successful full-fidelity training runs ({len(data.ranked)} in all): the kept best first, then by "
              "validation accuracy, each with its 95% interval on the validation images and its verdict against the "
              "best of its time (a tie or a seed replica lies inside the noise band: it may score higher and still "
              "never replaced the best).", ""]
    lines += leaderboard_table(data) + [""] + low_fidelity_lines(data) + [head_text(data)]
    return "\n".join(lines) + "\n"


def low_fidelity_lines(data: ReportData) -> list[str]:
    """Screens (lower fidelity), apart: their scores are never ranked with full runs."""
    low = data.low_fidelity[:data.top_k]
    if not low:
        return []
    rows = [[f"`{r.label}`", acc(r.score), f"{r.fidelity:.2f}", r.cycle, r.dimension] for r in low]
    return (["Lower-fidelity runs (screens; marked, not ranked):", ""]
            + table(["label", "val acc", "fidelity", "cycle", "dimension"], rows) + [""])
