"""Kill-9 campaign harness: imports the loop once, then per kill forks a child that runs the real
daemon (`run_daemon`: real workspace, files, lock, and the real `openai` client against the scripted
test server in this process) or drives the promotion pipeline's archive freeze and GEN_HEAD cutover,
and kills it with SIGKILL: after a seeded random delay, or at a named fault point where the child
kills itself (loop/util/faults.py). Between kills it checks the invariants on disk. Forking keeps a kill
at tens of milliseconds instead of a fresh interpreter per kill.

    python -m tests.kill_harness --workdir DIR --kills N --seed S --out RESULT.json
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loop.archive import freeze as archive  # noqa: E402
from loop.archive.checkpoints import CheckpointManager  # noqa: E402
from loop.archive.headswitch import cutover  # noqa: E402
from loop.archive.lifecycle import Lifecycle  # noqa: E402
from loop.archive.lineage import LineageRow, mark_promoted, read_lineage  # noqa: E402
from loop.archive.paths import ModelPaths  # noqa: E402
from loop.archive.proposal import read_proposal  # noqa: E402
from loop.archive.store import load_store, save_store  # noqa: E402
from loop.config import DaemonConfig, validate  # noqa: E402
from loop.config.sections import RetentionConfig  # noqa: E402
from loop.cycle.state import LoopState  # noqa: E402
from loop.daemon.process import run_daemon  # noqa: E402
from loop.daemon.recovery import is_temp_name  # noqa: E402
from loop.journal.events import EventLog  # noqa: E402
from loop.util.workspace import Workspace  # noqa: E402
from tests.llm_server import LLMServer  # noqa: E402

# Fault points a child kills itself at (NAME@N: the N-th time it gets there). Daemon points first,
# then the archive freeze and GEN_HEAD cutover points of an evolution child.
DAEMON_POINTS = ("atomic:before_rename", "atomic:after_rename", "events:torn", "events:after_append")
EVOLUTION_POINTS = ("archive:mid_copy", "archive:staged_read_only", "lineage:before_upsert",
                    "cutover:after_new_link", "cutover:after_rename", "lifecycle:before_rename")
WEIGHTS_BYTES = 1 << 20          # a 1 MiB model file: copying it is a window a random kill can land in


# ============================================================ the LLM script ====

def decisions() -> list[dict]:
    """Quick cycles that still write every daemon state file: notes, TODOs, a run, state, events."""
    def d(action, **fields):
        base = {"action": action, "rationale": f"Kill campaign: exercising the {action} path of the daemon.",
                "run_label": f"kill-{action}", "strategy_dimension": "optimization"}
        return {"content": json.dumps(base | fields)}
    return [d("research", notes_update="Looked at the leaderboard.", todo_new=["Measure the effect of lr"]),
            d("run_command", command=f"cd {REPO} && echo kill-campaign"),
            d("wait", data_exploration_update="Ten classes, balanced."),
            d("research", resolve_shared_todo_ids=["T0001", "T0002", "T0003"], notes_update="Next: augment."),
            d("wait")]


class EndlessServer(LLMServer):
    """The test server answering the rotating decision script forever, without keeping requests."""

    def __init__(self, with_runs: bool = True):
        super().__init__()
        self.rotation = [d for d in decisions() if with_runs or "run_command" not in d["content"]]
        self.served = 0

    def record_and_pop(self, path, headers, raw):
        with self._lock:
            self.served += 1
            return self.rotation[self.served % len(self.rotation)]


def daemon_config(workdir: Path, base_url: str) -> DaemonConfig:
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = workdir / "tiny.yaml"
    trainer.write_text(json.dumps({"data": {"domain": "digits", "image_size": 16}, "model": {"name": "resnet10t"}}))
    role = {"base_url": base_url, "model": "test", "max_attempts": 1, "timeout_seconds": 5}
    return validate(DaemonConfig, {
        "workspace": str(workdir / "ws"), "default_trainer_config": str(trainer),
        "credentials_file": str(workdir / "no-credentials.json"), "builder": role, "mentor": role,
        "mentor_enabled": False, "daemon_poll_seconds": 0, "default_monitor_seconds": 2,
        "evo_period_cycles": 1_000_000, "phase": {"schedule": "off"},
        "adaptive_timer": {"min_seconds": 0, "max_seconds": 0.05},
        "evolution": {"rules": {"per_class_accuracy_floor": None}}}, "<kill harness>")


# ============================================================== the children ====

def child_daemon(cfg: DaemonConfig, fault: str | None, max_cycles: int | None = None) -> None:
    if fault:
        os.environ["LLMLOOP_FAULT"] = fault
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    run_daemon(cfg, Workspace(Path(cfg.workspace)), max_cycles=max_cycles, say=lambda *_: None)


def child_evolution(ws_root: Path, fault: str | None, rng_seed: int) -> None:
    """Freeze archive entries, record them, and cut GEN_HEAD over to them, in a loop until killed."""
    import loop.util.faults

    rng = random.Random(rng_seed)
    if fault in ("cutover:after_new_link", "cutover:after_rename", "archive:mid_copy", "archive:staged_read_only",
                 "lineage:before_upsert"):
        os.environ["LLMLOOP_FAULT"] = fault        # real fault points in headswitch.cutover / archive.freeze
    loop.util.faults._hits.clear()
    paths = ModelPaths(ws_root)
    run_dir = ws_root / "fake_run"
    while True:
        if not (run_dir / "model.safetensors").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "model.safetensors").write_bytes(os.urandom(WEIGHTS_BYTES))
            (run_dir / "config.json").write_text('{"model": "fake"}\n')
        gen = max((r.gen_id for r in read_lineage(paths.lineage)), default=0) + 1
        name = f"kill-G{gen:03d}-{rng.randrange(1 << 30):08x}"
        texts = {f: f"{f} of {name}\n" for f in archive.WRITTEN}
        texts["STATUS.txt"] = "PASS\n"
        paths.archive.mkdir(parents=True, exist_ok=True)
        archive.freeze_and_record(paths, name, run_dir, texts, LineageRow(
            name=name, gen_id=gen, branch_id="k", parent=paths.head_name() or "", seed=1, strategy="uniform",
            status="PASS", score=0.5, archive_path="", hashes_sha256=""))
        store = load_store(paths)
        store.add(name)
        store.transition(name, Lifecycle.GERMINATED)
        if fault == "lifecycle:before_rename":          # the next atomic write is the checkpoint's
            os.environ["LLMLOOP_FAULT"] = "atomic:before_rename"
        save_store(paths, store)
        archive.require_intact(paths, name)           # only a verified entry may become HEAD
        cutover(paths, name)
        mark_promoted(paths.lineage, name)


# ============================================================ the invariants ====

class Violation(AssertionError):
    pass


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Violation(what)


def stray_temps(root: Path) -> list[str]:
    found = []
    for folder in Workspace(root).state_folders():
        if folder.is_dir():
            found += [str(p) for p in folder.iterdir() if is_temp_name(p.name)]
    return found


def events_snapshot(path: Path) -> dict:
    """Complete lines (all must parse), and whether a torn last line follows them."""
    data = path.read_bytes() if path.exists() else b""
    complete = data[: data.rfind(b"\n") + 1]
    for n, line in enumerate(complete.splitlines()):
        try:
            json.loads(line)
        except ValueError:
            raise Violation(f"events.jsonl line {n + 1} does not parse: {line[:80]!r}") from None
    return {"size": len(complete), "sha": hashlib.sha256(complete).hexdigest(), "torn": len(data) > len(complete)}


def check_events_unique(path: Path) -> list[dict]:
    records = list(EventLog(path))
    cycles = [e for e in records if e["kind"] == "cycle"]
    numbers = [e["cycle"] for e in cycles]
    check(numbers == sorted(set(numbers)), f"cycle events duplicated or out of order: {numbers[-20:]}")
    traces = [e["cycle_trace_id"] for e in cycles]
    check(len(traces) == len(set(traces)), "a cycle trace id appears twice")
    return records


def check_state_files(ws: Workspace) -> LoopState:
    state = LoopState.load(ws.state)                   # raises on a torn or invalid state.json
    if ws.heartbeat.exists():
        json.loads(ws.heartbeat.read_text())
    for note in (ws.workpad, ws.todo, ws.storyline):
        if note.exists():
            note.read_text(encoding="utf-8")
    paths = ModelPaths(ws.root)
    read_proposal(paths)                             # raises on a torn or invalid proposal
    if paths.lifecycle.exists():
        restored = CheckpointManager(paths.lifecycle).restore()
        check(not restored.skipped, f"corrupt lifecycle checkpoints: {restored.skipped}")
    read_lineage(paths.lineage)
    return state


def check_gen_head(ws: Workspace) -> bool:
    """GEN_HEAD, when there is one, resolves to an archive entry that verifies. True if checked."""
    paths = ModelPaths(ws.root)
    if not paths.head.is_symlink():
        check(not paths.head.exists(), "GEN_HEAD exists but is not a symlink")
        return False
    name = paths.head_name()
    check(paths.head.resolve().parent == paths.archive.resolve(), f"GEN_HEAD points outside the archive: {name}")
    archive.require_intact(paths, name)                 # raises ArchiveTampered naming what changed
    return True


def unrecorded_entries(ws: Workspace) -> list[str]:
    """Frozen entries that lineage.csv does not know (a kill between freeze and the lineage write)."""
    paths = ModelPaths(ws.root)
    recorded = {r.name for r in read_lineage(paths.lineage)}
    if not paths.archive.exists():
        return []
    return [p.name for p in paths.archive.iterdir() if not p.name.startswith(".") and p.name not in recorded]


# ================================================================ campaign ====

def become_subreaper() -> None:
    """Orphaned run processes of a killed daemon are reparented here, so they can be reaped."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)     # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_orphans() -> None:
    while True:
        try:
            pid, _ = waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


LIVE_CHILDREN: set[int] = set()       # forked here and not yet waited for: killed if the harness stops early


def waitpid(pid: int, flags: int = 0) -> tuple[int, int]:
    done, status = os.waitpid(pid, flags)  # the one real call
    if done:
        LIVE_CHILDREN.discard(pid)
    return done, status


def kill_live_children() -> None:
    for pid in list(LIVE_CHILDREN):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        waitpid(pid)


def fork(target, *args) -> int:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            target(*args)
        except BaseException:                       # noqa: BLE001 (the child must never return)
            import traceback
            traceback.print_exc()
            code = 1
        os._exit(code)
    LIVE_CHILDREN.add(pid)
    return pid


def wait_killed(pid: int, timeout: float) -> tuple[bool, int]:
    """Wait for the child to die by itself (a fault point); SIGKILL it after `timeout`.
    Returns (died at the point by itself, wait status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = waitpid(pid, os.WNOHANG)
        if done:
            return True, status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    return False, waitpid(pid, 0)[1]


class Campaign:
    def __init__(self, workdir: Path, seed: int, server: EndlessServer):
        self.rng = random.Random(seed)
        self.cfg = daemon_config(workdir, server.base_url)
        self.ws = Workspace(Path(self.cfg.workspace)).ensure()
        self.figures = Counter()
        self.by_point: Counter = Counter()
        self.max_cycle = 0
        self.pending: dict | None = None           # what the next start must have repaired
        self.starts = self.count_starts()          # daemon_start records so far

    # ---- one kill ----
    def kill_once(self) -> None:
        kind = self.pick_kind()
        if kind == "random":
            pid = fork(child_daemon, self.cfg, None)
            time.sleep(self.rng.uniform(0.0, 0.5))
            os.kill(pid, signal.SIGKILL)
            waitpid(pid, 0)
        elif kind == "random:archive":
            pid = fork(child_evolution, self.ws.root, None, self.rng.randrange(1 << 30))
            time.sleep(self.rng.uniform(0.0, 0.25))
            os.kill(pid, signal.SIGKILL)
            waitpid(pid, 0)
        elif kind in EVOLUTION_POINTS:
            pid = fork(child_evolution, self.ws.root, kind, self.rng.randrange(1 << 30))
            reached, status = wait_killed(pid, 10)
            self.check_reached(kind, reached, status)
        else:
            point = f"{kind}@{self.rng.randint(1, 3)}"
            pid = fork(child_daemon, self.cfg, point)
            reached, status = wait_killed(pid, 10)
            self.check_reached(kind, reached, status)
        self.figures["kills"] += 1
        self.by_point[kind] += 1
        reap_orphans()
        starts = self.count_starts()                # (only the children write events: read once a kill)
        self.after_kill(started=starts > self.starts)
        self.starts = starts

    def pick_kind(self) -> str:
        """Every named point once first (so each run covers mid-write, mid-archive and mid-cutover),
        then mostly random instants."""
        every = DAEMON_POINTS + EVOLUTION_POINTS
        if self.figures["kills"] < 2 * len(every):
            return every[self.figures["kills"] // 2] if self.figures["kills"] % 2 else "random"
        roll = self.rng.random()
        if roll < 0.55:
            return "random"
        if roll < 0.65:
            return "random:archive"
        if roll < 0.85:
            return self.rng.choice(DAEMON_POINTS)
        return self.rng.choice(EVOLUTION_POINTS)

    def check_reached(self, kind: str, reached: bool, status: int) -> None:
        check(reached, f"the child never reached fault point {kind} (killed after the timeout)")
        check(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL,
              f"fault point {kind}: the child ended with status {status}, not SIGKILL")

    def count_starts(self) -> int:
        return sum(1 for e in EventLog(self.ws.events) if e["kind"] == "daemon_start")

    # ---- the invariants after one kill ----
    def after_kill(self, started: bool) -> None:
        ws = self.ws
        if started and self.pending is not None:
            self.check_restart(self.pending)
        snapshot = events_snapshot(ws.events)
        check_events_unique(ws.events)
        state = check_state_files(ws)
        check(state.cycle >= self.max_cycle, f"state cycle went backwards: {state.cycle} < {self.max_cycle}")
        self.max_cycle = state.cycle
        if check_gen_head(ws):
            self.figures["gen_head_verified"] += 1
        already = self.pending is not None and self.pending["snapshot"] == snapshot
        self.figures["torn_tails_seen"] += snapshot["torn"] and not already
        last_cycle = EventLog(ws.events).tail(1, kind="cycle")
        logged = last_cycle[0]["cycle"] if last_cycle else 0
        temps = stray_temps(ws.root)
        staging = [p.name for p in ModelPaths(ws.root).archive.glob(".staging-*")] \
            if ModelPaths(ws.root).archive.exists() else []
        seen = self.pending or {"temps": [], "staging": []}
        self.figures["temp_files_left_by_kills"] += len(set(temps) - set(seen["temps"]))
        self.figures["staging_left_by_kills"] += len(set(staging) - set(seen["staging"]))
        self.pending = {"snapshot": snapshot, "temps": temps, "staging": staging,
                        "resume": max(state.cycle, logged) + 1}

    def check_restart(self, before: dict) -> None:
        """The start after a kill cut the torn tail (keeping every complete line), swept the temps and
        staging folders, and resumed at the next cycle number."""
        ws = self.ws
        data = ws.events.read_bytes()
        kept = data[: before["snapshot"]["size"]]
        check(hashlib.sha256(kept).hexdigest() == before["snapshot"]["sha"], "complete events were lost or changed")
        rest = data[before["snapshot"]["size"]:]
        start = json.loads(rest.split(b"\n", 1)[0])           # the torn tail is gone: a whole record follows
        check(start["kind"] == "daemon_start", f"the first record after the kill is {start['kind']}")
        check(start["repaired_torn_event"] == before["snapshot"]["torn"], "torn tail not reported as repaired")
        check(start["resume_cycle"] == before["resume"],
              f"resumed at cycle {start['resume_cycle']}, expected {before['resume']}")
        recovery = start["recovery"]
        swept = set(recovery["temp_files_removed"])
        check(all(str(Path(t).relative_to(ws.root)) in swept for t in before["temps"]), "a temp file was not swept")
        check(set(before["staging"]) <= set(recovery["archive_staging_removed"]), "archive staging left behind")
        self.figures["resumed"] += 1
        self.figures["torn_tails_repaired"] += int(start["repaired_torn_event"])
        self.figures["temp_files_swept"] += len(swept)
        self.figures["staging_swept"] += len([s for s in recovery["archive_staging_removed"]
                                              if s.startswith(".staging")])
        self.figures["cycle_reconciled"] += int(recovery["cycle_reconciled"] is not None)
        self.figures["entries_quarantined"] = self.figures.get("entries_quarantined", 0) + \
            len(recovery.get("archive_entries_quarantined", []))
        self.figures["freezes_completed"] = self.figures.get("freezes_completed", 0) + \
            len(recovery.get("archive_freezes_completed", []))
        check(not unrecorded_entries(ws), f"unrecorded archive entries after a start: {unrecorded_entries(ws)}")

    # ---- the end: one clean start must finish cycles with everything intact ----
    def final_restart(self) -> None:
        pid = fork(child_daemon, self.cfg, None, 2)
        _, status = waitpid(pid, 0)
        check(os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"the final restart exited with {status}")
        reap_orphans()
        self.check_restart(self.pending)
        snapshot = events_snapshot(self.ws.events)
        check(not snapshot["torn"], "torn tail after a clean stop")
        records = check_events_unique(self.ws.events)
        check(records[-1]["kind"] == "daemon_stop", "the final restart did not stop cleanly")
        check(not stray_temps(self.ws.root), f"stray temp files remain: {stray_temps(self.ws.root)}")
        check(LoopState.load(self.ws.state).cycle == records[-1]["cycle"], "state and events disagree on the cycle")
        if check_gen_head(self.ws):
            self.figures["gen_head_verified"] += 1
        paths = ModelPaths(self.ws.root)
        report = archive.verify_archive(paths)
        broken = {k: v for k, v in report.items() if v}
        check(not broken, f"archive entries fail verify after the final start: {broken}")
        self.figures["archive_entries_verified"] = sum(1 for k, v in report.items() if not v)
        self.figures["unrecorded_archive_entries"] = len(unrecorded_entries(self.ws))
        self.figures["cycles_recorded"] = len([r for r in records if r["kind"] == "cycle"])


# ============================================================== disk faults ====
# The daemon under a really full disk (a tiny tmpfs in a user+mount namespace, see
# tests/test_disk_faults.py), under a real file-size limit (RLIMIT_FSIZE with SIGXFSZ ignored, so
# writes get EFBIG), and with ENOSPC injected at one named write site at a time (LLMLOOP_DISK_FAULT).

def child_disk_daemon(cfg: DaemonConfig, stderr_path: Path, env: dict, fsize_limit: int | None = None) -> None:
    import resource

    import loop.daemon.recovery

    os.environ.update(env)
    loop.daemon.recovery.BACKOFF_SECONDS = (0.05, 0.3)          # the test's pause after a failed cycle
    os.dup2(os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    if fsize_limit:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
    child_daemon(cfg, None)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise Violation(f"timed out waiting for {what}")


def alive(pid: int) -> bool:
    return waitpid(pid, os.WNOHANG)[0] == 0


def degraded_events(ws: Workspace) -> list[dict]:
    return [e for e in EventLog(ws.events) if e["kind"] == "degraded"]


def stderr_degraded(path: Path) -> int:
    return path.read_text(errors="replace").count("llmloop degraded") if path.exists() else 0


def last_cycle(ws: Workspace) -> int:
    found = EventLog(ws.events).tail(1, kind="cycle")
    return found[0]["cycle"] if found else 0


def stop_daemon(ws: Workspace, pid: int, timeout: float = 20) -> int:
    ws.stop_request.write_text("stop\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    waitpid(pid, 0)
    raise Violation("the daemon did not stop after the disk was freed")


def check_whole_events(ws: Workspace) -> None:
    snapshot = events_snapshot(ws.events)
    check(not snapshot["torn"], "a failed append left a torn line in events.jsonl")


def injected_site_case(root: Path, base_url: str, site: str, target: str) -> dict:
    """ENOSPC at one write site of a running daemon, then space returns."""
    cfg = daemon_config(root, base_url)
    ws = Workspace(Path(cfg.workspace)).ensure()
    fault_file, stderr = root / "disk_full_sites", root / "daemon.stderr"
    pid = fork(child_disk_daemon, cfg, stderr, {"LLMLOOP_DISK_FAULT": f"@{fault_file}"})
    wait_until(lambda: LoopState.load(ws.state).cycle >= 2, 30, "two good cycles")
    fault_file.write_text(site)
    hits = lambda: (len([e for e in degraded_events(ws) if Path(e["path"] or "").name == target])  # noqa: E731
                    + stderr_degraded(stderr))
    wait_until(lambda: hits() >= 2, 30, f"two failed cycles at {site}")
    good = LoopState.load(ws.state)                      # raises if state.json was torn
    check(alive(pid), f"the daemon exited after ENOSPC at {site}")
    faulted_at = last_cycle(ws)
    fault_file.unlink()
    wait_until(lambda: last_cycle(ws) > faulted_at + 1 and any(Path(e["path"] or "").name == target
                                                               for e in degraded_events(ws)),
               30, f"cycles to resume and a degraded event for {site} once space returned")
    check(LoopState.load(ws.state).cycle >= good.cycle, "state went backwards")
    check_whole_events(ws)
    code = stop_daemon(ws, pid)
    check(code == 0, f"the daemon exited with {code} after ENOSPC at {site}")
    check(not stray_temps(ws.root), f"temp files left after ENOSPC at {site}")     # failed writes clean up
    found = [e for e in degraded_events(ws) if Path(e["path"] or "").name == target]
    return {"site": site, "how": "injected ENOSPC (LLMLOOP_DISK_FAULT)", "write_site": found[0]["site"],
            "errno": found[0]["errno"], "degraded_events": len(degraded_events(ws)),
            "stderr_only": stderr_degraded(stderr), "survived": True}


def fsize_case(root: Path, base_url: str, grown: str) -> dict:
    """A real RLIMIT_FSIZE: one file is grown near the limit before start, the daemon's writes to it
    then fail with EFBIG while everything else goes on."""
    limit = 256 * 1024
    cfg = daemon_config(root, base_url)
    ws = Workspace(Path(cfg.workspace)).ensure()
    stderr = root / "daemon.stderr"
    if grown == "workpad.md":
        head, tail = "# Workpad\n\n## Notes\n", "\n## Data Exploration\n"
        filler = "- [cycle 0] filler note\n" * ((limit - 12 - len(head) - len(tail)) // 24)
        ws.workpad.write_text(head + filler + tail)          # within 40 bytes of the limit: no note fits
        before = ws.workpad.read_bytes()
    else:
        line = json.dumps({"ts": "-", "kind": "filler", "cycle_trace_id": "-", "pad": "x" * 200}) + "\n"
        ws.events.write_text(line * ((limit - 6000) // len(line)))
    pid = fork(child_disk_daemon, cfg, stderr, {}, limit)
    if grown == "workpad.md":
        wait_until(lambda: any(e["errno"] == "EFBIG" for e in degraded_events(ws)), 30, "an EFBIG degraded event")
        wait_until(lambda: last_cycle(ws) >= 3, 30, "cycles going on past the failing write")
        check(ws.workpad.read_bytes() == before, "the workpad was changed by a failed write")
    else:
        wait_until(lambda: stderr_degraded(stderr) >= 2, 30, "degraded reports on stderr (events.jsonl is full)")
    check(alive(pid), f"the daemon exited under RLIMIT_FSIZE ({grown})")
    LoopState.load(ws.state)
    check_whole_events(ws)
    check(ws.events.stat().st_size <= limit, "events.jsonl grew past the limit")
    events_full = grown == "events.jsonl"
    if events_full:                    # nothing can be logged, not even daemon_stop: end it with kill -9
        os.kill(pid, signal.SIGKILL)
        waitpid(pid, 0)
    else:
        check(stop_daemon(ws, pid) == 0, "the daemon did not stop cleanly under RLIMIT_FSIZE")
    efbig = [e for e in degraded_events(ws) if e["errno"] == "EFBIG"]
    return {"site": grown, "how": "RLIMIT_FSIZE (EFBIG)", "write_site": efbig[0]["site"] if efbig else "events",
            "degraded_events": len(degraded_events(ws)), "stderr_only": stderr_degraded(stderr), "survived": True}


def fill_disk(folder: Path) -> Path:
    """Write a filler file until the filesystem is really full (ENOSPC)."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 16, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError as exc:
                check(exc.errno == 28, f"filling the disk ended with {exc!r}")
    return filler


def tmpfs_daemon_case(mount: Path, base_url: str) -> dict:
    """The daemon on a tmpfs that fills up mid-run, then gets space back."""
    # no free-space floor on a 4 MB disk: these cases are about writes that fail, not about waiting for room
    # (the floor has its own test, tests/test_disk_low.py)
    cfg = daemon_config(mount.parent, base_url).model_copy(
        update={"workspace": str(mount / "ws"), "retention": RetentionConfig(min_free_gb=None)})
    ws = Workspace(Path(cfg.workspace)).ensure()
    stderr = mount.parent / "tmpfs_daemon.stderr"
    pid = fork(child_disk_daemon, cfg, stderr, {})
    wait_until(lambda: LoopState.load(ws.state).cycle >= 2, 30, "two good cycles")
    filler = fill_disk(mount)
    time.sleep(0.2)
    full_from = last_cycle(ws)
    wait_until(lambda: stderr_degraded(stderr) + len(degraded_events(ws)) >= 3, 30, "failed cycles on a full disk")
    check(alive(pid), "the daemon exited on a full disk")
    good = LoopState.load(ws.state)
    filler.unlink()
    wait_until(lambda: degraded_events(ws) and last_cycle(ws) > full_from + 1, 30,
               "a degraded event and new cycles once space returned")
    check(LoopState.load(ws.state).cycle >= good.cycle, "state went backwards")
    check_whole_events(ws)
    check(stop_daemon(ws, pid) == 0, "the daemon did not stop cleanly after the disk was freed")
    sites = sorted({e["site"] for e in degraded_events(ws)})
    return {"site": "whole workspace", "how": "tmpfs filled mid-run", "write_sites": sites,
            "errnos": sorted({e["errno"] for e in degraded_events(ws)}),
            "degraded_events": len(degraded_events(ws)), "stderr_only": stderr_degraded(stderr), "survived": True}


def tmpfs_writer_cases(mount: Path) -> list[dict]:
    """Each write site's own writer on a really full disk: it raises ENOSPC (which the daemon turns
    into a `degraded` event) and the last good file survives whole."""
    from loop.archive.lifecycle import LifecycleStore
    from loop.cycle.state import write_heartbeat
    from loop.daemon.recovery import recover
    from loop.journal.history import append_history
    from loop.journal.notes import append_storyline, append_workpad, write_todos
    from loop.report import generate_reports
    from loop.util.progress import ProgressLog

    ws = Workspace(mount / "sites").ensure()
    paths = ModelPaths(ws.root)
    store = LifecycleStore()
    store.add("cand-a")
    run_dir = mount / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "model.safetensors").write_bytes(os.urandom(64 * 1024))
    big = "y" * 20000                                        # bigger than a page: cannot fit in slack
    texts = {f: f"{f}\n" for f in archive.WRITTEN}
    sites = {
        "state.json": (ws.state, lambda: LoopState(cycle=3, last_decision={"big": big}).save(ws.state)),
        "heartbeat": (ws.heartbeat, lambda: write_heartbeat(ws.heartbeat, 3, big, 1, None)),
        "events.jsonl": (ws.events, lambda: EventLog(ws.events).append("cycle", "c00003-x", pad=big)),
        "notes:workpad": (ws.workpad, lambda: append_workpad(ws.workpad, "## Notes", big, 3)),
        "notes:shared_todo": (ws.todo, lambda: write_todos(ws.todo, [])),
        "notes:storyline": (ws.storyline, lambda: append_storyline(ws.storyline, big)),
        "history": (ws.runs_index, lambda: append_history(ws, {"label": "x", "cycle": 3, "ok": True, "pad": big})),
        "progress": (ws.root / "logs" / "progress.log",
                     lambda: ProgressLog(ws.root / "logs" / "progress.log", "t", 1, stream=open(os.devnull, "w"))
                     .line(big)),
        "lifecycle": (paths.lifecycle / "lifecycle.00000001.ckpt", lambda: save_store(paths, store)),
        "archive freeze": (None, lambda: archive.freeze(paths, "full-G001-a", run_dir, texts)),
        "reports": (ws.reports / "final_paper_report.md", lambda: generate_reports(ws.root, 3, big, progress=False)),
    }
    for _name, (path, _) in sites.items():                  # the last good version of each file
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    LoopState(cycle=2).save(ws.state)
    write_heartbeat(ws.heartbeat, 2, "c00002-x", 1, None)
    EventLog(ws.events).append("cycle", "c00002-x", cycle=2)
    append_workpad(ws.workpad, "## Notes", "good note", 2)
    write_todos(ws.todo, [])
    append_storyline(ws.storyline, "- c00002 good")
    append_history(ws, {"label": "good", "cycle": 2, "ok": True})
    (ws.root / "logs" / "progress.log").write_text("good\n")
    save_store(paths, store)
    paths.archive.mkdir(parents=True, exist_ok=True)
    generate_reports(ws.root, 3, "good", progress=False)
    good = {name: path.read_bytes() for name, (path, _) in sites.items() if path is not None}
    results = []
    filler = fill_disk(mount)
    try:
        for name, (path, write) in sites.items():
            try:
                write()
                raised = None
            except OSError as exc:
                raised = exc
            check(raised is not None and raised.errno == 28, f"{name}: a full disk did not raise ENOSPC ({raised!r})")
            if path is None:
                check(not [p for p in paths.archive.iterdir() if not p.name.startswith(".")],
                      "a half archive entry appeared")
                intact = True
            else:
                now = path.read_bytes()
                intact = now == good[name]
                # Every writer is atomic (temp + rename) or a truncate-on-failure append
                # (fsutil.append_line): the last good file survives byte for byte.
                check(intact, f"{name}: the last good file was damaged by the failed write")
            results.append({"site": name, "how": "writer on a full tmpfs", "errno": "ENOSPC",
                            "last_good_intact": intact})
    finally:
        filler.unlink()
    swept = recover(ws, EventLog(ws.events))
    check(swept["archive_staging_removed"] == [".staging-full-G001-a"], f"staging not swept: {swept}")
    check(not stray_temps(ws.root), "temp files left by failed atomic writes")
    return results




def disk_main(workdir: Path, tmpfs: Path | None) -> dict:
    cases, skipped = [], []
    # No run_command here: the tmpfs cases run in a user namespace where the sandbox cannot switch to
    # its unprivileged user (that uid is not mapped); the write sites are the daemon's own.
    with EndlessServer(with_runs=False) as server:
        warm_up(daemon_config(workdir / "warm", server.base_url))
        for site, target in (("atomic:state.json", "state.json"), ("events:append", "events.jsonl"),
                             ("atomic:workpad.md", "workpad.md"), ("atomic:shared_todo.md", "shared_todo.md"),
                             ("atomic:daemon_heartbeat.json", "daemon_heartbeat.json")):
            cases.append(injected_site_case(workdir / site.replace(":", "_"), server.base_url, site, target))
        for grown in ("workpad.md", "events.jsonl"):
            cases.append(fsize_case(workdir / f"fsize_{grown}", server.base_url, grown))
        if tmpfs is None:
            skipped.append("tmpfs cases: no user+mount namespace here (unshare failed)")
        else:
            cases.append(tmpfs_daemon_case(tmpfs, server.base_url))
            cases += tmpfs_writer_cases(tmpfs)
    return {"cases": cases, "skipped": skipped}


def warm_up(cfg: DaemonConfig) -> None:
    """Import and load in the parent what every child needs, so a fork starts the daemon at once (torch
    too: the start counts the device slots before its start record, and no longer imports torch through
    the modules below; the rest: what a daemon's start and first cycle import lazily)."""
    import numpy.ma  # noqa: F401
    import numpy.random  # noqa: F401
    import openai
    import torch  # noqa: F401

    import loop.agents.context  # noqa: F401
    import loop.agents.llm  # noqa: F401
    import loop.candidates.scheduler  # noqa: F401
    import loop.gate.policy  # noqa: F401
    import loop.gate.quality  # noqa: F401
    import loop.gate.repeats  # noqa: F401
    import loop.notify.notifier  # noqa: F401
    import loop.phase.results  # noqa: F401
    import loop.retention.upkeep  # noqa: F401
    import loop.run.repair  # noqa: F401
    import loop.tracking.tracker  # noqa: F401
    import loop.trainer.tensorboard  # noqa: F401
    from loop.agents.prompts import check_rule_budgets
    from loop.daemon.process import check_task_domain

    check_rule_budgets(cfg, cfg.root)
    check_task_domain(cfg, Workspace(Path(cfg.workspace)))
    # the client's HTTP transport and its chat resource import on first use (a fifth of a second a child):
    # made once here, no request sent
    with openai.OpenAI(base_url=cfg.builder.base_url, api_key="warm-up") as client:
        client.chat.completions  # noqa: B018


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=("kill", "disk"), default="kill")
    parser.add_argument("--tmpfs", help="disk mode: a tiny tmpfs mounted for the full-disk cases")
    args = parser.parse_args(argv)
    become_subreaper()
    t0 = time.monotonic()
    result: dict = {}
    if args.mode == "disk":
        try:
            result = disk_main(Path(args.workdir), Path(args.tmpfs) if args.tmpfs else None) | {"ok": True}
        except Violation as exc:
            result = {"ok": False, "violation": str(exc)}
        finally:
            kill_live_children()
        result["seconds"] = round(time.monotonic() - t0, 1)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result))
        return 0 if result["ok"] else 1
    with EndlessServer() as server:
        campaign = Campaign(Path(args.workdir), args.seed, server)
        warm_up(campaign.cfg)
        try:
            for _ in range(args.kills):
                campaign.kill_once()
            campaign.final_restart()
            result["ok"] = True
        except Violation as exc:
            result.update(ok=False, violation=str(exc))
        finally:
            kill_live_children()
        result.update(figures=dict(campaign.figures), by_point=dict(campaign.by_point),
                      seconds=round(time.monotonic() - t0, 1), llm_calls=server.served)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
