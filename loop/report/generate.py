"""The orchestration: read the workspace once, write every report into `<workspace>/reports/`,
and log the progress to report.log."""
from __future__ import annotations

import io
from pathlib import Path

from loop.report.data import load_data
from loop.report.helpers import PAPER_FILE, PLOTS, STORY_FILE
from loop.report.leaderboard import leaderboard_json, leaderboard_md
from loop.report.paper import paper_report
from loop.report.plots import plot_best_over_cycles, plot_per_class_best, plot_runs_over_cycles, plot_tokens_over_cycles
from loop.report.story import condensed_story
from loop.util.fsutil import atomic_write_text
from loop.util.progress import ProgressLog
from loop.util.workspace import Workspace


def generate_reports(workspace: Path, top_k: int = 10, note: str = "", progress: bool = True) -> dict[str, Path]:
    """Write every final report into `<workspace>/reports/`; returns {name: path}. Each file is replaced
    atomically, so a full disk leaves the previous report whole."""
    out = Workspace(workspace).reports
    out.mkdir(parents=True, exist_ok=True)
    paths = {"story": out / STORY_FILE, "paper": out / PAPER_FILE,
             "leaderboard_json": out / f"final_leaderboard_top{top_k}.json",
             "leaderboard_md": out / f"final_leaderboard_top{top_k}.md",
             **{name: out / file for name, file in PLOTS.items()}}
    plotters = {"plot_best_over_cycles": plot_best_over_cycles, "plot_runs_over_cycles": plot_runs_over_cycles,
                "plot_per_class_best": plot_per_class_best, "plot_tokens_over_cycles": plot_tokens_over_cycles}
    log = ProgressLog(out / "report.log", "final report", total=1 + len(plotters) + 3,
                      stream=None if progress else io.StringIO())
    try:
        log.line(f"final report for {workspace} (top {top_k})")
        data = load_data(Path(workspace), top_k, note)
        step = 1
        skipped = f", {data.skipped_cycles} unreadable cycle events skipped" if data.skipped_cycles else ""
        log.update(step, f"read {len(data.cycles)} cycles, {len(data.runs)} runs{skipped}")
        for name, plot in plotters.items():       # plots first: the paper links them
            plot(data, paths[name])
            step += 1
            log.update(step, name)
        atomic_write_text(paths["leaderboard_json"], leaderboard_json(data))
        atomic_write_text(paths["leaderboard_md"], leaderboard_md(data))
        log.update(step + 1, "leaderboard")
        atomic_write_text(paths["paper"], paper_report(data))
        log.update(step + 2, "paper report")
        atomic_write_text(paths["story"], condensed_story(data))
        log.update(step + 3, "condensed story")
        log.line(f"reports written to {out}")
    finally:
        log.close()
    return {**paths, "log": out / "report.log"}
