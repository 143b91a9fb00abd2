"""How a daemon config and this machine become a Sandbox (loop/run/sandbox.py): which bubblewrap,
which user runs do run as, what they read (interpreter, repo, the task's data) and may write, what is
hidden from them, and the checks that refuse to start when the boundary cannot hold (the sandbox
user cannot read the data, a writable path would expose the daemon's files). `run_by_hand` is
`llmloop sandbox run`.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pwd
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

from loop.config import DaemonConfig
from loop.domains.pixels import CACHE_ENV, workspace_cache
from loop.errors import ConfigError, ExitCode, SandboxUnavailable
from loop.run.sandbox import (
    HOME_CREDENTIALS,
    INSTALL_HINT,
    OFFLINE_ENV,
    Sandbox,
)
from loop.util.secrets import looks_secret
from loop.util.workspace import Workspace


def uid_mapped(uid: int) -> bool:
    """Whether `uid` exists in this process's user namespace (not so under `unshare --map-root-user`)."""
    try:
        rows = [line.split() for line in Path("/proc/self/uid_map").read_text().splitlines()]
    except OSError:
        return True
    return any(int(inside) <= uid < int(inside) + int(count) for inside, _outside, count in rows)


def owner_tag(workspace_root: Path) -> str:
    """A stable tag for one workspace, carried in every run's environment (LLMLOOP_OWNER)."""
    return hashlib.sha256(str(Path(workspace_root).resolve()).encode()).hexdigest()[:16]


def allowed_env(allowlist: list[str], repo_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in allowlist and not looks_secret(k)}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(PYTHONPATH=str(repo_root), PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    return env


def resolve_user(name: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SandboxUnavailable(f"sandbox_user {name!r} does not exist on this machine") from None
    if entry.pw_uid == 0:
        raise SandboxUnavailable(f"sandbox_user {name!r} is root; pick an unprivileged user")
    return entry.pw_uid, entry.pw_gid


def interpreter_paths() -> set[Path]:
    """Where the running Python lives: the venv, its base install, the real binary's folder, and
    where a symlinked venv (a project's `.venv -> /elsewhere/venv`) really is: the link alone shows
    a dangling name inside the sandbox."""
    prefixes = {Path(sys.prefix), Path(sys.base_prefix)}
    return {*prefixes, *(Path(os.path.realpath(p)) for p in prefixes), Path(os.path.realpath(sys.executable)).parent}


def credential_paths(cfg: DaemonConfig) -> set[Path]:
    home = Path.home()
    found = {home / rel for rel in HOME_CREDENTIALS}
    found.add(Path(cfg.credentials_file).expanduser())
    found.update(Path(p).expanduser() for p in cfg.sandbox_hide_paths)
    # A dotfile manager's symlink: hide what it points at (bwrap cannot mount onto the link itself).
    return {Path(os.path.realpath(p)) for p in found if p.exists()}


def workspace_path(ws_root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else ws_root / path).resolve()


def load_sandbox(cfg: DaemonConfig, repo_root: Path, ws_root: Path) -> Sandbox:
    """The sandbox for this config, or SandboxUnavailable (`sandbox: required` and no bwrap here)."""
    repo_root, ws_root = Path(repo_root).resolve(), Path(ws_root).resolve()
    user = resolve_user(cfg.sandbox_user) if os.geteuid() == 0 else None
    if user and not uid_mapped(user[0]):
        user = None     # root only inside a user namespace that has no such uid: run as ourselves
    pixel_cache = workspace_cache(ws_root)     # decoded images, shared by every run of the workspace
    base_env = {**allowed_env(cfg.sandbox_env_allowlist, repo_root), **OFFLINE_ENV,
                "LLMLOOP_OWNER": owner_tag(ws_root), CACHE_ENV: str(pixel_cache)}
    if not cfg.sandbox_network:       # no network: a hub lookup could only fail, so none is tried
        base_env["HF_HUB_OFFLINE"] = "1"
    bwrap, problem = find_bwrap(user is not None)
    if problem and cfg.sandbox == "required":
        raise SandboxUnavailable(f"sandbox: required, but {problem}; {INSTALL_HINT}, or set `sandbox: optional` "
                                 "to run with the command policy alone")
    data = task_data_paths(cfg)
    if user and bwrap and not problem:
        check_readable(data, *user, cfg.sandbox_user)
    # the pixel cache too: the daemon builds what a run reads before it starts (loop/domains/pixels.py),
    # so no run can replace, rewrite or pre-plant what later runs and probes are scored on
    readonly = {repo_root, pixel_cache, *interpreter_paths(), *data,
                *(workspace_path(ws_root, p) for p in cfg.sandbox_readonly_paths)}
    # Never writable: history, notes, the daemon's own state, the models, as the workspace layout
    # names them. (Also bound read-only last, as a second line.)
    ws = Workspace(ws_root)
    protected = {repo_root / ".git", *ws.daemon_records()}
    pixel_cache.mkdir(parents=True, exist_ok=True)
    writable = tuple(sorted({workspace_path(ws_root, p) for p in cfg.sandbox_writable_paths}))
    check_writable(writable, protected | {repo_root, ws_root}, set(ws.pinned_records()))
    hidden = credential_paths(cfg) - readonly
    note = ("sandbox: bubblewrap" + (f", runs as {cfg.sandbox_user}" if user else "")
            + (", network on" if cfg.sandbox_network else ", network off")) if bwrap else \
        f"sandbox: NONE ({problem}); the command policy is the only guard (sandbox: optional)"
    sandbox = Sandbox(bwrap=bwrap if not problem else None, user=user if not problem else None,
                      network=cfg.sandbox_network, readonly=tuple(sorted(readonly)),
                      writable=writable, protected=tuple(sorted(protected)), hidden=tuple(sorted(hidden)),
                      base_env=base_env, owner=base_env["LLMLOOP_OWNER"], note=note,
                      setpriv=shutil.which("setpriv") or "/usr/bin/setpriv",
                      shm_bytes=int(cfg.sandbox_shm_gb * (1 << 30)), tmp_bytes=int(cfg.sandbox_tmp_gb * (1 << 30)),
                      private=(ws_root,),
                      max_file_bytes=int(cfg.budget.max_disk_gb * (1 << 30)) if cfg.budget.max_disk_gb else None,
                      no_nested_userns=bool(bwrap) and not problem and can_disable_userns(bwrap, user),
                      memory_bytes=int(cfg.sandbox_memory_gb * (1 << 30)) if cfg.sandbox_memory_gb else None,
                      cpus=cfg.sandbox_cpus)
    grant_writable(sandbox, ws.pinned_records())
    return sandbox


def task_data_paths(cfg: DaemonConfig) -> set[Path]:
    """The task's own files, read by every run: each `data.domain_args` value of the trainer config
    that names an existing folder (an image root) or file (a CSV: its folder). Bound read-only, and
    reachable by the sandbox user even below a folder it could not traverse."""
    from loop.config import read_yaml

    try:
        args = (read_yaml(cfg.resolve(cfg.default_trainer_config)).get("data") or {}).get("domain_args") or {}
    except (ConfigError, OSError):
        return set()          # the daemon's own start-up check names a broken trainer config
    found = set()
    for value in args.values() if isinstance(args, dict) else ():
        if isinstance(value, str) and value:
            path = cfg.resolve(value)
            if path.is_dir():
                found.add(path.resolve())
            elif path.is_file():
                found.add(path.resolve().parent)
    return found


def check_readable(folders: set[Path], uid: int, gid: int, user: str) -> None:
    """Runs read the task's data as the sandbox user: a data folder that user cannot list would fail
    every run of the night, so the daemon refuses to start instead, naming it."""
    for folder in sorted(folders):
        st = folder.stat()
        bits = (stat.S_IRUSR | stat.S_IXUSR, 6) if st.st_uid == uid else \
            (stat.S_IRGRP | stat.S_IXGRP, 3) if st.st_gid == gid else (stat.S_IROTH | stat.S_IXOTH, 0)
        if st.st_mode & bits[0] != bits[0]:
            raise ConfigError(f"the task's data folder {folder} (mode {stat.S_IMODE(st.st_mode):04o}, owner uid "
                              f"{st.st_uid}) cannot be read by the sandbox user {user}, so every run would fail: "
                              f"make it readable (chmod o+rx {folder}, and its files o+r) or set sandbox_user")


def check_writable(writable: tuple[Path, ...], never: set[Path], pinned: set[Path] = frozenset()) -> None:
    """A writable path may not be, or contain, what runs must never write (a path that does not
    exist yet, like GEN_HEAD before the first promotion, could not be protected inside it). A
    `pinned` record (a file only appended to, never replaced: the runs index) may sit inside one:
    `grant_writable` makes it exist, and its own read-only bind holds."""
    for path in writable:
        clash = sorted(p for p in never if p.is_relative_to(path) and not (p in pinned and p != path))
        if clash:
            raise ConfigError(f"sandbox_writable_paths: {path} contains {clash[0]}, which runs must never "
                              "write; name a folder beside it instead")


def grant_writable(sandbox: Sandbox, pinned: tuple[Path, ...] = ()) -> None:
    """Config-named writable paths exist, and the sandbox user may create files in them (each
    folder itself is handed over, not what it holds: protected files inside stay the daemon's). A
    pinned record inside one is created now, empty and the daemon's, so that a run finds it bound
    read-only instead of a free name it could plant a file under."""
    for path in sandbox.writable:
        path.mkdir(parents=True, exist_ok=True)
        for record in (p for p in pinned if p.is_relative_to(path) and p != path):
            record.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(record, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))   # no write: mtime kept
        if sandbox.user and sandbox.active:
            os.chown(path, *sandbox.user)


@functools.lru_cache(maxsize=4)
def can_disable_userns(bwrap: str, user: tuple[int, int] | None) -> bool:
    """Whether a run here can be kept from making user namespaces (bubblewrap's --disable-userns, in
    a user namespace of the sandbox user's own uid); False where the kernel or bwrap cannot."""
    if "--disable-userns" not in subprocess.run([bwrap, "--help"], capture_output=True, text=True).stdout:
        return False
    drop = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", "--"] if user else []
    inner = [bwrap, "--unshare-user", "--disable-userns", *(["--uid", str(user[0]), "--gid", str(user[1])]
                                                             if user else []), "--dev-bind", "/", "/", "true"]
    probe = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid",
             *([] if user else ["--unshare-user"]), "--", *drop, *inner]
    try:
        return subprocess.run(probe, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@functools.lru_cache(maxsize=4)
def find_bwrap(as_root: bool) -> tuple[str | None, str | None]:
    """(path, None) when bubblewrap can start a sandbox here, else (path or None, the problem)."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bubblewrap (bwrap) is not installed"
    if as_root and shutil.which("setpriv") is None:
        return path, "setpriv (util-linux) is missing, so runs cannot drop root"
    probe = [path, "--die-with-parent", "--unshare-pid", "--unshare-net", "--ro-bind", "/", "/", "--proc", "/proc",
             "--dev", "/dev"] + ([] if as_root else ["--unshare-user"]) + ["true"]
    try:
        result = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return path, f"bubblewrap cannot run: {exc}"
    if result.returncode != 0:
        return path, f"bubblewrap cannot create namespaces here: {result.stderr.strip()[:200]}"
    return path, None


def run_by_hand(cfg: DaemonConfig, repo_root: Path, ws_root: Path, command: str, timeout: float | None = None) -> int:
    """`llmloop sandbox run -- CMD`: CMD exactly as the daemon runs a run_command (`bash -c CMD`
    from the repo root, in a fresh run folder, inside the sandbox), but attached to the terminal."""
    sandbox = load_sandbox(cfg, repo_root, ws_root)
    run_dir = Path(ws_root).resolve() / "runs" / f"sandbox-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    sandbox.prepare(run_dir)
    print(f"[{sandbox.note}; run folder {run_dir}]", file=sys.stderr, flush=True)
    argv = sandbox.command(["bash", "-c", command], run_dir, Path(repo_root).resolve())
    try:
        return subprocess.run(argv, env=sandbox.env(run_dir, f"by-hand:{run_dir.name}"), cwd=repo_root,
                              stdin=subprocess.DEVNULL, timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"timed out after {timeout:g}s", file=sys.stderr)
        return ExitCode.WALLTIME
