"""Auto-repair, package pins and pip installs.

pip installs only the pinned entries of the maps (`name==version`, optionally with a sha256, or a
local path), from exactly one index (`--index-url auto_repair_index_url`, with pip's config files
and PIP_* index variables shut out), wheels only (`--only-binary :all:`) except for a local
directory, which must be built; with a sha256, through a requirements file in `--require-hashes`
mode (so every dependency must then already be installed or be hashed too).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Sequence

from loop.config import check_package_pin
from loop.run.repair.steps import RepairAction, RepairStep, StepContext

PIP_TIMEOUT_S = 1800          # a source build of a model package can be slow, but must not hang a cycle
DETAIL_LINES = 12             # lines of pip/git output kept as evidence

# PIP_* variables that cannot add an index or a package source; every other one is dropped.
_PIP_ENV_KEPT = {"PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_TIMEOUT", "PIP_RETRIES",
                 "PIP_DISABLE_PIP_VERSION_CHECK", "PIP_NO_INPUT", "PIP_CACHE_DIR", "PIP_NO_CACHE_DIR",
                 "PIP_PROGRESS_BAR", "PIP_QUIET", "PIP_VERBOSE"}


def pip_install(python: str, spec: str, extra_args: Sequence[str] = (), editable: bool = False,
                cwd: Path | None = None, *, index_url: str = "https://pypi.org/simple",
                only_binary: bool = True, sha256: str | None = None) -> tuple[bool, str]:
    """`python -m pip install --index-url URL [--only-binary :all:] [extra] [-e] spec`.

    With `sha256`, `spec` (name==version) goes through a temporary requirements file in
    --require-hashes mode instead. Returns (ok, command + exit code + last output lines).
    """
    argv = [python, "-m", "pip", "install", "--index-url", index_url,
            *(["--only-binary", ":all:"] if only_binary else []), *single_index(extra_args)]
    with tempfile.TemporaryDirectory(prefix="llmloop-pin-") as tmp:
        if sha256:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text(f"{spec} --hash=sha256:{sha256}\n", encoding="utf-8")
            argv += ["--require-hashes", "-r", str(requirements)]
        else:
            argv += [*(["-e"] if editable else []), spec]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, cwd=cwd,
                                  env=pip_env())
        except subprocess.TimeoutExpired:
            return False, f"{shlex.join(argv)}: timed out after {PIP_TIMEOUT_S}s"
        except OSError as exc:
            return False, f"{shlex.join(argv)}: cannot run: {exc}"
    output = tail(proc.stdout + proc.stderr)
    return proc.returncode == 0, f"{shlex.join(argv)} -> exit {proc.returncode}\n{output}"


def pip_env() -> dict[str, str]:
    """The environment pip runs in: no config files, no PIP_* variable that could add an index."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in _PIP_ENV_KEPT}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def single_index(args: Sequence[str]) -> tuple[str, ...]:
    """`args` without any extra index or find-links source (one index only, whoever passes them)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--extra-index-url", "-f", "--find-links"):
            skip = True
            continue
        if arg.startswith(("--extra-index-url=", "--find-links=")):
            continue
        out.append(arg)
    return tuple(out)


def pip_step(step: RepairStep, ctx: StepContext) -> RepairAction:
    """A `pip` step: install the pinned requirement (or local path) the plan named."""
    assert step.package is not None
    action = RepairAction(kind="pip", target=step.target, source=step.source, package=step.package,
                          ok=False, detail="")
    try:   # checked at load already; again here, since a config can be built without validation
        pin = check_package_pin(step.package)
    except ValueError as exc:
        return action.model_copy(update={"detail": f"refused: {exc}"})
    local_dir = isinstance(pin, Path) and pin.is_dir()
    ok, detail = pip_install(ctx.python, step.package, ctx.pip_args, cwd=ctx.repo_root, index_url=ctx.index_url,
                             only_binary=not local_dir, sha256=None if isinstance(pin, Path) else step.sha256)
    return action.model_copy(update={"ok": ok, "detail": detail})


def tail(text: str, lines: int = DETAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""
