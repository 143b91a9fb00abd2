"""The systemd units of dream_phase.md's deployment, as plain text from one typed record (UnitSpec):
a continuous daemon service that restarts, and a PHASE timer with its service at the window's start.

No template engine: each unit is a list of sections of (key, value) lines, and every value that goes
into a command line or an assignment is quoted here for systemd's own parser (spaces, quotes,
backslashes, `%` specifiers and `$` variables)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from loop.config import StrictModel
from loop.errors import ConfigError
from loop.util.workspace import Workspace

Section = tuple[str, list[tuple[str, str]]]

# RestartSteps= / RestartMaxDelaySec= (a growing back-off) came with systemd 254; 252 rejects them
RESTART_STEPS_SINCE = 254
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"      # no '@' (a template), no '/' or spaces


class UnitSpec(StrictModel):
    """Everything the units say, resolved to absolute paths by loop/ops/service.py."""

    name: str = Field("llmloop", pattern=NAME_PATTERN)   # units: <name>-daemon.service, <name>-phase.{service,timer}
    scope: Literal["user", "system"] = "user"
    python: str                  # the project's own venv interpreter
    package_parent: str          # on PYTHONPATH: where this `loop` package is imported from
    root: str                    # the project root (--root)
    daemon_config: str           # the daemon config file (--daemon-config)
    workspace: str               # the workspace (--workspace)
    daily_start: str | None      # phase.daily_start; None: no timer (phase.schedule is not daily)
    run_as: str | None = None    # system units: User=
    systemd_version: int | None = None      # the target's systemd; None: unknown (no growing back-off)
    restart_seconds: int = Field(10, ge=1)  # the first restart's delay
    restart_max_seconds: int = Field(300, ge=1)     # the back-off's ceiling (systemd >= 254)
    start_limit_burst: int = Field(5, ge=1)         # this many failed starts ...
    start_limit_interval_seconds: int = Field(600, ge=1)     # ... in this long: systemd gives up
    stop_timeout_seconds: int = Field(300, ge=30)   # a stop waits this long for the cycle to end

    @property
    def daemon_unit(self) -> str:
        return f"{self.name}-daemon.service"

    @property
    def phase_service_unit(self) -> str:
        return f"{self.name}-phase.service"

    @property
    def phase_timer_unit(self) -> str:
        return f"{self.name}-phase.timer"

    def target_paths(self) -> list[str]:
        """The paths each command passes: the same root, config and workspace for start, stop and PHASE."""
        return ["--daemon-config", self.daemon_config, "--root", self.root, "--workspace", self.workspace]


# ---------------------------------------------------------------- quoting ----

_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def escape_specifiers(text: str, variables: bool = True) -> str:
    """`%` starts a specifier everywhere and `$` a variable in command lines: double them."""
    if "\n" in text or "\r" in text or "\0" in text:
        raise ConfigError(f"{text!r}: a unit value cannot hold a line break or NUL")
    text = text.replace("%", "%%")
    return text.replace("$", "$$") if variables else text


def quote_word(word: str, variables: bool = True) -> str:
    """One argument of an Exec line (or one `Environment=` assignment, where `$` is plain: `variables`
    False), as systemd reads it back; a lone ';' would end the command."""
    text = escape_specifiers(word, variables)
    if text and _PLAIN.match(text) and text != ";":
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(argv: list[str]) -> str:
    if not Path(argv[0]).is_absolute():
        raise ConfigError(f"{argv[0]!r}: a unit's command must start with an absolute path")
    return " ".join(quote_word(word) for word in argv)


def environment(key: str, value: str) -> str:
    """An `Environment=` value: the whole assignment quoted when it holds anything but plain characters."""
    return quote_word(f"{key}={value}", variables=False)


def render(sections: list[Section]) -> str:
    out: list[str] = []
    for title, lines in sections:
        out += ([""] if out else []) + [f"[{title}]"] + [f"{key}={value}" for key, value in lines]
    return "\n".join(out) + "\n"


def on_calendar(daily_start: str) -> str:
    """phase.daily_start (HH:MM, local time) as an OnCalendar= expression for every day."""
    match = re.fullmatch(r"(\d{2}):(\d{2})", daily_start)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise ConfigError(f"phase.daily_start: {daily_start!r} is not a time of day (HH:MM, 00:00 to 23:59)")
    return f"*-*-* {match[1]}:{match[2]}:00"


# ------------------------------------------------------------------ units ----

def daemon_argv(spec: UnitSpec) -> list[str]:
    """`llmloop start --foreground`, with no sleep of its own between cycles (the adaptive timer
    decides), PHASE left to the timer when there is one, and its output also in the workspace log."""
    scheduler = "systemd" if spec.daily_start else "daemon"
    return [spec.python, "-m", "loop.cli", "start", "--foreground", *spec.target_paths(),
            "--phase-scheduler", scheduler, "--tee-log"]


def stop_argv(spec: UnitSpec) -> list[str]:
    """`llmloop stop`, the same stop request an operator sends, waiting for the cycle to end."""
    return [spec.python, "-m", "loop.cli", "stop", *spec.target_paths(),
            "--wait", str(spec.stop_timeout_seconds - 15)]


def phase_argv(spec: UnitSpec) -> list[str]:
    """PHASE's own entry point, on the daemon's config and workspace."""
    return [spec.python, "-m", "loop.phase", "run", *spec.target_paths(), "--quiet"]


def _process_lines(spec: UnitSpec, pixel_cache: bool = False) -> list[tuple[str, str]]:
    """Who runs it, where, and with which environment: the same for the daemon and PHASE."""
    lines = [("User", spec.run_as)] if spec.scope == "system" and spec.run_as else []
    lines += [("WorkingDirectory", escape_specifiers(spec.root, variables=False)),
              ("Environment", environment("PYTHONPATH", spec.package_parent)),
              ("Environment", environment("PYTHONUNBUFFERED", "1"))]     # lines reach the journal as printed
    if pixel_cache:                 # the cache the daemon and its runs share (loop/domains/pixels.py)
        cache = Workspace(spec.workspace).pixel_cache
        lines.append(("Environment", environment("LLMLOOP_PIXEL_CACHE", str(cache))))
    return lines


def daemon_service(spec: UnitSpec) -> str:
    from loop.daemon.process import AlreadyRunning

    unit = [("Description", escape_specifiers(f"llmloop research daemon ({spec.root})", variables=False))]
    if spec.scope == "system":      # the LLM endpoint may be across the network
        unit += [("Wants", "network-online.target"), ("After", "network-online.target")]
    unit += [("StartLimitIntervalSec", str(spec.start_limit_interval_seconds)),
             ("StartLimitBurst", str(spec.start_limit_burst))]
    service = [("Type", "simple"), *_process_lines(spec),
               ("ExecStart", exec_line(daemon_argv(spec))),
               ("ExecStop", exec_line(stop_argv(spec))),
               ("TimeoutStopSec", str(spec.stop_timeout_seconds)),
               # process: a stop or crash ends the daemon alone; its runs and PHASE live on, and the
               # next start re-adopts (or reaps) them as after any crash (loop/run/reaper.py)
               ("KillMode", "process"),
               ("Restart", "always"),
               ("RestartSec", str(spec.restart_seconds)),
               # a clean exit (`llmloop stop`, finish-up done), a bad config or a daemon already
               # holding the workspace is not a crash: restarting would undo or repeat it
               ("RestartPreventExitStatus", f"0 {ConfigError.exit_code} {AlreadyRunning.exit_code}")]
    if spec.systemd_version is not None and spec.systemd_version >= RESTART_STEPS_SINCE:
        service += [("RestartSteps", "5"), ("RestartMaxDelaySec", str(spec.restart_max_seconds))]
    service += [("StandardOutput", "journal"), ("StandardError", "journal"),
                ("SyslogIdentifier", f"{spec.name}-daemon")]
    install = [("WantedBy", "multi-user.target" if spec.scope == "system" else "default.target")]
    return render([("Unit", unit), ("Service", service), ("Install", install)])


def phase_service(spec: UnitSpec) -> str:
    unit = [("Description", escape_specifiers(f"llmloop PHASE deep evaluation ({spec.root})", variables=False))]
    service = [("Type", "oneshot"), *_process_lines(spec, pixel_cache=True),
               ("ExecStart", exec_line(phase_argv(spec))),
               ("TimeoutStartSec", "infinity"),      # QTIME takes what it takes; the daemon waits on its signal
               ("StandardOutput", "journal"), ("StandardError", "journal"),
               ("SyslogIdentifier", f"{spec.name}-phase")]
    return render([("Unit", unit), ("Service", service)])


def phase_timer(spec: UnitSpec) -> str:
    if spec.daily_start is None:
        raise ConfigError("phase.schedule is not daily: there is no PHASE timer to write")
    unit = [("Description", escape_specifiers(f"llmloop PHASE nightly deep evaluation at {spec.daily_start} "
                                              f"({spec.root})", variables=False))]
    timer = [("OnCalendar", on_calendar(spec.daily_start)),
             ("Persistent", "true"),                # a night the machine was off runs at the next boot
             ("Unit", spec.phase_service_unit)]
    return render([("Unit", unit), ("Timer", timer), ("Install", [("WantedBy", "timers.target")])])


def unit_files(spec: UnitSpec) -> dict[str, str]:
    """File name -> text: the daemon service, and the PHASE service and timer when PHASE is daily."""
    files = {spec.daemon_unit: daemon_service(spec)}
    if spec.daily_start is not None:
        files[spec.phase_service_unit] = phase_service(spec)
        files[spec.phase_timer_unit] = phase_timer(spec)
    return files
