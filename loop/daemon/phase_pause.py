"""The PHASE pause at a cycle boundary: with nothing running and a PHASE window due, the daemon
pauses, runs PHASE on a device slot as its own sandboxed process, waits for its completion signal
(honouring stop requests), then folds its results (baselines, flags, search-space hints) into the
loop's state. A search-space hint (values to drop, with evidence) lasts until the next PHASE ingest
or `phase.recommendation_cycles` cycles, whichever comes first."""
from __future__ import annotations

import json
import time
from pathlib import Path

import psutil

from loop.cycle.cycle import Loop
from loop.cycle.state import LoopState
from loop.errors import LoopError
from loop.run.kill import kill_tree
from loop.util.fsutil import read_regular_text


def phase_if_due(loop: Loop, state: LoopState) -> LoopState:
    """At a cycle boundary with nothing running: if a PHASE window is open, pause, run PHASE, wait for
    its completion signal (in chunks, honouring stop requests), then collapse its results."""
    import datetime as dt

    from loop.phase import window as phase_window
    from loop.phase.results import completion_signal
    cfg, ws, events = loop.cfg, loop.ws, loop.events
    expire_recommendations(loop, state)
    key = phase_window.window_due(cfg.phase, state.cycle, dt.datetime.now(), state.phase_done)
    if key is None or state.active_runs:
        return state
    run_id = f"{key}-{time.strftime('%H%M%S')}"
    trace = f"phase-{run_id}"
    run_dir = ws.phase / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    config_copy = run_dir / "daemon_config.json"        # PHASE reads exactly the config the daemon runs
    config_copy.write_text(cfg.model_dump_json(indent=2))
    events.append("phase_pause", trace, window=key, run_id=run_id, cycle=state.cycle)
    loop.say(f"PHASE window {key}: pausing after cycle {state.cycle}, deep evaluation {run_id} running")
    pool, holder = getattr(loop.runner(), "pool", None), f"phase:{run_id}"
    slot = pool.acquire(holder, loop.should_stop) if pool is not None else None
    if pool is not None and slot is None:
        events.append("phase_interrupted", trace, run_id=run_id, reason="stop requested while waiting for a slot")
        return state
    try:
        warm_archive_sizes(loop)
        proc = phase_window.start_phase(str(config_copy), ws.root, run_id, cfg.root, sandbox=loop.sandbox,
                                        extra_env=slot.env() if slot else None)
        if slot is not None:
            pool.bind(slot, holder, proc.pid, psutil.Process(proc.pid).create_time())
        signal_path = completion_signal(ws.root, run_id)
        outcome = phase_window.wait_for_signal(signal_path, proc, loop.should_stop, cfg.phase.sleep_chunk_seconds)
    finally:
        if pool is not None:
            pool.release(holder)
    # the run's own key too: a daemon later switched to `phase.scheduler: systemd` must not ingest it again
    state.phase_done = (state.phase_done + [key, f"run-{run_id}"])[-50:]
    if outcome == "stopped":
        kill_tree(proc.pid, popen=proc, tag=f"phase:{run_id}")
        events.append("phase_interrupted", trace, run_id=run_id, reason="stop requested during the PHASE pause")
    elif outcome == "phase_failed":
        events.append("phase_failed", trace, run_id=run_id, exit_code=proc.returncode,
                      log=str(run_dir / "stdout.log"))
    else:
        collapse_phase(loop, state, signal_path, trace)
    state.save(ws.state)
    return state


def collapse_phase(loop: Loop, state: LoopState, signal_path: Path, trace: str) -> None:
    """Ingest PHASE results: baselines, flags, search-space recommendations; one integration event.
    The recommendations replace the last PHASE's, stamped with this cycle and their expiry."""
    from loop.phase.results import read_results

    results = read_results(Path(json.loads(signal_path.read_text())["results"]))
    baselines = {domain: m.fitness for domain, m in results.metrics.items()}
    state.fitness_baselines.update(baselines)
    state.flagged_variants = list(results.flagged_variants)
    until = state.cycle + loop.cfg.phase.recommendation_cycles
    stamp = {"ingested_cycle": state.cycle, "expires_after_cycle": until}
    state.phase_recommendations = {
        param: [e.model_copy(update=stamp).model_dump(mode="json") for e in entries]
        for param, entries in results.search_space_recommendations.items()}
    loop.phase_hint = dict(state.phase_recommendations)
    loop.events.append("phase_integration", trace, run_id=results.run_id, domains=results.domains_tested,
                       fitness_baselines=baselines, flagged_variants=state.flagged_variants,
                       promoted_variants=list(results.promoted_variants),
                       search_space_recommendations=state.phase_recommendations,
                       recommendations_expire_after_cycle=until if state.phase_recommendations else None)
    drops = "; ".join(f"{param} drops {', '.join(str(e['value']) for e in entries)}"
                      for param, entries in state.phase_recommendations.items())
    loop.say(f"PHASE complete: baselines {baselines}; flagged {state.flagged_variants}; search space: "
             + (f"{drops} (until cycle {until})" if drops else "unchanged (no value measured below another)")
             + "; resuming")


def in_force(hint: dict, cycle: int) -> dict[str, list[dict]]:
    """The recommendations of `hint` that still narrow the cycle after `cycle`: evidence records whose
    expiry has not passed. Anything else (an older state's lists of values to keep) narrows nothing."""
    from loop.phase.results import DroppedValue

    live: dict[str, list[dict]] = {}
    for param, entries in hint.items():
        for entry in entries if isinstance(entries, list) else []:
            try:
                e = DroppedValue.model_validate(entry)
            except ValueError:
                continue
            if e.expires_after_cycle is not None and cycle < e.expires_after_cycle:
                live.setdefault(param, []).append(entry)
    return live


def expire_recommendations(loop: Loop, state: LoopState) -> None:
    """Keep only the recommendations still in force, in the state and in the Builder's hint; log what lapsed."""
    live = in_force(state.phase_recommendations, state.cycle)
    if live != state.phase_recommendations:
        loop.events.append("phase_recommendations_expired", f"phase-expiry-{state.cycle:05d}", cycle=state.cycle,
                           lapsed=state.phase_recommendations, still_in_force=live)
        loop.say(f"PHASE search-space recommendations lapsed after cycle {state.cycle}: the full space is back"
                 if not live else f"some PHASE recommendations lapsed after cycle {state.cycle}")
    state.phase_recommendations = live
    loop.phase_hint = dict(live)


def warm_archive_sizes(loop: Loop) -> None:
    """PHASE reads the pixel cache read-only: decode the task at every image size an archived model
    takes (their config.json), now, in the daemon."""
    from loop.domains import task_domain

    sizes = set()
    for config in loop.ws.models.archive.glob("*/config.json"):
        try:
            size = json.loads(read_regular_text(config)).get("image_size")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(size, int) and 8 <= size <= 1024:
            sizes.add(size)
    try:
        task_domain(loop.cfg).warm_cache(sorted(sizes))
    except (LoopError, OSError) as exc:            # PHASE names the failure itself when it reads them
        loop.say(f"PHASE: the task's images could not be decoded ahead: {exc}")
