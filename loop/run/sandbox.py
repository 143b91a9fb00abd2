"""The OS boundary around everything the daemon runs for an LLM: bubblewrap (`bwrap`).

The command policy (loop/gate/policy.py) decides whether a command may run; this module decides what a
running command can touch. Each run_command and each trainer run gets:
- its own PID, IPC, UTS (and cgroup) namespaces: it sees only its own processes, and when the
  sandbox's init dies every process inside dies with it, `setsid` escapees included;
- no network unless `sandbox_network: true` (its own empty network namespace);
- the whole filesystem read-only, except its run folder and `sandbox_writable_paths`;
  `.git`, the notes and the archive stay read-only even inside a writable path;
- credential files hidden (the llmloop credentials file, ~/.ssh, cloud CLI configs, ...);
- an environment cleared down to `sandbox_env_allowlist`;
- where the daemon runs as root: a real unprivileged user (`sandbox_user`, default nobody), with
  no capabilities and no_new_privs. Folders the run needs whose parents that user cannot traverse
  (an interpreter under /root, a 0700 workspace parent) are reached through fresh 0755 tmpfs
  parents that show the needed folder and nothing else.

`sandbox: optional` with bubblewrap missing falls back to the policy filter alone (the daemon says
so at start); the default, `required`, refuses to start instead.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; scripts/install_tools.sh does it)"
# Credential stores of the daemon's user, hidden from every run (besides the llmloop credentials file).
HOME_CREDENTIALS = (".ssh", ".aws", ".azure", ".kube", ".docker", ".gnupg", ".netrc", ".git-credentials",
                    ".pypirc", ".kaggle", ".huggingface", ".cache/huggingface", ".config/gcloud", ".config/gh",
                    ".config/llmloop")
# The host's system folders a run sees (read-only); the rest of the host is not there.
HOST_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys")
# Where host Unix sockets live; each becomes an empty private tmpfs in the sandbox.
SOCKET_FOLDERS = (Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/var/run"))
DROP_PRIVILEGES = ("--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs")
RUN_OPEN_FILES = 16384     # loader workers pass tensors as descriptors: generous, but not unbounded
RUN_PROCESSES = 4096       # per uid: every run shares the sandbox user, so this bounds them all together
RUN_TASKS = 1024           # per run, in its cgroup (loop/run/cgroup.py): loader workers and their threads
# Switches that keep libraries from reaching for the network on their own (an update check at
# import, telemetry): with the network off each would be a failed attempt in every run's log.
OFFLINE_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg"}


@dataclass(frozen=True)
class Sandbox:
    """How runs are confined. `bwrap` None means no OS boundary (the `optional` fallback)."""

    bwrap: str | None
    user: tuple[int, int] | None       # (uid, gid) to run as: set when the daemon is root
    network: bool
    readonly: tuple[Path, ...]         # must be visible (repo, interpreter, workspace, data)
    writable: tuple[Path, ...]         # config-named writable paths (besides each run's folder)
    protected: tuple[Path, ...]        # read-only even inside a writable path
    hidden: tuple[Path, ...]           # not visible at all
    base_env: dict[str, str] = field(default_factory=dict)
    owner: str = ""                    # LLMLOOP_OWNER tag: lets a restart find leftover processes
    note: str = ""                     # what the daemon says about the boundary at start
    setpriv: str = "setpriv"           # absolute path, found while loading (not through the run's PATH)
    shm_bytes: int = 2 << 30           # size of the run's private, writable /dev/shm
    tmp_bytes: int = 4 << 30           # size of its private /tmp (and the other masked socket folders)
    private: tuple[Path, ...] = ()     # shown as an empty folder with only the run's own paths in it (the workspace)
    max_file_bytes: int | None = None  # RLIMIT_FSIZE: no file a run writes grows past it (the disk cap)
    no_nested_userns: bool = False     # the run cannot make user namespaces of its own (an inner bwrap)
    memory_bytes: int | None = None    # the run's cgroup memory cap (its tmpfs pages included)
    cpus: float | None = None          # the run's cgroup CPU cap in cores (None: no cap)

    def limits(self) -> dict[str, int]:
        """The rlimits every run gets (loop/run/runwrap.py sets them): file size, open files,
        processes of the run user, no core dumps. None when there is no OS boundary to keep."""
        if not self.active:
            return {}
        out = {"nofile": RUN_OPEN_FILES, "nproc": RUN_PROCESSES, "core": 0}
        return out | ({"fsize": self.max_file_bytes} if self.max_file_bytes else {})

    def caps(self) -> dict[str, float]:
        """The run's own cgroup caps (runwrap makes the group where the machine allows one)."""
        if not self.active:
            return {}
        out: dict[str, float] = {"tasks": RUN_TASKS}
        return out | ({"memory": self.memory_bytes} if self.memory_bytes else {}) | \
            ({"cpus": self.cpus} if self.cpus else {})

    @property
    def active(self) -> bool:
        return self.bwrap is not None

    def env(self, run_dir: Path, run_tag: str = "") -> dict[str, str]:
        """The run's whole environment: the allowlist, a private HOME in its folder and a private
        TMPDIR: the sandbox's own /tmp (a fresh tmpfs per run), else the run folder's .tmp. Short on
        purpose: multiprocessing puts its AF_UNIX sockets there (loader workers passing tensors), and
        a socket path over 107 bytes fails ("AF_UNIX path too long") in a deep run folder."""
        tmp = "/tmp" if self.active else str(run_dir / ".tmp")
        return {**self.base_env, "HOME": str(run_dir / ".home"), "TMPDIR": tmp, "LLMLOOP_RUN_TAG": run_tag}

    def prepare(self, run_dir: Path, outputs: tuple[Path, ...] = ()) -> None:
        """Make the run folder and, in it, the folders the run may write: its HOME, its TMPDIR when
        unsandboxed, and `outputs` (the trainer's out/). Only those go to the sandbox user: the folder
        itself and what the daemon keeps there (run.log, exit_code, run.yaml, placement.json) stay
        the daemon's, so a run can neither replace nor forge them."""
        run_dir.mkdir(parents=True, exist_ok=True)
        own = [run_dir / ".home", run_dir / ".tmp", *(Path(o) for o in outputs)]
        for folder in own:
            folder.mkdir(parents=True, exist_ok=True)
        if self.user and self.active:
            uid, gid = self.user
            for folder in own:
                for root, _dirs, files in os.walk(folder):
                    os.chown(root, uid, gid)
                    for name in files:
                        os.lchown(os.path.join(root, name), uid, gid)

    def command(self, argv: list[str], run_dir: Path, cwd: Path, die_with_parent: bool = True,
                gpus: list[int] | None = None, reads: tuple[str | Path, ...] = ()) -> list[str]:
        """`argv` as it runs in the sandbox (unchanged when there is no OS boundary). The sandbox
        dies with the process that starts it unless `die_with_parent` is False (PHASE, which must
        outlive a daemon crash, is started directly, not through runwrap). Of the workspace the run
        sees its own folder, the pixel cache and `reads` (read-only: a screen it continues, a
        teacher), nothing else: no history, event log or lock to hold or read."""
        if not self.active:
            return list(argv)
        args = self.bwrap_args(Path(run_dir).resolve(), Path(cwd).resolve(), gpus,
                               tuple(Path(r).resolve() for r in reads))
        return [self.bwrap, *(["--die-with-parent"] if die_with_parent else []), *args, "--",
                *self.privilege_drop(), *argv]

    def privilege_drop(self) -> list[str]:
        """Root drops to the sandbox user; then, where the kernel allows it, an inner bwrap in a user
        namespace of that same uid disables any further one (a run's own user namespace would give it
        a root of its own to reach more of the kernel with)."""
        if not self.user:
            return []
        uid, gid = self.user
        inner = [self.bwrap, "--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(gid),
                 "--dev-bind", "/", "/", "--"] if self.no_nested_userns else []
        return [self.setpriv, f"--reuid={uid}", f"--regid={gid}", *DROP_PRIVILEGES, "--", *inner]

    def bwrap_args(self, run_dir: Path, cwd: Path, gpus: list[int] | None = None,
                   reads: tuple[Path, ...] = ()) -> list[str]:
        args = ["--new-session", "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.network:
            args.append("--unshare-net")
        if self.user:      # bwrap runs as root; setpriv inside needs these two, then drops every capability
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        elif os.geteuid() != 0:
            args += ["--unshare-user", *(["--disable-userns"] if self.no_nested_userns else [])]
        # /dev/shm: private, sized, and writable by the run user (1777): DataLoader workers and
        # torch's multiprocessing make their semaphores and shared tensors there.
        # Of the host only what a run needs: the system (programs, libraries, /etc), read-only; the
        # interpreter, repo, data and its own paths come below (reach_args). Not `/`: no home folder,
        # /var, /srv or /mnt of the host is there to read.
        for system in HOST_SYSTEM:
            args += ["--ro-bind-try", system, system]
        args += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777",
                 *(["--size", str(self.shm_bytes)] if bwrap_sizes_tmpfs(self.bwrap) else []), "--tmpfs", "/dev/shm"]
        for device in gpu_device_nodes(gpus):
            args += ["--dev-bind-try", device, device]
        writable = (run_dir, *self.writable)
        needed = sorted({*self.readonly, Path(cwd), *writable, *reads}, key=lambda p: len(p.parts))
        args += self.reach_args(needed, set(writable))
        # A protected path needs its own read-only bind only inside a writable one (check_writable
        # allows that only for a pinned record, the runs index, which always exists; for the rest this
        # is the second line). Binding it regardless would race with files that come and go
        # (daemon.pid, the proposal): gone between bwrap's check and its mount, the run fails to start.
        for path in self.protected:
            if any(path.is_relative_to(w) for w in writable):
                args += ["--ro-bind-try", str(path), str(path)]
        for path in self.hidden:
            args += hide_args(path)
        return args + ["--chdir", str(cwd)]

    def reach_args(self, needed: list[Path], writable: set[Path]) -> list[str]:
        """Empty private tmpfs over the folders where Unix sockets live (a read-only mount does not
        stop connect(): Docker, the session bus, ssh-agent, X11), then a bind for every needed
        path. A private folder (the workspace), and a parent the sandbox user cannot traverse,
        becomes an empty 0755 tmpfs through which only the needed paths show."""
        args: list[str] = []
        masked: list[Path] = []           # folders replaced by an empty tmpfs
        bound: list[Path] = [Path(s) for s in HOST_SYSTEM if Path(s).is_dir()]   # host permissions below them
        made: set[Path] = set()
        size = ["--size", str(self.tmp_bytes)] if self.bwrap and bwrap_sizes_tmpfs(self.bwrap) else []
        for folder in SOCKET_FOLDERS:
            if folder.is_dir() and not folder.is_symlink():
                args += ["--perms", "1777" if folder.name == "tmp" else "0755", *size, "--tmpfs", str(folder)]
                masked.append(folder)
        for path in needed:
            writable_here = path in writable
            inside = max((c for c in (*masked, *bound, *self.private) if path.is_relative_to(c)),
                         key=lambda c: len(c.parts), default=None)
            if not writable_here and inside in bound:
                continue                  # already visible through a read-only parent (no private folder between)
            for parent in reversed(path.parents):
                container = max((c for c in (*masked, *bound) if parent.is_relative_to(c)), key=lambda c: len(c.parts),
                                default=None)
                if (container is None and parent != Path("/")) or \
                        (container is not None and container in masked and container != parent):
                    if parent not in made:     # a fresh folder in the sandbox's own root or inside a tmpfs
                        args += ["--perms", "0755", "--dir", str(parent)]
                        made.add(parent)
                elif parent != Path("/") and parent not in masked and (
                        parent in self.private or (self.user and not traversable(parent, *self.user))):
                    args += ["--perms", "0755", "--tmpfs", str(parent)]
                    masked.append(parent)
            args += ["--bind" if writable_here else "--ro-bind-try", str(path), str(path)]
            bound.append(path)
        return args


def gpu_device_nodes(gpus: list[int] | None) -> list[str]:
    """The GPU device nodes a run sees: with its device slot's GPUs named, only theirs (plus the
    driver's control nodes); else all of them. NVIDIA's nodes are numbered in PCI bus order, which
    is the order CUDA uses under CUDA_DEVICE_ORDER=PCI_BUS_ID (set with the slot)."""
    nodes = sorted(glob.glob("/dev/nvidia*")) + ["/dev/dri"]
    if gpus is None:
        return nodes
    own = {f"/dev/nvidia{g}" for g in gpus}
    return [n for n in nodes if not re.fullmatch(r"/dev/nvidia\d+", n) or n in own]


def hide_args(path: Path) -> list[str]:
    if path.is_dir():
        return ["--perms", "0700", "--tmpfs", str(path)]
    if path.exists():
        return ["--ro-bind", "/dev/null", str(path)]
    return []


def traversable(folder: Path, uid: int, gid: int) -> bool:
    try:
        st = folder.stat()
    except OSError:
        return False
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


@functools.lru_cache(maxsize=4)
def bwrap_sizes_tmpfs(bwrap: str) -> bool:
    """Whether this bubblewrap takes `--size` (0.6+); an older one mounts /dev/shm unsized."""
    try:
        return "--size" in subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
