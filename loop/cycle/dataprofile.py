"""Know the data, as a cycle step: at the first cycle on a task, and again whenever its data changes
(a new fingerprint), the data report (loop/domains/datareport.py) is built and goes

  - into the workpad's `## Data Exploration`, one entry per summary line;
  - into the events: `data_report` with the main figures, and a loud `data_leak` (level error) when
    train images reappear in val or a probe set;
  - into the offline policy's `TaskProfile` (image sizes, channels, pretrained weights).

Every deciding cycle resolves the domain and fingerprints its splits (ids, labels, file mtimes: no
decoding); while the fingerprint matches, the saved report is only read back. A new report is saved
after it is announced, so an announcement that fails (a full disk) is tried again next cycle.
Nothing here stops a cycle: a failure is logged with its reason (event `data_report_failed`, once
per reason) and the cycle goes on with whatever profile it had.
"""
from __future__ import annotations

from pathlib import Path

from loop.agents.space import TaskProfile
from loop.config import DaemonConfig, read_yaml
from loop.cycle.loop import Loop
from loop.cycle.record import CycleRecord
from loop.domains import resolve_domain
from loop.domains.datareport import DataReport, cached_facts, ensure_data_report, save_data_report
from loop.domains.summary import summary_lines
from loop.journal.notes import WORKPAD_SECTIONS, append_workpad
from loop.trainer.config import ModelConfig
from loop.util.secrets import redact


def refresh_data_report(loop: Loop, rec: CycleRecord) -> None:
    """Make sure `loop.data_report` and `loop.task_profile` describe the task's current data."""
    try:
        base = read_yaml(loop.cfg.resolve(loop.cfg.default_trainer_config))
        data = base.get("data") or {}
        domain = resolve_domain(data.get("domain", "digits"), data.get("domain_args"))
        report, built = ensure_data_report(domain, loop.ws.data_report, cached_facts(image_size(data)), save=False)
        loop.task_profile = task_profile(report, base.get("model") or {}, loop.cfg)
        if built:                    # saved once announced: a failed announcement is retried next cycle
            announce(loop, report, rec)
            save_data_report(loop.ws.data_report, report)
    except Exception as exc:  # why: the report informs the loop; no failure of it may stop a cycle
        failed(loop, rec, redact(f"{type(exc).__name__}: {exc}", loop.secrets)[:500])
        return
    loop.data_report, loop.data_error = report, ""
    rec.data_report = f"{'built' if built else 'reused'} {report.fingerprint[:12]}"


def image_size(data: dict) -> int:
    """The base config's training size (the pixel cache the report reads is the first run's)."""
    from loop.trainer.config import DataConfig

    size = data.get("image_size")
    return size if isinstance(size, int) and size > 0 else DataConfig().image_size


def failed(loop: Loop, rec: CycleRecord, reason: str) -> None:
    """Logged once per reason (not every cycle), as an event when events.jsonl can take one."""
    rec.data_report = f"failed: {reason}"
    if reason == loop.data_error:
        return
    loop.data_error = reason
    loop.say(f"data report failed (the cycle goes on without it): {reason}")
    try:
        loop.events.append("data_report_failed", rec.trace, level="warning", reason=reason)
    except OSError:
        pass                         # a full events.jsonl: the daemon's degraded path reports it


def announce(loop: Loop, report: DataReport, rec: CycleRecord) -> None:
    """A new report: the workpad, the `data_report` event and, for a leak, the `data_leak` event."""
    for line in summary_lines(report):
        append_workpad(loop.ws.workpad, WORKPAD_SECTIONS[1], redact(line, loop.secrets), rec.cycle)
    loop.events.append("data_report", rec.trace, path=str(loop.ws.data_report), **report.figures())
    if report.leaks:
        loop.events.append("data_leak", rec.trace, level="error", fingerprint=report.fingerprint,
                           pairs={f"{o.a}->{o.b}": o.images for o in report.leaks},
                           examples={f"{o.a}->{o.b}": o.examples for o in report.leaks},
                           message=f"DATA LEAK: {report.leak_text()}")
        loop.say(f"DATA LEAK: {report.leak_text()} (see {loop.ws.data_report})")


def task_profile(report: DataReport, model: dict, cfg: DaemonConfig) -> TaskProfile:
    """The offline policy's view of the task: the report's figures and the base config's weights."""
    weights = usable_weights(model.get("pretrained", False), cfg)
    return TaskProfile(native_size=report.sizes.median_side or 32, channels=report.channels,
                       num_classes=len(report.class_names), train_images=report.splits["train"].images,
                       images=report.images, domain=report.domain,
                       backbone=(model.get("name") or ModelConfig().name) if weights is not False else None,
                       pretrained=weights, leaks=report.leak_text())


def usable_weights(pretrained: object, cfg: DaemonConfig) -> bool | str:
    """`model.pretrained` as configured when it can be used (true: timm's own weights; a path: a file
    that exists, as given or under the project root), else False."""
    if pretrained is True:
        return True
    if isinstance(pretrained, str) and pretrained.strip():
        path = Path(pretrained.strip()).expanduser()
        if path.is_file() or cfg.resolve(path).is_file():
            return pretrained
    return False
