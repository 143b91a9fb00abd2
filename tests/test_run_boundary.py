"""The run boundary (issue 21): nothing a run writes is trusted by the daemon. Each test replays an
attack from inside a real sandboxed run, with harmless targets it makes itself, and checks on the
host side that it failed.

1. Root code execution: a run plants a module where it may write; a decision (or the run's own
   config.json) names it as the task's domain; the daemon must never import it.
2. Root writes through a planted link: the daemon's writes into the shared pixel cache never follow one.
3. Root reads for the LLM: a run's log linked to a root-only file never reaches a prompt or status.
4. Locks a run holds: a run sees none of the daemon's files (the workspace is an empty folder to it
   but for its own), and an append never waits long on a lock anyone holds.
5. The shared pixel cache: read-only to runs, so nothing later runs are scored on can be changed.
6. Limits: file size (the disk cap), open files, processes, a sized /dev/shm; the walltime held by
   the run's own wrapper.
7. The host: only its system folders are there, no home folder or /var socket; no nested user
   namespace. 8. run_command never runs without the sandbox.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from loop.agents.schema import Decision
from loop.config import DaemonConfig
from loop.domains import trust_domains, trust_from
from loop.errors import ConfigError, DomainError
from loop.run.sandbox_setup import find_bwrap, load_sandbox
from tests.conftest import REPO, tiny_config_dict

needs_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None or find_bwrap(True)[1] is not None,
                                   reason="bubblewrap cannot run here")
EVIL = "from pathlib import Path\nPath({marker!r}).write_text('imported')\nclass Evil: pass\n"


def sandboxed(ws: Path, command: str, check: bool = True, readonly: tuple[str, ...] = (), **cfg_keys) -> Path:
    """Run one shell line in a real sandbox exactly as the daemon runs a run_command (through
    runwrap, with its limits); returns its folder."""
    from loop.run.supervise import prepare_run

    cfg = DaemonConfig.model_validate({"sandbox_readonly_paths": list(readonly), **cfg_keys})
    sandbox = load_sandbox(cfg, REPO, ws)
    run_dir = ws / "runs" / f"attack-{uuid.uuid4().hex[:8]}"
    sandbox.prepare(run_dir, (run_dir / "out",))        # as for a trainer: out/ is the run's to write
    prepared = prepare_run(run_dir.name, "test", ["bash", "-c", command], run_dir, REPO, {}, sandbox)
    done = subprocess.run(prepared.command, env=prepared.env, cwd=REPO, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 or not check, done.stderr
    (run_dir / "stderr.txt").write_text(done.stderr)
    return run_dir


def daemon_cfg(tmp_path: Path, **extra) -> DaemonConfig:
    import yaml

    trainer = tmp_path / "trainer.yaml"
    trainer.write_text(yaml.safe_dump(tiny_config_dict(data={"train_fraction": 0.05})))
    return DaemonConfig.model_validate({"workspace": str(tmp_path / "ws"), "default_trainer_config": str(trainer),
                                        "evolution": {"rules": {"per_class_accuracy_floor": None}}, **extra})


# ---------------------------------------------------------------- 1. imports ----

def test_a_decision_cannot_name_the_task_or_anything_outside_the_recipe():
    for overlay, key in (({"data": {"domain": "artifacts.cache.pixels.x:Evil"}}, "data.domain"),
                         ({"data": {"domain_args": {"root": "/etc"}}}, "data.domain_args"),
                         ({"kd": {"teacher": "/ws/runs/x/out"}}, "kd"),
                         ({"run": {"resume_from": "/ws/runs/x/out"}}, "run.resume_from"),
                         ({"model": {"kwargs": {"x": 1}}}, "model.kwargs")):
        with pytest.raises(ValueError, match=f"train_overlay.{key}"):
            Decision.model_validate({"action": "train", "rationale": "x" * 30, "train_overlay": overlay})
    ok = {"data": {"image_size": 24, "augment": [{"name": "HorizontalFlip", "args": {"p": 0.5}}]},
          "model": {"name": "resnet14t", "pretrained": False}, "optim": {"lr": 0.01}, "run": {"epochs": 3}}
    assert Decision.model_validate({"action": "train", "rationale": "x" * 30, "train_overlay": ok}).train_overlay == ok


@needs_sandbox
@pytest.mark.slow
def test_a_module_a_run_planted_is_never_imported_by_the_hand_off(tmp_path, zoo):
    """A run writes a module into its own folder and a config.json naming it as the task; the
    daemon's hand-off probes the model on the daemon's own task and imports nothing of the run's."""
    from loop.candidates.intake import submit_run

    cfg = daemon_cfg(tmp_path)
    ws = tmp_path / "ws"
    marker = tmp_path / "imported-as-root"
    run_dir = sandboxed(ws, f"mkdir -p $HOME/../out && printf %s {json.dumps(EVIL.format(marker=str(marker)))} "
                            "> $HOME/../out/plantedmod.py")
    out = run_dir / "out"
    for f in zoo["tiny"].iterdir():                    # a real finished run, its config.json pointed at the module
        if f.is_file() and f.name != "plantedmod.py":
            shutil.copy(f, out / f.name)
    config = json.loads((out / "config.json").read_text())
    config.update(domain="plantedmod:Evil", domain_args={})
    (out / "config.json").write_text(json.dumps(config))
    sys.path.insert(0, str(out))                       # as the repo root on sys.path reaches artifacts/...
    try:
        trust_from(cfg, ws)
        result = submit_run(cfg, ws, out, cycle=1, trace_id="t-attack")
    finally:
        sys.path.remove(str(out))
    assert not marker.exists(), "the daemon imported a module a run wrote"
    assert "plantedmod" not in sys.modules
    assert result.status.startswith("PASS") or result.status.startswith("FAIL")   # probed, on digits


def test_an_untrusted_or_workspace_task_spec_is_refused_before_any_import(tmp_path):
    ws = tmp_path / "ws"
    (ws / "pkgplanted").mkdir(parents=True)
    marker = tmp_path / "imported"
    (ws / "pkgplanted" / "__init__.py").write_text(EVIL.format(marker=str(marker)))
    sys.path.insert(0, str(ws))
    try:
        from loop.domains import resolve_domain

        trust_domains([], [ws])
        with pytest.raises(DomainError, match="not in the daemon config's trusted_domains"):
            resolve_domain("pkgplanted:Evil")
        trust_domains(["pkgplanted:Evil"], [ws])     # even trusted by mistake: it lives where runs write
        with pytest.raises(DomainError, match="inside the workspace"):
            resolve_domain("pkgplanted:Evil")
    finally:
        sys.path.remove(str(ws))
    assert not marker.exists() and "pkgplanted" not in sys.modules


def test_the_daemon_refuses_to_start_with_the_workspace_on_sys_path(tmp_path):
    from loop.daemon.process import check_task_domain
    from loop.util.workspace import workspace_of

    cfg = daemon_cfg(tmp_path)
    ws = workspace_of(cfg)
    ws.root.mkdir(parents=True, exist_ok=True)
    sys.path.append(str(ws.root / "cache"))
    try:
        with pytest.raises(ConfigError, match="inside the workspace"):
            check_task_domain(cfg, ws)
    finally:
        sys.path.remove(str(ws.root / "cache"))
    assert check_task_domain(cfg, ws) == "DigitsDomain"


# ------------------------------------------------------- 2. writes through links ----

@needs_sandbox
def test_a_link_a_run_plants_in_the_pixel_cache_never_carries_a_daemon_write(tmp_path, monkeypatch):
    """The run tries to link the scan memo's names (and the daemon's temp name for it) to a root-only
    file: the cache is read-only to it. Links planted there anyway (by an older run, another user)
    carry no daemon write either: the memo is a fresh temp file renamed into place."""
    import os

    from loop.domains.listing import ImageListing, unreadable
    from loop.domains.pixels import CACHE_ENV, PixelSource

    cache = tmp_path / "ws" / "cache" / "pixels"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    victim = tmp_path / "root-only"
    victim.write_text("root's own\n")
    victim.chmod(0o600)
    images = tmp_path / "imgs"
    images.mkdir()
    from PIL import Image
    Image.new("RGB", (8, 8)).save(images / "a.png")
    listing = ImageListing(labels=["x"], ids=["a"], paths=[str(images / "a.png")], ages=[0.0], where=["a"])
    fp = PixelSource(3, paths=tuple(listing.paths)).fingerprint(0)
    names = [f"{fp}.scan.json", f"{fp}.scan.json.{os.getpid()}.tmp", f"{fp}.scan.{os.getpid()}.tmp"]
    run_dir = sandboxed(tmp_path / "ws", f"cd {cache} && " + " && ".join(f"ln -sf {victim} {n}" for n in names),
                        check=False)
    assert "Read-only file system" in (run_dir / "stderr.txt").read_text()
    for name in names:
        (cache / name).symlink_to(victim)
    assert unreadable(listing, 3) == []
    assert victim.read_text() == "root's own\n" and (victim.stat().st_mode & 0o777) == 0o600


# ---------------------------------------------------- 3. reads through links ----

@needs_sandbox
def test_a_run_log_linked_to_a_root_only_file_never_reaches_a_prompt_or_status(tmp_path):
    from loop.agents.context import build_context
    from loop.daemon.status import last_progress_line
    from loop.run.failure import signature_of  # noqa: F401  (what judge reads the log for)
    from loop.run.judge import RunOutcome
    from loop.util.workspace import Workspace

    secret = tmp_path / "id_rsa"
    canary = "canary-" + uuid.uuid4().hex
    secret.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{canary}\n-----END OPENSSH PRIVATE KEY-----\n")
    secret.chmod(0o600)
    ws = tmp_path / "ws"
    run_dir = sandboxed(ws, f"cd $HOME/.. && rm -f run.log; ln -s {secret} run.log", check=False)
    log = run_dir / "run.log"
    assert not log.is_symlink()        # the run folder is the daemon's: the link cannot even be made
    log.unlink(missing_ok=True)
    log.symlink_to(secret)             # made anyway (an older layout, another user): still never followed
    outcome = RunOutcome(label="x", status="failed", exit_code=1, log_path=str(log)).signed()
    context = build_context(Workspace(ws), 2, [], ["train"], outcome.model_dump(), None).render()
    assert canary not in context and canary not in last_progress_line(log)
    assert canary not in json.dumps(outcome.model_dump())


def test_a_private_key_or_the_dashboard_token_is_redacted_wherever_it_shows(tmp_path):
    from loop.util.secrets import redact, workspace_secrets

    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + "A" * 40 + "\n-----END RSA PRIVATE KEY-----"
    assert "MIIEow" not in redact(f"log tail:\n{key}\nmore")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "dashboard.token").write_text("tok-" + "x" * 40 + "\n")
    assert "tok-" + "x" * 40 not in redact("the token tok-" + "x" * 40, workspace_secrets(tmp_path))


# ----------------------------------------------------- 4. locks a run could hold ----

@needs_sandbox
def test_a_run_sees_none_of_the_daemons_files_so_it_can_hold_no_lock_on_them(tmp_path):
    ws = tmp_path / "ws"
    files = ["events.jsonl", "runs/index.jsonl", "daemon.lock", "slots/pool.lock", "notes/storyline.md",
             "state.json", "models/lineage.csv"]
    for rel in files:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text("x\n")
    probe = " ; ".join(f"(exec 9<{ws / rel} && flock -n 9 && echo HELD {rel}) 2>/dev/null" for rel in files)
    run_dir = sandboxed(ws, f"{probe}; ls {ws} > $HOME/../out/seen.txt; true")
    seen = (run_dir / "out" / "seen.txt").read_text().split()
    assert seen == ["runs"], seen                  # its own folder's parent, nothing else of the workspace
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)   # outside: they are there
    assert "HELD events.jsonl" in done.stdout


def test_an_append_never_waits_long_on_a_lock_another_process_holds(tmp_path, monkeypatch):
    import time

    from loop.util import fsutil

    monkeypatch.setattr(fsutil, "APPEND_LOCK_WAIT_S", 0.2)
    path = tmp_path / "events.jsonl"
    path.write_text('{"a": 1}\n')
    holder = subprocess.Popen([sys.executable, "-c", f"import fcntl,time; f=open({str(path)!r}); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        fsutil.append_line(path, '{"b": 2}\n')
        assert time.monotonic() - t0 < 30               # bounded by the wait, not by the holder
    finally:
        holder.kill()
        holder.wait()
    assert path.read_text().splitlines() == ['{"a": 1}', '{"b": 2}']


# --------------------------------------------------------- 5. the shared pixel cache ----

@needs_sandbox
def test_a_run_can_change_nothing_in_the_pixel_cache_later_runs_are_scored_on(tmp_path, monkeypatch):
    """The daemon decodes the task into the cache before its runs start; inside a run the cache is
    read-only: replacing an array, writing into one in place, forging the facts or the scan memo,
    pre-planting an array for a size not built yet and a lock link all fail, and nothing changes."""
    import hashlib

    from PIL import Image

    from loop.domains import resolve_domain
    from loop.domains.pixels import CACHE_ENV

    cache = tmp_path / "ws" / "cache" / "pixels"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(12):
            Image.new("RGB", (10, 10), (i * 20, 0, 0) if c == "a" else (0, i * 20, 0)).save(data / c / f"{i}.png")
    data.chmod(0o755)
    domain = resolve_domain("image_folder", {"root": str(data)})
    domain.warm_cache([16])
    before = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in cache.iterdir() if f.is_file()}
    array = next(n for n in before if n.endswith("px.npy"))
    stem = array[: -len("-16px.npy")]
    attacks = [f"printf x >> {cache}/{array}", f"cp /dev/null {cache}/{array}",
               f"cp /dev/null {cache}/{stem}-16px.facts.npz", f"cp /dev/null {cache}/{stem}-48px.npy",
               f"ln -s /tmp/x {cache}/{stem}-64px.npy.lock", f"rm -f {cache}/{array}"]
    run_dir = sandboxed(tmp_path / "ws", " ; ".join(f"({a}) 2>>$HOME/../out/errors.txt" for a in attacks) + "; true")
    after = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in cache.iterdir() if f.is_file()}
    assert after == before and not list(cache.glob("*-48px*")) and not list(cache.glob("*-64px*"))
    assert "Read-only file system" in (run_dir / "out" / "errors.txt").read_text()


@needs_sandbox
@pytest.mark.slow
def test_a_run_that_needs_a_size_the_daemon_did_not_build_decodes_a_private_copy(tmp_path, monkeypatch):
    """The cache is read-only to runs; a trainer at a size nobody built decodes into its own /tmp."""
    from PIL import Image

    from loop.domains.pixels import CACHE_ENV

    cache = tmp_path / "ws" / "cache" / "pixels"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (10, 10), (i * 10, 0, 0) if c == "a" else (0, i * 10, 0)).save(data / c / f"{i}.png")
    data.chmod(0o755)
    config = json.dumps({"data": {"domain": "image_folder", "domain_args": {"root": str(data)},   # JSON is YAML
                                  "image_size": 24, "batch_size": 8}, "run": {"epochs": 1, "threads": 1}})
    run_dir = sandboxed(tmp_path / "ws", f"cd {REPO} && printf %s {shlex.quote(config)} > $HOME/../out/train.yaml && "
                                         f"{sys.executable} -m loop.trainer --config $HOME/../out/train.yaml "
                                         "--out $HOME/../out/run > $HOME/../out/train.txt 2>&1", check=False,
                        readonly=(str(data),))
    assert (run_dir / "out" / "run" / "metrics.json").exists(), (run_dir / "out" / "train.txt").read_text()[-2000:]
    assert json.loads((run_dir / "out" / "run" / "metrics.json").read_text())["status"] == "ok"
    assert "is read-only here" in (run_dir / "out" / "train.txt").read_text()
    assert not list(cache.glob("*-24px.npy"))


# ------------------------------------------------------------------- 6. limits ----

@needs_sandbox
def test_a_run_cannot_write_past_the_disk_cap_or_fill_shared_memory_and_its_wrapper_holds_the_walltime(tmp_path):
    ws = tmp_path / "ws"
    run_dir = sandboxed(ws, "cd $HOME/../out && (dd if=/dev/zero of=big bs=1M count=8 2>/dev/null; true) && "
                            "(dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; true) && "
                            "ulimit -n > nofile.txt && ulimit -u > nproc.txt && du -k /dev/shm/fill > shm.txt",
                        check=False, budget={"max_disk_gb": 0.004}, sandbox_shm_gb=0.016)
    run_dir = run_dir / "out"
    assert (run_dir / "big").stat().st_size <= 0.004 * (1 << 30)         # RLIMIT_FSIZE: the disk cap
    assert int((run_dir / "shm.txt").read_text().split()[0]) <= 0.016 * (1 << 20) + 4
    assert int((run_dir / "nofile.txt").read_text()) == 16384 and int((run_dir / "nproc.txt").read_text()) == 4096
    from loop.run.supervise import prepare_run
    sandbox = load_sandbox(DaemonConfig.model_validate({}), REPO, ws)
    slow = ws / "runs" / "slow"
    prepared = prepare_run("slow", "t", ["bash", "-c", "sleep 60"], slow, REPO, {}, sandbox, walltime_seconds=1)
    done = subprocess.run(prepared.command, env=prepared.env, cwd=REPO, capture_output=True, text=True, timeout=50)
    assert done.returncode == 124 and (slow / "exit_code").read_text().strip() == "124 walltime"


@needs_sandbox
def test_a_run_gets_a_cgroup_of_its_own_that_caps_its_memory_and_its_tasks(tmp_path):
    from loop.run.cgroup import ROOT, Caps, make

    probe, why = make(f"run-probe-{uuid.uuid4().hex[:6]}", Caps(memory_bytes=64 << 20, tasks=64))
    if probe is None:
        pytest.skip(f"no cgroup can be made here ({why}): runs keep their rlimits alone")
    probe.remove()
    ws = tmp_path / "ws"
    hog = f"{sys.executable} -c 'b = bytearray(600 << 20); b[::4096] = bytes(len(b[::4096]))'"
    run_dir = sandboxed(ws, f"exec {hog}", check=False, sandbox_memory_gb=0.125)
    assert (run_dir / "exit_code").read_text().strip() == "137 oom"               # the memory cap killed it
    assert "reached its memory cap of 0.12 GB" in (run_dir / "stderr.txt").read_text()
    # its tasks: a run cannot start more than its cap, and its group goes with it
    wrap = subprocess.Popen([sys.executable, "-m", "loop.run.runwrap", str(tmp_path / "exit"), "--cap", "tasks=16",
                             "--", "sh", "-c", "for i in $(seq 1 40); do sleep 30 & done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = wrap.communicate(timeout=60)
    assert "cannot fork" in err.lower()                                       # refused past 16
    assert not [b for b in (ROOT / "pids", ROOT / "unified", ROOT) if (b / "llmloop" / f"run-{wrap.pid}").exists()]


def test_a_new_runs_group_leaves_a_live_runwraps_empty_group_and_removes_a_dead_ones():
    """A live runwrap's group is empty between its making and its child's join: another run starting
    then must not remove it (under load that failed the first run's start). A dead runwrap's goes."""
    from loop.run.cgroup import Caps, make

    dead = subprocess.Popen(["true"])
    dead.wait()
    caps = Caps(tasks=64)
    live_group, why = make(f"run-{os.getpid()}", caps)        # this process is alive, its group empty
    if live_group is None:
        pytest.skip(f"no cgroup can be made here ({why})")
    dead_group, _ = make(f"run-{dead.pid}", caps)
    newest = None
    try:
        newest, _ = make(f"run-{uuid.uuid4().int % 10**6 + 4_000_000}", caps)
        assert all(f.exists() for f in live_group.folders), "a live runwrap's empty group was removed"
        assert not any(f.exists() for f in dead_group.folders), "a dead runwrap's empty group was kept"
    finally:
        for group in (live_group, dead_group, newest):
            if group is not None:
                group.remove(patience=0)


@needs_sandbox
def test_a_project_whose_venv_is_a_symlink_runs_its_python_in_the_sandbox(tmp_path):
    """A project's `.venv` may be a link to a venv kept elsewhere: the daemon then runs as
    `<project>/.venv/bin/python`, and the sandbox must show where the link points, not a dangling name."""
    project = tmp_path / "project"
    project.mkdir()
    (project / ".venv").symlink_to(Path(sys.prefix).resolve())
    python = project / ".venv" / "bin" / "python"
    code = ("import sys; from pathlib import Path; from loop.config import DaemonConfig; "
            "from loop.run.sandbox_setup import run_by_hand; "
            "sys.exit(run_by_hand(DaemonConfig(), Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], timeout=60))")
    done = subprocess.run([str(python), "-c", code, str(project), str(tmp_path / "ws"),
                           f"{python} -c 'print(6 * 7)'"], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "42" in done.stdout, done.stderr[-2000:]


# ---------------------------------------------------------------- 7. the host ----

@needs_sandbox
def test_a_run_sees_only_the_hosts_system_folders_and_cannot_nest_a_user_namespace(tmp_path):
    import socket

    folder = Path("/var/lib") / f"llmloop-test-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(folder / "sock"))
        server.listen(1)
        connect = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({str(folder / 'sock')!r})"
        probe = ("ls / > $HOME/../out/root.txt; ls /var > $HOME/../out/var.txt; "
                 f"({sys.executable} -c {shlex.quote(connect)} && echo CONNECTED) > $HOME/../out/sock.txt 2>&1; "
                 "(unshare -U -r true && echo NESTED) > $HOME/../out/userns.txt 2>&1; true")
        run_dir = sandboxed(tmp_path / "ws", probe, check=False)
        server.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    top = set((run_dir / "out" / "root.txt").read_text().split())
    assert not top & {"home", "srv", "mnt", "media", "boot"}, top
    assert (run_dir / "out" / "var.txt").read_text().split() == ["tmp"]       # the masked, empty /var/tmp alone
    assert "CONNECTED" not in (run_dir / "out" / "sock.txt").read_text()
    assert "NESTED" not in (run_dir / "out" / "userns.txt").read_text()


# ------------------------------------------------------- 8. no sandbox, no shell ----

def test_run_command_is_refused_when_there_is_no_sandbox(tmp_path):
    from loop.agents.schema import Decision
    from loop.cycle.decide import gate_decision as gate
    from loop.cycle.record import CycleRecord
    from loop.cycle.state import LoopState
    from loop.daemon.process import build_loop, workspace_of

    cfg = daemon_cfg(tmp_path, sandbox="optional")
    loop = build_loop(cfg, workspace_of(cfg).ensure(), lambda: False, lambda *_: None)
    loop.sandbox = None                         # as on a machine without bubblewrap
    decision = Decision(action="run_command", command=f"cd {REPO} && echo hello", run_label="echo-hello",
                        rationale="Print a line to check the command path works end to end.")
    rec = CycleRecord(cycle=1, trace="t")
    acted, plan = gate(loop, LoopState(), decision, rec)
    assert plan is None and acted.action == "wait" and "only inside the sandbox" in rec.quality_gate.reasons[0]


# ------------------------------------------- the daemon, with a run that grabs every lock ----

@needs_sandbox
@pytest.mark.slow
def test_a_daemon_whose_run_locks_everything_it_can_open_finishes_its_cycle_and_reports_it(tmp_path, llm_server):
    """The run takes LOCK_EX on every file it can open (its own folder, the repo, the system) and then
    sleeps past its walltime: the daemon's cycles go on, the run is killed at its walltime by its own
    wrapper and judged timed_out, and the next cycle's events land."""
    grab = textwrap.dedent("""\
        import fcntl, os, time
        held = []
        for top in ("/", os.path.expanduser("~/..")):
            for root, dirs, files in os.walk(top):
                dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
                for name in files[:50]:
                    try:
                        handle = open(os.path.join(root, name))
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        held.append(handle)
                    except OSError:
                        pass
                if len(held) > 3000:
                    break
        print("holding", len(held), flush=True)
        time.sleep(600)
        """)
    tools = tmp_path / "tools"                  # a folder the sandbox user may read, bound in read-only
    tools.mkdir(mode=0o755)
    (tools / "grab.py").write_text(grab)
    command = f"cd {REPO} && python3 {tools}/grab.py"
    llm_server.script({"content": json.dumps({
        "action": "run_command", "command": command, "run_label": "grab-every-lock", "monitor_seconds": 120,
        "rationale": "Hold a lock on every file the run can open, then outlive its walltime."})},
        {"content": json.dumps({"action": "wait", "rationale": "Nothing more to do in this test cycle."})})
    from loop.daemon.process import run_daemon, workspace_of

    cfg = daemon_cfg(tmp_path, builder={"base_url": llm_server.base_url, "model": "t", "when_unavailable": "wait"},
                     mentor_enabled=False, budget={"max_walltime_minutes": 0.05},
                     sandbox_readonly_paths=[str(tmp_path / "tools")], daemon_poll_seconds=0,
                     adaptive_timer={"min_seconds": 0, "max_seconds": 0.01})
    ws = workspace_of(cfg)
    state = run_daemon(cfg, ws, max_cycles=2, say=lambda *_: None)
    cycles = [json.loads(line) for line in (ws.root / "events.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "cycle"]
    assert state.cycle == 2 and len(cycles) == 2
    first = cycles[0]
    assert first["run_outcome"]["status"] == "timed_out", first.get("run_outcome")
    assert "holding" in (Path(first["run"]["log_path"])).read_text()
    assert first["seconds"] < 110                              # well inside its 120-s window
    assert first["run_outcome"]["seconds"] < 60                # killed at its 3-s cap: a shell line gets no grace


def test_a_cache_file_changed_after_its_build_is_never_read_but_rebuilt_and_said(tmp_path, monkeypatch):
    """Each cache file's digest is recorded at build; one that no longer matches (changed in place,
    by anyone) is rebuilt before anything reads it, and the daemon's hook hears of it."""
    import numpy as np
    from PIL import Image

    from loop.domains import pixels, resolve_domain
    from loop.domains.pixels import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    data = tmp_path / "data"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), i * 30 if c == "a" else 255 - i * 30).save(data / c / f"{i}.png")
    first = resolve_domain("image_folder", {"root": str(data), "mode": "L"})
    original = np.array(first.splits.train.view(16).numpy(slice(None)))
    array = next((tmp_path / "cache").glob("*-16px.npy"))
    size = array.stat().st_size
    with open(array, "r+b") as fh:                     # in place, as a writer under a live memory map would
        fh.seek(128)                                   # past the .npy header: every image's pixels
        fh.write(b"\x07" * (size - 128))
    heard = []
    monkeypatch.setattr(pixels, "on_rebuild", lambda path, why: heard.append((path, why)))
    again = resolve_domain("image_folder", {"root": str(data), "mode": "L"})
    assert np.array_equal(np.array(again.splits.train.view(16).numpy(slice(None))), original)
    assert heard and heard[0][0] == array and "digest" in heard[0][1]


@needs_sandbox
def test_a_run_that_may_write_the_runs_folder_cannot_write_the_runs_index(tmp_path):
    """`sandbox_writable_paths: [runs]`: the run writes beside its own folder, but the runs index (the
    history that decides the kept best) stays the daemon's: not rewritten, appended to, moved or
    removed, and not planted either when no run has finished yet."""
    row = '{"run_id": "r1", "val_accuracy": 0.5}\n'
    attack = ("echo forged > {i}; echo forged >> {i}; mv {i} {i}.moved; rm -f {i}; ln -sf /dev/null {i}; "
              "echo ok > {runs}/scratch.txt; echo own > $HOME/../out/mine.txt; true")
    for before in (row, None):
        ws = tmp_path / ("with-history" if before else "fresh")
        (ws / "runs").mkdir(parents=True)
        index = ws / "runs" / "index.jsonl"
        if before:
            index.write_text(before)
        run_dir = sandboxed(ws, attack.format(i=index, runs=ws / "runs"), sandbox_writable_paths=["runs"])
        assert index.is_file() and not index.is_symlink() and index.read_text() == (before or ""), run_dir
        assert not (ws / "runs" / "index.jsonl.moved").exists()
        assert (ws / "runs" / "scratch.txt").read_text() == "ok\n"       # the named folder is writable
        assert (run_dir / "out" / "mine.txt").read_text() == "own\n"     # and so is the run's own


def test_the_sandbox_keeps_every_record_the_workspace_names_from_runs(tmp_path):
    """The protected set is the workspace layout's own list: the history, the finish-up and stop
    requests, the evolution log are in it, and a writable path holding any record but a pinned one
    is refused, naming it."""
    from loop.util.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    cfg = DaemonConfig.model_validate({"sandbox": "optional"})
    sandbox = load_sandbox(cfg, REPO, ws.root)
    for record in (ws.runs_index, ws.finish_up, ws.stop_request, ws.models.log, ws.state, ws.models.head):
        assert record.resolve() in sandbox.protected, record
    for folder in ("slots", "reports", "models", "autofix_configs"):
        with pytest.raises(ConfigError, match=f"sandbox_writable_paths: .*{folder}"):
            load_sandbox(DaemonConfig.model_validate({"sandbox": "optional", "sandbox_writable_paths": [folder]}),
                         REPO, ws.root)
