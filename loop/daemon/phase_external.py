"""The PHASE pause when a systemd timer owns PHASE (`phase.scheduler: systemd`): the daemon never
starts PHASE itself; at a cycle boundary with nothing running it looks for the newest PHASE run the
timer started (its record, loop/phase/marker.py) that it has not ingested yet, pauses while that
run is alive (honouring stop requests), then ingests its results exactly as it ingests its own
(phase_pause.collapse_phase). A run that died without its signal is logged once as failed."""
from __future__ import annotations

from loop.cycle.cycle import Loop
from loop.cycle.state import LoopState
from loop.daemon.phase_pause import collapse_phase, expire_recommendations

DONE_LIMIT = 50                 # state.phase_done keeps this many keys, as the daemon's own PHASE does


def run_key(run_id: str) -> str:
    """The key a PHASE run is remembered under in state.phase_done once ingested (or failed)."""
    return f"run-{run_id}"


def timer_phase_if_started(loop: Loop, state: LoopState) -> LoopState:
    """Pause for and ingest a PHASE run someone else started; the daemon itself starts none."""
    from loop.phase import marker
    from loop.phase.results import completion_signal
    from loop.phase.window import wait_for_signal

    cfg, ws, events = loop.cfg, loop.ws, loop.events
    expire_recommendations(loop, state)
    record = marker.latest(ws.root)
    if record is None or run_key(record.run_id) in state.phase_done or state.active_runs:
        return state
    signal_path, trace = completion_signal(ws.root, record.run_id), f"phase-{record.run_id}"
    if signal_path.exists():
        outcome = "complete"
    elif not marker.is_alive(record):
        outcome = "phase_failed"
    else:
        events.append("phase_pause", trace, window="systemd timer", run_id=record.run_id, cycle=state.cycle,
                      pid=record.pid, scheduler="systemd")
        loop.say(f"PHASE {record.run_id} (started by the systemd timer, pid {record.pid}) is running: pausing "
                 f"after cycle {state.cycle} until it signals completion")
        outcome = wait_for_signal(signal_path, marker.Liveness(record), loop.should_stop,
                                  cfg.phase.sleep_chunk_seconds)
    if outcome == "stopped":        # the timer's run goes on; the next start ingests it
        events.append("phase_interrupted", trace, run_id=record.run_id,
                      reason="stop requested during the PHASE pause; PHASE (the timer's) goes on and the next "
                             "start ingests it")
        return state
    state.phase_done = (state.phase_done + [run_key(record.run_id)])[-DONE_LIMIT:]
    if outcome == "phase_failed":
        events.append("phase_failed", trace, run_id=record.run_id, exit_code=None, scheduler="systemd",
                      log=str(ws.phase / record.run_id / "phase.log"),
                      reason="the timer's PHASE process ended without its completion signal (its output is in "
                             "the journal: journalctl --user -u <name>-phase.service)")
        loop.say(f"PHASE {record.run_id} (systemd timer) ended without its completion signal; resuming")
    else:
        collapse_phase(loop, state, signal_path, trace)
    state.save(ws.state)
    return state
