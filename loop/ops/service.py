"""`llmloop service install | status | uninstall`: the units of units.py written where systemd reads
them (a user's ~/.config/systemd/user, or /etc/systemd/system as root), enabled and started through
systemctl. Where no service manager can be reached (no systemd as PID 1, no user session bus) the
files are still written and enabled, and what could not be done is said with systemctl's own reason."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from loop.config import DaemonConfig
from loop.errors import ExitCode, LoopError
from loop.ops.units import NAME_PATTERN, UnitSpec, unit_files
from loop.util.fsutil import atomic_write_text
from loop.util.workspace import Workspace

Scope = Literal["user", "system"]
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEMCTL_TIMEOUT_S = 60
# what systemctl prints when there is no manager to talk to (not a failure of the unit itself)
NO_MANAGER = ("Failed to connect to bus", "System has not been booted with systemd", "Failed to get D-Bus connection",
              "Transport endpoint is not connected")


class ServiceError(LoopError):
    exit_code = ExitCode.CONFIG


# ------------------------------------------------------------------ where ----

def unit_dir(scope: Scope) -> Path:
    """Where this scope's unit files live: $XDG_CONFIG_HOME/systemd/user (default ~/.config), or /etc."""
    if scope == "system":
        return SYSTEM_UNIT_DIR
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def project_python(root: Path) -> str:
    """The project's own venv interpreter (<root>/.venv/bin/python), else the one running now; never
    resolved through its symlink, which would leave the venv."""
    venv = root / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else str(Path(sys.executable).absolute())


def build_spec(cfg: DaemonConfig, ws: Workspace, config_path: Path, scope: Scope, name: str,
               python: str | None = None, run_as: str | None = None) -> UnitSpec:
    """The record every unit is written from, with absolute paths."""
    from loop.daemon.process import PACKAGE_PARENT

    if not re.match(NAME_PATTERN, name):
        raise ServiceError(f"--name {name!r}: use letters, digits, '_', '.' and '-' (it prefixes the unit names)")
    if python is not None and not (Path(python).is_absolute() and Path(python).exists()):
        raise ServiceError(f"--python {python}: give the absolute path of an interpreter that exists")
    if scope == "system" and run_as is None:        # the project's owner, not root, unless root owns it
        uid = cfg.root.stat().st_uid
        run_as = _user_name(uid) if uid != 0 else None
    return UnitSpec(name=name, scope=scope, python=python or project_python(cfg.root),
                    package_parent=str(PACKAGE_PARENT), root=str(cfg.root.resolve()),
                    daemon_config=str(Path(config_path).expanduser().resolve()), workspace=str(ws.root.resolve()),
                    daily_start=cfg.phase.daily_start if cfg.phase.schedule == "daily" else None,
                    run_as=run_as, systemd_version=systemd_version())


def systemd_version() -> int | None:
    """This machine's systemd (from `systemctl --version`), or None where there is none."""
    try:
        out = subprocess.run(["systemctl", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"systemd (\d+)", out)
    return int(match[1]) if match else None


def check_scope(scope: Scope, writes: bool = True) -> None:
    if not sys.platform.startswith("linux"):
        raise ServiceError(f"systemd units are for Linux; this is {sys.platform} (Windows and macOS have no systemd): "
                           f"start the loop with scripts/startup.ps1 or `llmloop start` instead")
    if writes and scope == "system" and os.geteuid() != 0:
        raise ServiceError("--system writes to /etc/systemd/system and needs root (sudo); --user needs no root")


# -------------------------------------------------------------- systemctl ----

@dataclass
class Outcome:
    """One systemctl call: ok, its output, and whether a manager was there to answer at all."""

    ok: bool
    text: str
    no_manager: bool = False


def systemctl(scope: Scope, *args: str) -> Outcome:
    argv = ["systemctl", *(["--user"] if scope == "user" else []), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S)
    except FileNotFoundError:
        return Outcome(False, "systemctl not found: this machine has no systemd", no_manager=True)
    except subprocess.TimeoutExpired:
        return Outcome(False, f"`{' '.join(argv)}` did not answer in {SYSTEMCTL_TIMEOUT_S}s")
    text = (done.stdout.strip() + "\n" + done.stderr.strip()).strip()
    return Outcome(done.returncode == 0, text, no_manager=any(marker in text for marker in NO_MANAGER))


def no_manager_hint(scope: Scope, outcome: Outcome) -> str:
    why = outcome.text.splitlines()[-1] if outcome.text else "no answer"
    if scope == "user":
        return (f"systemctl --user cannot reach your user's service manager ({why}): there is none without "
                f"systemd as PID 1 and a login session (XDG_RUNTIME_DIR); `loginctl enable-linger {_me()}` keeps "
                f"one running after logout")
    return f"systemctl cannot reach the system's service manager ({why}): this machine was not booted with systemd"


def _me() -> str:
    return _user_name(os.geteuid())


def _user_name(uid: int) -> str:
    """The account's name, or its number (systemd's User= takes either). `pwd` is POSIX only."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# ---------------------------------------------------------------- install ----

def install(spec: UnitSpec, dry_run: bool, say: Callable[[str], None]) -> int:
    """Write the units, enable them, start the daemon and the timer; with `dry_run` print them only."""
    check_scope(spec.scope)
    files = unit_files(spec)
    folder = unit_dir(spec.scope)
    if dry_run:
        for name, text in files.items():
            say(f"# {folder / name}\n{text}")
        say(f"# dry run: nothing written ({len(files)} unit(s))")
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(folder / name, text)
        say(f"wrote {folder / name}")
    starts = [spec.daemon_unit] + ([spec.phase_timer_unit] if spec.phase_timer_unit in files else [])
    enabled = systemctl(spec.scope, "enable", *starts)      # links only: works without a running manager
    say(f"enabled {', '.join(starts)}" if enabled.ok else f"could not enable {', '.join(starts)}: {enabled.text}")
    reload = systemctl(spec.scope, "daemon-reload")
    if not reload.ok:
        say(f"not started: {no_manager_hint(spec.scope, reload) if reload.no_manager else reload.text}. "
            f"They start with the next {'boot' if spec.scope == 'system' else 'login (or boot, with linger)'}"
            f"; or run `{_systemctl_words(spec.scope)} daemon-reload && {_systemctl_words(spec.scope)} start "
            f"{' '.join(starts)}` once a manager runs")
        return 0 if enabled.ok else 1
    started = systemctl(spec.scope, "start", *starts)
    say(f"started {', '.join(starts)}; `llmloop service status` shows them, `journalctl "
        f"{'--user ' if spec.scope == 'user' else ''}-u {spec.daemon_unit}` their log" if started.ok
        else f"could not start {', '.join(starts)}: {started.text}")
    return 0 if enabled.ok and started.ok else 1


def _systemctl_words(scope: Scope) -> str:
    return "systemctl --user" if scope == "user" else "systemctl"


# ----------------------------------------------------------------- status ----

@dataclass
class UnitState:
    unit: str
    path: Path
    installed: bool
    enabled: str            # systemctl is-enabled (read from the files: works without a manager)
    active: str | None      # systemctl is-active; None when no manager answers (see `why`)
    why: str = ""


def unit_names(name: str) -> list[str]:
    return [f"{name}-daemon.service", f"{name}-phase.timer", f"{name}-phase.service"]


def status(scope: Scope, name: str) -> list[UnitState]:
    check_scope(scope, writes=False)
    folder, states = unit_dir(scope), []
    for unit in unit_names(name):
        path = folder / unit
        enabled = systemctl(scope, "is-enabled", unit) if path.exists() else Outcome(False, "not-found")
        active = systemctl(scope, "is-active", unit)
        states.append(UnitState(unit, path, path.exists(), _first_word(enabled.text) or "unknown",
                                None if active.no_manager else _first_word(active.text) or "unknown",
                                no_manager_hint(scope, active) if active.no_manager else ""))
    return states


def _first_word(text: str) -> str:
    return text.split()[0] if text.split() else ""


def render_status(states: list[UnitState]) -> str:
    lines = []
    for s in states:
        where = str(s.path) if s.installed else "not installed"
        lines.append(f"{s.unit:<28} {where}; enabled: {s.enabled}; active: {s.active or 'unknown'}")
    whys = sorted({s.why for s in states if s.why})
    return "\n".join(lines + [f"note: {why}" for why in whys])


# -------------------------------------------------------------- uninstall ----

def uninstall(scope: Scope, name: str, say: Callable[[str], None]) -> int:
    """Stop and disable the units (where a manager answers), remove their files and links."""
    check_scope(scope)
    folder = unit_dir(scope)
    present = [unit for unit in unit_names(name) if (folder / unit).exists()]
    if not present:
        say(f"no {name} units in {folder}")
        return 0
    stopped = systemctl(scope, "stop", *present)
    if not stopped.ok:
        say(f"not stopped: {no_manager_hint(scope, stopped) if stopped.no_manager else stopped.text}")
    installable = [unit for unit in present if not unit.endswith("-phase.service")]    # the timer starts that one
    disabled = systemctl(scope, "disable", *installable) if installable else Outcome(True, "")
    if not disabled.ok:
        say(f"systemctl disable: {disabled.text}")
    for unit in present:
        for link in folder.glob(f"*.wants/{unit}"):         # what `disable` removes, should it have failed
            link.unlink(missing_ok=True)
        (folder / unit).unlink()
        say(f"removed {folder / unit}")
    systemctl(scope, "daemon-reload")
    if shutil.which("systemctl") is None:
        say("systemctl not found: nothing was running under systemd here")
    return 0
