"""The report's "Use the model" section: the commands that predict with (and export) the promoted
model and the best run, exactly as `llmloop predict` / `llmloop export` take them."""
from __future__ import annotations

from pathlib import Path

from loop.deploy.commands import TEST_IMAGES, usage_commands
from loop.errors import LoopError
from loop.report.data import ReportData


def use_section(data: ReportData) -> list[str]:
    lines = ["## Use the model", ""]
    refs: list[tuple[str, str]] = []
    if data.head:
        refs.append((f"the promoted model (GEN_HEAD, now `{data.head}`)", "GEN_HEAD"))
    best = data.best
    if best is not None:
        archived = Path(best.archive_path).name if best.archive_path else None
        if archived != data.head:
            refs.append((f"the best run `{best.label}`", archived or best.run_dir))
    for what, ref in refs:
        try:
            commands = usage_commands(data.ws.root, ref)
        except (LoopError, OSError) as exc:
            lines += [f"Predicting with {what} is not possible: {exc}", ""]
            continue
        lines += [f"Predict with {what} (a submission CSV and per-class probabilities; replace `{TEST_IMAGES}` "
                  "with a folder of test images or a CSV), and export it:", "", "```bash",
                  commands["predict"], commands["export"], "```", ""]
    if not refs:
        lines.append("No model to use yet: no run finished.")
    return lines
