"""`llmloop service`: the systemd units (loop/ops/units.py) checked by systemd's own
`systemd-analyze verify` and `systemd-analyze calendar`, and install / status / uninstall for a
user into a temporary XDG_CONFIG_HOME through the real CLI and the real systemctl. This machine has
no systemd as PID 1: systemctl calls that need a manager fail with "Failed to connect to bus", and
the commands must say so plainly and still do what needs no manager (files, enable links)."""
from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from loop.errors import ConfigError
from loop.journal.events import EventLog
from loop.ops.units import RESTART_STEPS_SINCE, UnitSpec, exec_line, on_calendar, unit_files
from tests.conftest import REPO, tiny_config_dict, wait_for

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def spec_for(root: Path, **changes) -> UnitSpec:
    values = dict(python=sys.executable, package_parent=str(REPO), root=str(root),
                  daemon_config=str(root / "config" / "daemon config.yaml"), workspace=str(root / "artifacts"),
                  daily_start="03:00", systemd_version=252)
    return UnitSpec(**{**values, **changes})


def write_units(spec: UnitSpec, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in unit_files(spec).items():
        (folder / name).write_text(text)
        paths.append(folder / name)
    return paths


def verify(paths: list[Path], user: bool = False, runtime: Path | None = None) -> subprocess.CompletedProcess:
    """`systemd-analyze [--user] verify`: --user needs a runtime directory, a private 0700 one does."""
    env = dict(os.environ)
    if user:
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    argv = ["systemd-analyze", *(["--user"] if user else []), "verify", *map(str, paths)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def key(text: str, name: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{name}=")]


# ------------------------------------------------------------- the units ----

def test_daemon_unit_says_what_the_deployment_asks():
    spec = spec_for(Path("/srv/loop"))
    daemon = unit_files(spec)[spec.daemon_unit]
    assert key(daemon, "Type") == ["simple"] and key(daemon, "Restart") == ["always"]
    assert key(daemon, "RestartSec") == ["10"] and key(daemon, "StartLimitBurst") == ["5"]
    assert key(daemon, "KillMode") == ["process"]           # runs outlive a crash and are re-adopted
    start = shlex.split(key(daemon, "ExecStart")[0])
    assert start[:5] == [sys.executable, "-m", "loop.cli", "start", "--foreground"]
    paths = ["--daemon-config", "/srv/loop/config/daemon config.yaml", "--root", "/srv/loop",
             "--workspace", "/srv/loop/artifacts"]
    assert start[5:11] == paths and start[11:] == ["--phase-scheduler", "systemd", "--tee-log"]
    assert not any("sleep" in word for word in start)        # the adaptive timer decides the pauses
    stop = shlex.split(key(daemon, "ExecStop")[0])            # the operator's own stop request
    assert stop[3:4] == ["stop"] and stop[4:10] == paths and stop[10] == "--wait"
    assert int(stop[11]) < int(key(daemon, "TimeoutStopSec")[0])
    assert key(daemon, "StandardOutput") == ["journal"] and key(daemon, "WantedBy") == ["default.target"]
    assert "0" in key(daemon, "RestartPreventExitStatus")[0].split()     # `llmloop stop` is not a crash


def test_phase_timer_and_service():
    spec = spec_for(Path("/srv/loop"), daily_start="02:30")
    files = unit_files(spec)
    timer, phase = files[spec.phase_timer_unit], files[spec.phase_service_unit]
    assert key(timer, "OnCalendar") == ["*-*-* 02:30:00"] and key(timer, "Persistent") == ["true"]
    assert key(timer, "Unit") == [spec.phase_service_unit] and key(timer, "WantedBy") == ["timers.target"]
    argv = shlex.split(key(phase, "ExecStart")[0])
    assert argv[:5] == [sys.executable, "-m", "loop.phase", "run", "--daemon-config"]
    assert key(phase, "Type") == ["oneshot"]
    assert "LLMLOOP_PIXEL_CACHE=/srv/loop/artifacts/cache/pixels" in key(phase, "Environment")


def test_no_timer_unless_phase_is_daily_and_then_the_daemon_owns_phase():
    spec = spec_for(Path("/srv/loop"), daily_start=None)
    files = unit_files(spec)
    assert list(files) == [spec.daemon_unit]
    assert "--phase-scheduler daemon" in key(files[spec.daemon_unit], "ExecStart")[0]


def test_restart_back_off_grows_only_where_systemd_knows_how():
    old = unit_files(spec_for(Path("/srv/l"), systemd_version=252))["llmloop-daemon.service"]
    new = unit_files(spec_for(Path("/srv/l"), systemd_version=RESTART_STEPS_SINCE))["llmloop-daemon.service"]
    assert not key(old, "RestartSteps") and not key(old, "RestartMaxDelaySec")
    assert key(new, "RestartSteps") == ["5"] and key(new, "RestartMaxDelaySec") == ["300"]


def test_system_units_run_as_the_owner_after_the_network():
    spec = spec_for(Path("/srv/loop"), scope="system", run_as="alice")
    daemon = unit_files(spec)[spec.daemon_unit]
    assert key(daemon, "User") == ["alice"] and key(daemon, "WantedBy") == ["multi-user.target"]
    assert key(daemon, "After") == ["network-online.target"]
    assert key(unit_files(spec)[spec.phase_service_unit], "User") == ["alice"]


@pytest.mark.parametrize("start, calendar", [("03:00", "*-*-* 03:00:00"), ("00:00", "*-*-* 00:00:00"),
                                             ("23:59", "*-*-* 23:59:00")])
def test_on_calendar_from_daily_start(start, calendar):
    assert on_calendar(start) == calendar
    if shutil.which("systemd-analyze"):           # systemd reads it back as the same daily time
        out = subprocess.run(["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and f"Normalized form: {calendar}" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("bad", ["24:00", "07:60", "3:00", "noon"])
def test_a_daily_start_that_is_no_time_of_day_is_refused_by_its_key(bad):
    with pytest.raises(ConfigError, match=r"phase\.daily_start"):
        on_calendar(bad)


def test_exec_lines_refuse_relative_commands_and_line_breaks():
    with pytest.raises(ConfigError, match="absolute path"):
        exec_line(["python", "-m", "loop.cli"])
    with pytest.raises(ConfigError, match="line break"):
        exec_line(["/usr/bin/python", "a\nb"])
    assert exec_line(["/bin/x", "a b", "50%", "$HOME", 'say "hi"', ";"]) == \
        '/bin/x "a b" 50%% "$$HOME" "say \\"hi\\"" ";"'


# ------------------------------------------------- systemd reads them back ----

@needs_analyze
def test_systemd_analyze_verify_accepts_the_units(tmp_path):
    """A project root with a space and a '%' in its name, and an interpreter there: systemd must find
    the executable through our quoting (verify fails on a command it cannot find)."""
    root = tmp_path / "my project 100%"
    python = root / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    me = pwd.getpwuid(os.geteuid()).pw_name
    for n, spec in enumerate([spec_for(root, python=str(python)),
                              spec_for(root, python=str(python), scope="system", run_as=me)]):
        paths = write_units(spec, tmp_path / f"units{n}")
        checked = verify(paths, user=spec.scope == "user", runtime=tmp_path / "runtime")
        assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stdout + checked.stderr
    broken = write_units(spec_for(root, python=str(root / "no such python")), tmp_path / "broken")
    refused = verify(broken)                      # the check can fail: a command that is not there
    assert refused.returncode != 0 and "no such python" in refused.stderr


@needs_analyze
def test_this_systemd_does_not_know_restart_steps_yet(tmp_path):
    """Why RestartSteps= is left out below systemd 254: verify warns about it as an unknown key."""
    version = int(subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout.split()[1])
    if version >= RESTART_STEPS_SINCE:
        pytest.skip(f"systemd {version} knows RestartSteps=")
    spec = spec_for(tmp_path, systemd_version=RESTART_STEPS_SINCE)
    checked = verify(write_units(spec, tmp_path / "u")[:1])
    assert "Unknown key 'RestartSteps'" in checked.stderr or "Unknown key name 'RestartSteps'" in checked.stderr


# ---------------------------------------------- install, status, uninstall ----

@pytest.fixture
def project(tmp_path) -> tuple[Path, dict]:
    """A daemon config and an environment with no bus: a temporary XDG_CONFIG_HOME, no runtime dir."""
    config = tmp_path / "proj" / "config" / "daemon_config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({"workspace": "artifacts", "phase": {"daily_start": "04:15"}}))
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(REPO))
    return config, env


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loop.cli.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemctl is not installed")
def test_install_status_uninstall_for_a_user(project, tmp_path):
    config, env = project
    units = tmp_path / "xdg" / "systemd" / "user"
    names = ["llmloop-daemon.service", "llmloop-phase.service", "llmloop-phase.timer"]

    dry = cli(env, "service", "install", "--user", "--dry-run", "--daemon-config", str(config))
    assert dry.returncode == 0, dry.stderr
    assert f"# {units / 'llmloop-daemon.service'}" in dry.stdout and "OnCalendar=*-*-* 04:15:00" in dry.stdout
    assert "nothing written" in dry.stdout and not units.exists()

    done = cli(env, "service", "install", "--daemon-config", str(config))          # --user is the default
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in units.glob("*.*") if p.is_file()) == sorted(names)
    assert (units / "llmloop-daemon.service").read_text() in dry.stdout        # what the dry run printed
    assert (units / "default.target.wants" / "llmloop-daemon.service").is_symlink()
    assert (units / "timers.target.wants" / "llmloop-phase.timer").is_symlink()
    assert "not started: systemctl --user cannot reach your user's service manager" in done.stdout
    assert "Failed to connect to bus" in done.stdout and "loginctl enable-linger" in done.stdout
    if shutil.which("systemd-analyze"):
        checked = verify([units / n for n in names], user=True, runtime=tmp_path / "runtime")
        assert checked.returncode == 0 and checked.stderr == "", checked.stderr

    shown = cli(env, "service", "status")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    daemon = next(line for line in lines if line.startswith("llmloop-daemon.service"))
    assert str(units / "llmloop-daemon.service") in daemon and "enabled: enabled" in daemon
    assert "active: unknown" in daemon
    assert any(line.startswith("note: systemctl --user cannot reach") and "Failed to connect to bus" in line
               for line in lines)

    gone = cli(env, "service", "uninstall")
    assert gone.returncode == 0, gone.stderr
    assert "not stopped: systemctl --user cannot reach" in gone.stdout
    assert not [p for p in units.glob("*.*") if p.is_file()] and not list(units.glob("*.wants/*"))
    after = cli(env, "service", "status").stdout
    assert after.count("not installed") == 3
    assert "no llmloop units" in cli(env, "service", "uninstall").stdout


def test_bad_names_and_system_without_root_are_refused(project):
    config, env = project
    bad = cli(env, "service", "install", "--dry-run", "--name", "my loop", "--daemon-config", str(config))
    assert bad.returncode == 2 and "--name 'my loop'" in bad.stderr
    missing = cli(env, "service", "install", "--dry-run", "--python", "/no/python", "--daemon-config", str(config))
    assert missing.returncode == 2 and "--python /no/python" in missing.stderr
    system = cli(env, "service", "install", "--system", "--dry-run", "--run-as", "nobody",
                 "--daemon-config", str(config))
    if os.geteuid() == 0:
        assert system.returncode == 0 and "# /etc/systemd/system/llmloop-daemon.service" in system.stdout
        assert "User=nobody" in system.stdout and "WantedBy=multi-user.target" in system.stdout
    else:
        assert system.returncode == 2 and "needs root" in system.stderr


# ------------------------------------------- a real manager, where there is one ----

def transient_units_unavailable() -> str | None:
    """Why `systemd-run --user` cannot start a transient unit on this machine, or None when it can."""
    if shutil.which("systemd-run") is None:
        return "systemd-run is not installed"
    probe = subprocess.run(["systemd-run", "--user", "--quiet", "--collect", "--wait", "true"], capture_output=True,
                           text=True, timeout=120)
    if probe.returncode == 0:
        return None
    init = Path("/proc/1/comm").read_text().strip() if Path("/proc/1/comm").exists() else "?"
    said = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
    return f"systemd-run --user cannot start a transient unit here: {said} (PID 1 is {init!r})"


@pytest.mark.slow
def test_a_killed_daemon_comes_back_under_systemd_and_readopts_its_run(tmp_path):
    """The daemon under a real transient user unit with the generated unit's restart and kill settings:
    SIGKILL it mid-run; systemd starts it again, its run lived on (KillMode=process) and is re-adopted."""
    why = transient_units_unavailable()
    if why:
        pytest.skip(why)
    trainer = tmp_path / "long.yaml"               # a run that outlives the daemon's kill and restart
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 1.0}, run={"epochs": 40})))
    config = tmp_path / "daemon.yaml"
    ws = tmp_path / "ws"
    config.write_text(yaml.safe_dump({"workspace": str(ws), "default_trainer_config": str(trainer),
                                      "sandbox": "optional", "default_monitor_seconds": 3,
                                      "phase": {"schedule": "off"}, "adaptive_timer": {"max_seconds": 1},
                                      "evolution": {"rules": {"per_class_accuracy_floor": None}}}))
    spec = spec_for(REPO, daemon_config=str(config), workspace=str(ws), daily_start=None, restart_seconds=1)
    service = unit_files(spec)[spec.daemon_unit].split("[Service]")[1].split("[Install]")[0]
    settings = [line for line in service.strip().splitlines()
                if line.split("=")[0] in ("Restart", "RestartSec", "KillMode", "RestartPreventExitStatus",
                                          "TimeoutStopSec", "Environment", "WorkingDirectory")]
    unit = f"llmloop-test-{uuid.uuid4().hex[:8]}"
    argv = ["systemd-run", "--user", f"--unit={unit}", *(f"--property={s}" for s in settings), "--",
            *shlex.split(key(service, "ExecStart")[0])]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=60).returncode == 0
    state = ws / "state.json"
    try:
        wait_for(lambda: state.exists() and json.loads(state.read_text()).get("active_runs"), 180, "an active run")
        run = json.loads(state.read_text())["active_runs"][0]
        first = int((ws / "daemon.pid").read_text())
        os.kill(first, signal.SIGKILL)
        assert psutil.pid_exists(run["pid"])                 # KillMode=process: the run lives on
        wait_for(lambda: sum(e["kind"] == "daemon_start" for e in EventLog(ws / "events.jsonl")) == 2, 120,
                 "systemd to start the daemon again")
        again = [e for e in EventLog(ws / "events.jsonl") if e["kind"] == "daemon_start"][-1]
        assert again["pid"] != first and run["label"] in again["reaped"]["adopted_runs"]
    finally:
        subprocess.run(["systemctl", "--user", "stop", unit], capture_output=True, timeout=400)
