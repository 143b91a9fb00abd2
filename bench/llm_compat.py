"""llm_compat: the real loop against a real OpenAI-compatible server (llama-cpp-python + Gemma 3 270M).

    .venv/bin/python bench/llm_compat.py [--cycles 10] [--out bench/_work/llm_compat.json]
    .venv/bin/python bench/llm_compat.py --smoke   # 1 cycle, 1 outage cycle, 64 tokens; writes nothing kept

What it does, in one process (the daemon's cycles run in-process, one `Loop` kept for all of them,
as a daemon that stays up while its endpoint goes away and comes back):

1. starts llama-cpp-python's server (bench/llama_server.py; the venv in ~/.cache/llmloop-bench must
   already be built: `python bench/llama_server.py --build`), runs `llmloop llm probe` once against
   it (on a workspace of its own, so the daemon negotiates the mode itself), then `--cycles` daemon
   cycles with `structured_output: auto` for the Builder and the Mentor (mentor every 4 cycles);
2. the outage check: stops the server and runs cycles until `--outage-cycles` of them reached the
   Builder's decision (the Builder, `when_unavailable: offline`, must be decided by the offline
   policy, source `offline-fallback`, and training must go on), starts the server again on the same
   port and runs cycles until `--outage-cycles` more decided (source must be `llm` again). A cycle
   that only follows a run an earlier cycle started asks no one; it is counted, not decided;
3. reports, per negotiated mode and in total: Builder calls, schema-valid replies (the call returned
   a Decision, so the cycle did not fall back), repaired replies, decisions the quality gate passed,
   runs launched, tokens counted (and how many requests were estimated), seconds per call, and the
   outage phases' sources; prints a markdown table, writes the JSON (every HTTP request's mode,
   status, finish_reason, usage and raw reply included) and the `## llm_compat` section of
   bench/RESULTS.md.

Training runs use tests/conftest.py's tiny trainer config (resnet10t, 16 px, a slice of digits,
1 epoch), so a run takes seconds; the server gets 1 thread (see llama_server.serve). Two guards
that exist to stop asking a failing LLM are raised to 1000 so that every cycle asks the endpoint:
the gate-refusal hand-over (`llm_gate_refusal_limit`, default 3: three weak rationales in a row hand
the next 5 cycles to the offline policy) and the circuit breaker (`circuit_breaker_failures`,
default 5: an invalid reply counts as a failed call, and an open circuit sends no request, so the
outage phase would never reach the stopped server). With the defaults the bench would measure those
guards instead of the endpoint; a Builder call the circuit refused is still reported in its own row.
Stdlib and the project only; the llama venv is a separate interpreter, reached by subprocess/HTTP.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _results import machine_facts, write_section  # noqa: E402
from llama_server import GGUF_PACKAGE, _models_answer, env_ready, free_port, gguf_path, serve, venv_python  # noqa: E402

from loop.config import DaemonConfig, validate  # noqa: E402
from loop.cycle.cycle import run_cycle  # noqa: E402
from loop.cycle.state import LoopState  # noqa: E402
from loop.daemon.process import build_loop, workspace_of  # noqa: E402
from loop.journal.events import EventLog  # noqa: E402
from tests.conftest import tiny_config_dict  # noqa: E402

MODEL_ALIAS = "gemma-3-270m"
RAW_CHARS = 4000            # of each raw reply kept in the JSON
SERVER_DOWN = "(server down)"
NO_REQUEST = "(circuit open, no request)"


# ------------------------------------------------------------------ setup ----

def daemon_config(tmp: Path, base_url: str, args) -> dict:
    trainer = tmp / "tiny.yaml"
    trainer.write_text(json.dumps(tiny_config_dict(), indent=2) + "\n")    # JSON is YAML
    role = {"base_url": base_url, "model": MODEL_ALIAS, "structured_output": "auto",
            "max_attempts": args.max_attempts, "timeout_seconds": args.timeout,
            "temperature": args.temperature, "max_output_tokens": args.max_tokens,
            "circuit_breaker_failures": 1000, "circuit_breaker_cooldown_seconds": 300}
    return {
        "workspace": str(tmp / "ws"), "default_trainer_config": str(trainer),
        "credentials_file": str(tmp / "no-credentials.json"),
        "daemon_poll_seconds": 0, "evo_period_cycles": 1000, "phase": {"schedule": "off"},
        "adaptive_timer": {"min_seconds": 0},
        "evolution": {"rules": {"per_class_accuracy_floor": None}},
        "budget": {"max_walltime_minutes": 3},
        "llm_gate_refusal_limit": 1000,
        "builder": {**role, "when_unavailable": "offline"},
        "mentor_enabled": True, "mentor_every_n_cycles": 4,
        "mentor": {**role, "when_unavailable": "wait"},
    }


def llama_version(python: Path) -> str:
    done = subprocess.run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip() or "?"


def run_probe(cfg_path: Path, probe_ws: Path) -> dict:
    """`llmloop llm probe` as a subprocess; its own workspace, so the daemon negotiates for itself."""
    exe = Path(sys.executable).parent / "llmloop"
    cmd = ([str(exe)] if exe.exists() else [sys.executable, "-m", "loop.cli.main"]) + [
        "llm", "probe", "--daemon-config", str(cfg_path), "--root", str(REPO), "--workspace", str(probe_ws)]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    out = {"command": " ".join(cmd), "returncode": done.returncode, "seconds": round(time.monotonic() - t0, 1),
           "stdout": done.stdout, "stderr": done.stderr[-3000:]}
    print(f"$ {out['command']}\n{done.stdout}{done.stderr[-3000:]}(rc {done.returncode}, {out['seconds']} s)",
          flush=True)
    return out


# ----------------------------------------------------------- instruments ----

def _mode_of(kwargs: dict) -> str:
    fmt = kwargs.get("response_format")
    if fmt is None:
        return "off"
    if fmt.get("type") == "json_object":
        return "json_object_schema" if "schema" in fmt else "json_object"
    return str(fmt.get("type"))


def spy(loop, role: str, phase: dict, requests: list, calls: list) -> None:
    """Record every HTTP request (mode, status, finish_reason, usage, raw text) and every
    `complete_json` call (wall time, outcome) of `role`'s client, without changing what they do."""
    client = getattr(loop, role)
    if client is None:
        return
    completions = client._client.chat.completions
    real_create = completions.create

    @functools.wraps(real_create)
    def create(*a, **kw):
        rec = {"role": role, "phase": phase["name"], "trace": loop.current["trace"], "mode": _mode_of(kw),
               "max_tokens": kw.get("max_tokens")}
        t0 = time.monotonic()
        try:
            response = real_create(*a, **kw)
        except Exception as exc:
            rec.update(seconds=round(time.monotonic() - t0, 3), status=getattr(exc, "status_code", None),
                       error=f"{type(exc).__name__}: {str(exc)[:300]}")
            requests.append(rec)
            raise
        rec["seconds"] = round(time.monotonic() - t0, 3)
        rec["status"] = 200
        try:
            choice = response.choices[0]
            rec["finish_reason"] = choice.finish_reason
            rec["content"] = (choice.message.content or "")[:RAW_CHARS]
            rec["content_chars"] = len(choice.message.content or "")
        except (AttributeError, IndexError, TypeError):
            rec["content"] = repr(response)[:RAW_CHARS]
        usage = getattr(response, "usage", None)
        rec["usage"] = ({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                         "total_tokens": usage.total_tokens} if usage is not None else None)
        requests.append(rec)
        return response

    completions.create = create
    real_complete = client.complete_json

    @functools.wraps(real_complete)
    def complete_json(system, user, model_cls):
        first = len(requests)
        rec = {"role": role, "phase": phase["name"], "trace": loop.current["trace"]}
        t0 = time.monotonic()
        try:
            result = real_complete(system, user, model_cls)
        except Exception as exc:
            rec.update(ok=False, seconds=round(time.monotonic() - t0, 3), error=str(exc)[:600],
                       requests=list(range(first, len(requests))))
            calls.append(rec)
            raise
        rec.update(ok=True, seconds=round(time.monotonic() - t0, 3), mode=result.mode,
                   repaired=result.repaired, attempts=result.attempts,
                   requests=list(range(first, len(requests))))
        calls.append(rec)
        return result

    client.complete_json = complete_json


# ------------------------------------------------------------------- run ----

def run_phase(loop, state: LoopState, phase: dict, name: str, *, cycles: int | None = None,
              decided: int | None = None, max_extra: int = 3) -> LoopState:
    """`cycles` cycles, or cycles until `decided` of them reached the Builder's decision (at most
    `decided + max_extra` in all: a cycle that follows a run from an earlier cycle decides nothing)."""
    phase["name"] = name
    events = loop.ws.events
    done = got = 0
    limit = cycles if cycles is not None else decided + max_extra
    while done < limit and (decided is None or got < decided):
        state = run_cycle(loop, state)
        done += 1
        phase.setdefault("cycles", {})[state.cycle] = name
        last = EventLog(events).tail(1, "cycle")
        if last and last[-1].get("cycle") == state.cycle and "decision" in last[-1]:
            got += 1
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10, help="daemon cycles with the server up (phase 1)")
    parser.add_argument("--outage-cycles", type=int, default=2,
                        help="deciding cycles with the server down, then as many after it is back")
    parser.add_argument("--out", default=str(REPO / "bench" / "_work" / "llm_compat.json"))
    parser.add_argument("--max-tokens", type=int, default=400, help="max_output_tokens of both roles")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=300.0, help="timeout_seconds of both roles")
    parser.add_argument("--max-attempts", type=int, default=2, help="max_attempts of both roles")
    parser.add_argument("--threads", type=int, default=1, help="the server's threads")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    parser.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    parser.add_argument("--smoke", action="store_true", help="the smallest run (tests/test_bench_smoke.py): "
                        "1 cycle, 1 outage cycle, 64 tokens, the JSON in the temporary folder, no RESULTS.md")
    parser.add_argument("--from-json", metavar="JSON", help="only summarize a JSON this script wrote and print "
                        "the table (nothing is run; RESULTS.md is not touched)")
    args = parser.parse_args(argv)
    if args.from_json:
        raw = json.loads(Path(args.from_json).read_text())
        print(render({**raw, **summarize(raw)}))
        return 0

    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S"), time.monotonic()
    load_at_start = machine_facts()
    python = venv_python()
    if not env_ready(python):
        print(f"{python} cannot import llama_cpp: build it first with `python bench/llama_server.py --build`",
              file=sys.stderr)
        return 2
    gguf = gguf_path(python)
    versions = {"llama_cpp_python": llama_version(python), "gguf_package": GGUF_PACKAGE, "gguf": str(gguf),
                "gguf_bytes": gguf.stat().st_size, "model_alias": MODEL_ALIAS, "chat_format": "gemma3",
                "server_threads": args.threads}
    print(f"llama-cpp-python {versions['llama_cpp_python']}, {GGUF_PACKAGE} ({gguf})", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="llmloop-llm-compat-"))
    if args.smoke:      # the JSON goes with the temporary folder: a smoke run keeps nothing
        args.cycles, args.outage_cycles, args.max_tokens, args.no_results = 1, 1, 64, True
        args.out = str(tmp / "llm_compat.json")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    data = daemon_config(tmp, base_url, args)
    cfg_path = tmp / "daemon.yaml"
    cfg_path.write_text(json.dumps(data, indent=2) + "\n")
    cfg = validate(DaemonConfig, data, str(cfg_path))
    cfg.set_root(REPO)
    ws = workspace_of(cfg).ensure()

    requests: list[dict] = []
    calls: list[dict] = []
    phase: dict = {"name": "setup"}
    lines: list[str] = []

    def say(text: str) -> None:
        lines.append(text)
        print(f"[{phase['name']}] {text}", flush=True)

    loop = build_loop(cfg, ws, lambda: False, say)
    for role in ("builder", "mentor"):
        spy(loop, role, phase, requests, calls)
    state = LoopState()
    timings: dict[str, float] = {}
    server_logs = [tmp / "server-1.log", tmp / "server-2.log"]
    down_check: dict = {}
    try:
        t0 = time.monotonic()
        with serve(python, gguf, port, n_threads=args.threads, log_path=server_logs[0]):
            timings["server_start_s"] = round(time.monotonic() - t0, 1)
            print(f"server {base_url} up in {timings['server_start_s']} s", flush=True)
            probe = run_probe(cfg_path, tmp / "probe-ws")
            t0 = time.monotonic()
            state = run_phase(loop, state, phase, "llm", cycles=args.cycles)
            timings["phase_llm_s"] = round(time.monotonic() - t0, 1)
        down_check["answers_while_down"] = _models_answer(base_url)
        print(f"server stopped; /v1/models answers: {down_check['answers_while_down']}", flush=True)
        t0 = time.monotonic()
        state = run_phase(loop, state, phase, "outage", decided=args.outage_cycles)
        timings["phase_outage_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        with serve(python, gguf, port, n_threads=args.threads, log_path=server_logs[1]):
            timings["server_restart_s"] = round(time.monotonic() - t0, 1)
            t0 = time.monotonic()
            state = run_phase(loop, state, phase, "back", decided=args.outage_cycles)
            timings["phase_back_s"] = round(time.monotonic() - t0, 1)
    finally:
        down_check["answers_after_stop"] = _models_answer(base_url)
    timings["total_s"] = round(time.monotonic() - t_start, 1)

    try:
        modes_file = json.loads(ws.llm_modes.read_text())
    except (OSError, ValueError):
        modes_file = None
    raw = {"started": started, "versions": versions, "timings": timings, "probe": probe,
           "server_checks": down_check, "settings": dict(vars(args)), "daemon_config": data,
           "workspace": str(ws.root), "phase_of": phase["cycles"], "llm_modes_json": modes_file,
           "events": [e for e in EventLog(ws.events) if e.get("kind", "").startswith(("cycle", "llm"))],
           "requests": requests, "calls": calls, "cycle_lines": lines,
           "server_log_tails": {p.name: p.read_text(errors="replace")[-3000:] for p in server_logs if p.exists()}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(raw, indent=2, default=str) + "\n")     # the measurements first, whatever follows
    report = {**raw, **summarize(raw)}
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    table = render(report)
    print("\n" + table, flush=True)
    print(f"wrote {out}")
    if not args.no_results:
        write_section("llm_compat", table, load_at_start)
    if args.keep:
        print(f"workspace kept: {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


# --------------------------------------------------------------- summary ----

def _stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": round(statistics.mean(values), 2),
            "median": round(statistics.median(values), 2),
            "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0,
            "min": round(min(values), 2), "max": round(max(values), 2)}


def _row(calls: list[dict]) -> dict:
    valid = [c for c in calls if c["ok"]]
    tokens = {"total_tokens": 0, "prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "failed_calls": 0,
              "estimated_calls": 0}
    for c in calls:
        for k in tokens:
            tokens[k] += (c.get("tokens") or {}).get(k, 0)
    return {"builder_calls": len(calls), "schema_valid": len(valid),
            "repaired": sum(1 for c in valid if c.get("repaired")),
            "gate_passed": sum(1 for c in valid if c.get("gate_ok")),
            "runs_launched": sum(1 for c in valid if c.get("run_launched")),   # by the LLM's decision
            "tokens": tokens, "seconds": _stats([c["seconds"] for c in calls])}


def summarize(raw: dict) -> dict:
    """The figures, from what main() measured (also from a JSON it wrote: see --from-json)."""
    events, requests, calls = raw["events"], raw["requests"], raw["calls"]
    phase_of = {int(k): v for k, v in raw["phase_of"].items()}
    cycles = [e for e in events if e.get("kind") == "cycle"]
    by_trace = {e["cycle_trace_id"]: e for e in cycles}
    per_cycle = []
    for e in cycles:
        d = e.get("decision") or {}
        per_cycle.append({
            "cycle": e["cycle"], "phase": phase_of.get(e["cycle"], "?"), "trace": e["cycle_trace_id"],
            "seconds": e.get("seconds"), "followed_run": (e.get("followed_run") or {}).get("status"),
            "source": d.get("source"), "action": d.get("action"), "run_label": d.get("run_label"),
            "strategy_dimension": d.get("strategy_dimension"), "rationale": (d.get("rationale") or "")[:300],
            "train_overlay": d.get("train_overlay"), "monitor_seconds": d.get("monitor_seconds"),
            "llm": e.get("llm"), "llm_error": e.get("llm_error"), "llm_fallback": e.get("llm_fallback"),
            "gate_ok": (e.get("quality_gate") or {}).get("ok"),
            "gate_reasons": (e.get("quality_gate") or {}).get("reasons"),
            "run": (e.get("run") or {}).get("label"), "run_monitor": (e.get("run") or {}).get("monitor"),
            "run_outcome": (e.get("run_outcome") or {}).get("status"),
            "mentor": {k: (e.get("mentor") or {}).get(k) for k in ("source", "verdict", "error", "challenge_applied")}
            if e.get("mentor") else None,
            "tokens_builder": e.get("tokens_builder"), "tokens_mentor": e.get("tokens_mentor")})

    builder = []
    for c in (c for c in calls if c["role"] == "builder"):
        e = by_trace.get(c["trace"], {})
        reqs = [requests[i] for i in c["requests"]]
        if not reqs:
            mode = NO_REQUEST
        elif c["phase"] == "outage" and not c["ok"] and all(r.get("status") is None for r in reqs):
            mode = SERVER_DOWN
        else:
            mode = c.get("mode") or (reqs[-1]["mode"] if reqs else "?")
        builder.append({**c, "mode": mode, "cycle": e.get("cycle"), "source": (e.get("decision") or {}).get("source"),
                        "gate_ok": (e.get("quality_gate") or {}).get("ok"), "run_launched": "run" in e,
                        "mentor_applied": bool((e.get("mentor") or {}).get("challenge_applied")),
                        "tokens": e.get("tokens_builder"), "llm_error": e.get("llm_error")})
    modes = sorted({c["mode"] for c in builder}, key=lambda m: (m in (SERVER_DOWN, NO_REQUEST), m))
    rows = {m: _row([c for c in builder if c["mode"] == m]) for m in modes}
    up = [c for c in builder if c["mode"] not in (SERVER_DOWN, NO_REQUEST)]   # calls that reached the server
    rows["total, server up"] = _row(up)
    rows["total"] = _row(builder)

    mentor = [c for c in calls if c["role"] == "mentor"]
    mentor_row = {"calls": len(mentor), "valid": sum(1 for c in mentor if c["ok"]),
                  "repaired": sum(1 for c in mentor if c.get("repaired")),
                  "modes": sorted({c.get("mode") for c in mentor if c.get("mode")}),
                  "seconds": _stats([c["seconds"] for c in mentor]),
                  "errors": [c["error"] for c in mentor if not c["ok"]]}

    req_table: dict[str, dict] = {}
    for r in requests:
        outcome = r["status"] if r["status"] is not None else r.get("error", "?").split(":")[0]
        key = f"{r['role']} {r['mode']} -> {outcome}"
        slot = req_table.setdefault(key, {"n": 0, "finish_reason": {}})
        slot["n"] += 1
        if r.get("finish_reason"):
            slot["finish_reason"][r["finish_reason"]] = slot["finish_reason"].get(r["finish_reason"], 0) + 1

    def phase_rows(name: str) -> list[dict]:
        return [{k: p[k] for k in ("cycle", "source", "action", "run", "run_outcome", "followed_run", "llm_error",
                                   "gate_ok")}
                for p in per_cycle if p["phase"] == name]

    outage, back = phase_rows("outage"), phase_rows("back")
    outage_decided = [p for p in outage if p["source"]]
    back_decided = [p for p in back if p["source"]]
    outage_ok = (bool(outage_decided) and all(p["source"] == "offline-fallback" for p in outage_decided)
                 and any(p["run"] for p in outage_decided))
    back_ok = bool(back_decided) and all(p["source"] == "llm" for p in back_decided)
    back_answered = sum(1 for q in requests if q["phase"] == "back" and q["role"] == "builder" and q["status"] == 200)
    down_refused = sum(1 for q in requests if q["phase"] == "outage" and q["role"] == "builder" and q["status"] is None)
    invalid_raw = [requests[c["requests"][-1]].get("content", "") for c in builder
                   if not c["ok"] and c["mode"] not in (SERVER_DOWN, NO_REQUEST)]

    last_totals = cycles[-1].get("tokens_total", {}) if cycles else {}
    summed = {role: sum((e.get(f"tokens_{role}") or {}).get("total_tokens", 0) for e in cycles)
              for role in ("builder", "mentor")}
    kinds = {}
    for e in events:
        if e.get("kind", "").startswith("llm_"):
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    valid_up = rows["total, server up"]["schema_valid"]
    return {"rows": rows, "mentor": mentor_row, "request_table": req_table, "per_cycle": per_cycle,
            "builder_calls": builder,
            "schema_valid_share_server_up": round(valid_up / len(up), 3) if up else None,
            "meets_90_percent": bool(up) and valid_up / len(up) >= 0.9,
            "outage": {"down": outage, "back": back, "down_ok": outage_ok, "back_ok": back_ok,
                       "ok": outage_ok and back_ok, "back_builder_http_200": back_answered,
                       "down_requests_refused": down_refused},
            "invalid_raw_replies": invalid_raw,
            "tokens_check": {"tokens_total_last_cycle": {k: v.get("total_tokens") for k, v in last_totals.items()},
                             "sum_of_cycles": summed,
                             "consistent": all(last_totals.get(r, {}).get("total_tokens", 0) == summed[r]
                                               for r in summed)},
            "llm_event_kinds": kinds,
            "gate_reasons": [p["gate_reasons"] for p in per_cycle if p["source"] == "llm" and not p["gate_ok"]],
            "invalid_errors": [c["llm_error"] for c in builder
                               if not c["ok"] and c["mode"] not in (SERVER_DOWN, NO_REQUEST)],
            "circuit_refusals": sum(1 for c in builder if c["mode"] == NO_REQUEST)}


def render(r: dict) -> str:
    v, t = r["versions"], r["timings"]
    s = r["settings"]
    out = [f"Server: llama-cpp-python {v['llama_cpp_python']} (`python -m llama_cpp.server`, chat format "
           f"{v['chat_format']}, {v['server_threads']} thread), model `{v['gguf_package']}` "
           f"(Gemma 3 270M base, Q4_K_M, {v['gguf_bytes'] / 1e6:.0f} MB), via bench/llama_server.py. "
           f"Both roles: `structured_output: auto`, max_output_tokens {s['max_tokens']}, temperature "
           f"{s['temperature']}, max_attempts {s['max_attempts']}, timeout {s['timeout']:.0f} s; Mentor every 4 "
           f"cycles; trainer: tests/conftest.py tiny config (resnet10t, 16 px, digits, 1 epoch); "
           f"llm_gate_refusal_limit {r['daemon_config']['llm_gate_refusal_limit']} and circuit_breaker_failures "
           f"{r['daemon_config']['builder']['circuit_breaker_failures']} (so every cycle asks the endpoint; see "
           f"the script's docstring).",
           "",
           f"Phases: {s['cycles']} cycles with the server up, then the server stopped for "
           f"{s['outage_cycles']} deciding cycles, then restarted on the same port for {s['outage_cycles']} more. "
           f"Wall time {t['total_s']:.0f} s (server start {t.get('server_start_s', 0):.0f} s, probe "
           f"{r['probe']['seconds']:.0f} s, server-up cycles {t.get('phase_llm_s', 0):.0f} s, outage "
           f"{t.get('phase_outage_s', 0):.0f} s, restart {t.get('server_restart_s', 0):.0f} s, back "
           f"{t.get('phase_back_s', 0):.0f} s).",
           "",
           "`llmloop llm probe` (rc {}):".format(r["probe"]["returncode"]), "", "```",
           r["probe"]["stdout"].strip() or r["probe"]["stderr"].strip()[-800:], "```", "",
           "Builder calls per structured-output mode (the mode of the request that answered; a call that "
           "failed is counted under the mode it last tried):", "",
           "| mode | Builder calls | schema-valid | repaired | gate passed | runs launched | tokens (requests, "
           "estimated) | s/call mean | s/call max |",
           "|---|---|---|---|---|---|---|---|---|"]
    for mode, row in r["rows"].items():
        tok, sec = row["tokens"], row["seconds"]
        name = f"**{mode}**" if mode.startswith("total") else mode if mode.startswith("(") else f"`{mode}`"
        out.append(f"| {name} | {row['builder_calls']} | {row['schema_valid']} | {row['repaired']} | "
                   f"{row['gate_passed']} | {row['runs_launched']} | {tok['total_tokens']} ({tok['calls']}, "
                   f"{tok['estimated_calls']} est.) | {sec.get('mean', '-')} | {sec.get('max', '-')} |")
    up = r["rows"]["total, server up"]["seconds"]
    share = r["schema_valid_share_server_up"]
    m = r["mentor"]
    out += ["",
            "- seconds per Builder call, server up: " + (
                f"mean {up['mean']}, median {up['median']}, std {up['std']}, min {up['min']}, max {up['max']} "
                f"(n {up['n']})" if up.get("n") else "none"),
            f"- schema-valid Builder decisions with the server up: {r['rows']['total, server up']['schema_valid']}"
            f"/{r['rows']['total, server up']['builder_calls']} = "
            f"{'-' if share is None else f'{share:.0%}'}: "
            f"**{'meets' if r['meets_90_percent'] else 'does NOT meet'}** the >= 90% target",
            f"- Mentor: {m['calls']} calls, {m['valid']} valid, {m['repaired']} repaired, modes {m['modes']}, "
            f"s/call mean {m['seconds'].get('mean', '-')} max {m['seconds'].get('max', '-')}",
            "- HTTP requests: " + "; ".join(
                f"{k}: {v['n']}" + (f" (finish {v['finish_reason']})" if v["finish_reason"] else "")
                for k, v in r["request_table"].items()),
            f"- LLM events: {r['llm_event_kinds']}; negotiated mode stored: "
            + ("; ".join(f"{k.split('|')[1]} -> {e.get('mode')}" for k, e in (r['llm_modes_json'] or {}).items())
               or "none"),
            f"- tokens: the last cycle's tokens_total {r['tokens_check']['tokens_total_last_cycle']} vs the sum of "
            f"the cycles' tokens_* {r['tokens_check']['sum_of_cycles']}: "
            f"{'consistent' if r['tokens_check']['consistent'] else 'INCONSISTENT'}",
            f"- Builder calls the open circuit refused without a request: {r['circuit_refusals']}"]
    o = r["outage"]

    def one(p: dict) -> str:
        if not p["source"]:
            return f"c{p['cycle']} followed a run ({p['followed_run']})"
        run = (f" -> run {p['run_outcome'] or p['run']}" if p["run"]
               else " (quality gate refused: no run)" if p.get("gate_ok") is False else " (no run)")
        return f"c{p['cycle']} {p['source']} {p['action']}{run}"

    def phase_line(rows: list[dict]) -> str:
        return ", ".join(one(p) for p in rows)

    out += ["",
            f"Outage check: server down: {phase_line(o['down'])} -> "
            f"**{'ok' if o['down_ok'] else 'FAILED'}** (offline-fallback, training goes on); "
            f"server back on the same port: {phase_line(o['back'])} -> **{'ok' if o['back_ok'] else 'FAILED'}** "
            f"(source llm). /v1/models answered while down: {r['server_checks'].get('answers_while_down')}; "
            f"after the end: {r['server_checks'].get('answers_after_stop')}. Builder requests refused while "
            f"down: {o['down_requests_refused']}; Builder requests answered HTTP 200 after the restart: "
            f"{o['back_builder_http_200']} (the endpoint was reached again; a source other than llm there "
            "means the replies did not validate)."]
    if o["down"]:
        errs = [p["llm_error"] for p in o["down"] if p.get("llm_error")]
        if errs:
            out.append(f"  The outage's llm_error: `{errs[0][:200]}`")
    problems = r["invalid_errors"]
    if problems:
        out += ["", "Builder calls that did not validate (llm_error):"]
        out += [f"- {n} x `{e[:300]}`" for e, n in Counter(problems).most_common()]
        if r["invalid_raw_replies"]:
            out += ["", "The last raw reply of the first such call:", "", "```json",
                    r["invalid_raw_replies"][0][:1500].strip(), "```"]
    if r["gate_reasons"]:
        out += ["", "Quality-gate refusals of LLM decisions:"]
        out += [f"- {n} x {g[:300]}" for g, n in Counter("; ".join(g) for g in r["gate_reasons"]).most_common()]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
