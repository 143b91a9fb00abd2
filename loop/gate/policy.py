"""`check_command` is the command policy for `run_command`. It parses the line (shlex, posix) and
never runs or trusts it: every segment's executable, every path it writes, every token that
could name a credential is checked, and ALL broken rules come back, each naming the rule and the
offending token. Whatever the parser cannot follow (substitutions, subshells, nested shells,
inline code, here-docs, eval) is refused rather than guessed at. `check_configured` is the same check
with the paths a DaemonConfig names (`llmloop policy check`).

What the policy does not promise: a script run by an allowed interpreter (`python x.py`) can do
anything its user can. The policy bounds what the shell line itself does; it is not a sandbox.

The parsing lives in loop/gate/shell.py, path resolution and the writable-path check in
loop/gate/paths.py, the per-program argument rules in loop/gate/programs.py.
"""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field

from loop.config import CommandPolicyConfig, DaemonConfig
from loop.errors import PolicyRefused
from loop.gate.paths import GLOB, Context, expand_home, glob_matches, inside, resolve, write_reasons
from loop.gate.programs import ARGUMENT_RULES, written_operands
from loop.gate.shell import WRITE_REDIRECTS, Segment, split_segments, tokenize

SHELLS = frozenset({"bash", "sh", "zsh", "dash", "fish", "pwsh", "powershell", "ksh", "csh", "tcsh",
                    "busybox"})
EVALUATORS = frozenset({"eval", "exec", "source", "."})
ENV_DUMPS = frozenset({"env", "printenv", "set", "export", "declare", "compgen", "typeset", "readonly"})
WRAPPERS = frozenset({"xargs", "nohup", "timeout", "nice", "ionice", "time", "command", "builtin",
                      "stdbuf", "setsid", "watch", "strace", "ltrace", "parallel", "script"})
PRIVILEGED = frozenset({"sudo", "su", "doas", "pkexec", "chown", "chgrp", "setcap", "mount", "umount",
                        "chroot", "nsenter", "unshare"})
NETWORK_TOOLS = frozenset({"curl", "wget", "nc", "ncat", "netcat", "socat", "ssh", "scp", "sftp",
                           "rsync", "ftp", "telnet", "ping", "nslookup", "dig", "host"})
SYSTEM_BIN_DIRS = (Path("/usr/bin"), Path("/bin"), Path("/usr/local/bin"))
SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
RUNS_ITS_ARGUMENTS = frozenset({"exec", "sudo", "doas", "command", "builtin", "nohup", "time", "nice",
                                "timeout", "xargs", "stdbuf", "setsid", "ionice", "watch", "strace"})

# Found in the raw text, quoted or not: the parser cannot follow what these expand to.
_RAW_RULES: tuple[tuple[str, str], ...] = (
    ("`", "command substitution"), ("$(", "command substitution"), ("${", "parameter expansion"),
    ("$'", "ANSI-C quoting"), ('$"', "locale quoting"),
    ("<(", "process substitution"), (">(", "process substitution"))
_VARIABLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_RAW_SOCKET = re.compile(r"/dev/(?:tcp|udp)/")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# shlex drops quoting, so a quoted ';' or '<' would look like a real operator: refuse the ambiguity.
_QUOTED_OPERATOR = re.compile(r"""'[();<>|&\n]+'|"[();<>|&\n]+"|\\[();<>|&\n]""")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")
_BRACE = re.compile(r"\{[^{}]*(?:,|\.\.)[^{}]*\}")
_PYTHON = re.compile(r"^python(?:\d+(?:\.\d+)*)?$")
_VERSION_SUFFIX = re.compile(r"[\d.]+$")
_CREDENTIAL = re.compile(r"""
      (?:^|[/=:])\.ssh(?:/|$)
    | id_(?:rsa|dsa|ecdsa|ed25519)
    | (?:^|[/=:])\.(?:aws|gnupg|kube)(?:/|$)
    | (?:^|[/=:])\.(?:netrc|pgpass|git-credentials|pypirc|envrc)(?:/|$)
    | (?:^|[/=:])\.[\w-]*_history$
    | \.docker/config\.json
    | \.config/llmloop
    | credentials
    | (?:^|[/=:])(?:\.env(?:\.[^/]*)?|[^/=:]+\.env)$
    | /etc/(?:g?shadow|sudoers)
    | /proc/[^/]+/environ
""", re.X | re.I)


class PolicyVerdict(BaseModel):
    """The policy's answer: `reasons` lists every broken rule, each naming the offending token."""

    allowed: bool
    reasons: list[str] = Field(default_factory=list)
    cwd: Path | None = None   # where the leading `cd` puts the command; None without a valid one

    def raise_if_refused(self, command: str) -> None:
        if not self.allowed:
            raise PolicyRefused(f"command refused: {command!r}: " + "; ".join(self.reasons))


def check_command(command: str, policy: CommandPolicyConfig, repo_root: Path, workspace: Path,
                  protected_files: Sequence[Path] = ()) -> PolicyVerdict:
    """Every rule `command` breaks; allowed only when there are none."""
    ctx = Context.build(policy, repo_root, workspace, protected_files)
    reasons = _text_reasons(command, policy)
    try:
        tokens = tokenize(command)
    except ValueError as exc:
        return PolicyVerdict(allowed=False, reasons=_unique(reasons + [f"unparsable command: {exc}"]))
    segments, operator_reasons = split_segments(tokens)
    reasons += operator_reasons
    verdict_cwd, cwd = None, ctx.repo_root   # relative paths before a valid cd: judged from the repo
    if not segments or segments[0].words[:1] != ["cd"]:
        reasons.append("no repo context: the command must start with `cd <repo root> &&`")
    for index, segment in enumerate(segments):
        reasons += _segment_reasons(segment, cwd, ctx)
        if segment.words[:1] == ["cd"]:
            target, cd_reasons = _cd(segment, cwd, ctx, first=index == 0)
            reasons += cd_reasons
            if index == 0 and not cd_reasons:
                verdict_cwd = target
            cwd = target or cwd
    reasons = _unique(reasons)
    return PolicyVerdict(allowed=not reasons, reasons=reasons, cwd=verdict_cwd)


def check_configured(command: str, cfg: DaemonConfig, workspace: Path) -> PolicyVerdict:
    """`check_command` with what `cfg` names: the project root, the policy and, protected, its
    credentials file, for the workspace the caller resolved. The one call the daemon's gate and
    `llmloop policy check` share, so they cannot disagree."""
    protected = [Path(cfg.credentials_file).expanduser()]
    return check_command(command, cfg.command_policy, cfg.root, Path(workspace), protected)


def _text_reasons(command: str, policy: CommandPolicyConfig) -> list[str]:
    """Rules on the raw text, before any parsing."""
    reasons = [f"{rule}: {needle}" for needle, rule in _RAW_RULES if needle in command]
    reasons += [f"secret variable expansion: ${name}" for name in _VARIABLE.findall(command)
                if any(part in name.upper() for part in SECRET_NAME_PARTS)]
    if not policy.allow_network and (match := _RAW_SOCKET.search(command)):
        reasons.append(f"network: raw socket {match.group(0)}")
    if match := _CONTROL.search(command):
        reasons.append(f"control character in command: {match.group(0)!r}")
    if match := _QUOTED_OPERATOR.search(command):
        reasons.append(f"quoted or escaped shell operator (ambiguous): {match.group(0)}")
    return reasons


def _segment_reasons(segment: Segment, cwd: Path, ctx: Context) -> list[str]:
    reasons: list[str] = []
    for op, target in segment.redirects:
        reasons += _token_reasons(target, cwd, ctx)
        is_fd_dup = op in (">&", "<&") and (target.isdigit() or target == "-")
        if op in WRITE_REDIRECTS and not is_fd_dup:
            reasons += write_reasons(target, cwd, ctx, removal=False, rule=f"redirect {op}")
    words = list(segment.words)
    while words and _ASSIGNMENT.match(words[0]):
        reasons.append(f"environment assignment before a command: {words[0]}")
        words.pop(0)
    for word in words:
        reasons += _token_reasons(word, cwd, ctx)
    if words:
        reasons += _command_reasons(words, cwd, ctx)
    return reasons


def _command_reasons(words: list[str], cwd: Path, ctx: Context, depth: int = 0) -> list[str]:
    exe, args = words[0], words[1:]
    name = os.path.basename(exe) or exe
    reasons = _executable_reasons(exe, name, cwd, ctx)
    rule = ARGUMENT_RULES.get("python" if _PYTHON.match(name) else name)
    if rule:
        reasons += rule(args, cwd, ctx)
    for path, removal, label in written_operands(name, args):
        reasons += write_reasons(path, cwd, ctx, removal=removal, rule=label)
    if name in RUNS_ITS_ARGUMENTS and depth < 3:   # `sudo rm x`: judge `rm x` too
        inner = _inner_command(args)
        if inner:
            reasons += _command_reasons(inner, cwd, ctx, depth + 1)
    return reasons


def _inner_command(args: list[str]) -> list[str]:
    """What a wrapper runs: its arguments after options and durations (`timeout 10s`, `nice -n 5`)."""
    i = 0
    while i < len(args) and re.fullmatch(r"-.*|\d+(?:\.\d+)?[smhd]?", args[i]):
        i += 1
    return args[i:]


def _executable_reasons(exe: str, name: str, cwd: Path, ctx: Context) -> list[str]:
    reasons = []
    if "$" in exe:
        reasons.append(f"dynamic executable: {exe}")
    for group, rule in ((SHELLS, "nested shell"), (EVALUATORS, "eval/exec/source runs unparsed code"),
                        (ENV_DUMPS, "environment dump"), (WRAPPERS, "runs another command"),
                        (PRIVILEGED, "privilege change")):
        if name in group:
            reasons.append(f"{rule}: {name}")
    if name in NETWORK_TOOLS and not ctx.policy.allow_network:
        reasons.append(f"network: {name}")
    if name not in ctx.allowed:
        reasons.append(f"executable not allowed: {exe}")
    elif "/" in exe:
        reasons += _executable_path_reasons(exe, cwd, ctx)
    return reasons


def _executable_path_reasons(exe: str, cwd: Path, ctx: Context) -> list[str]:
    """A path executable: in the repo or a system bin dir, not somewhere the loop could have written
    it, and really the program its name says (`.venv/bin/python` -> python3.11 is fine)."""
    location = Path(os.path.normpath(cwd / os.path.expanduser(exe)))
    real = resolve(cwd, exe)
    reasons = []
    if not (inside(location, ctx.repo_root) or any(inside(location, d) for d in SYSTEM_BIN_DIRS)):
        reasons.append(f"executable outside the repo and system bin dirs: {exe}")
    if any(ctx.write_problem(p, removal=False) is None for p in (location, real) if p):
        reasons.append(f"executable inside a writable path: {exe}")
    allowed_stems = {_VERSION_SUFFIX.sub("", a) for a in ctx.allowed}
    if real is None or _VERSION_SUFFIX.sub("", real.name) not in allowed_stems:
        reasons.append(f"executable path resolves to a program that is not allowed: {exe} -> {real}")
    return reasons


def _token_reasons(token: str, cwd: Path, ctx: Context) -> list[str]:
    """Credential and protected-file references, and brace expansion the parser cannot see through."""
    reasons = []
    if _BRACE.search(token):
        reasons.append(f"brace expansion: {token}")
    views, paths = _views(token, cwd, ctx)
    if any(_CREDENTIAL.search(view) for view in views):
        reasons.append(f"credential access: {token}")
    if any(path in ctx.protected for path in paths):
        reasons.append(f"protected file: {token}")
    return reasons


def _views(token: str, cwd: Path, ctx: Context) -> tuple[list[str], list[Path]]:
    """The texts a token may stand for (as written, `~` expanded, resolved through symlinks, its
    glob matches) and the resolved paths. Inside the repo the path is shown relative to it, so the
    repo's own location never reads as a credential."""
    views, paths = [], []
    for part in dict.fromkeys(p for p in (token, token.partition("=")[2]) if p):
        expanded = expand_home(part) or part
        resolved = [p for p in (resolve(cwd, part), *glob_matches(expanded, cwd)) if p]
        in_repo = bool(resolved) and inside(resolved[0], ctx.repo_root)
        if not (in_repo and os.path.isabs(expanded)):
            views += [part, expanded]
        for path in resolved:
            views.append(str(path.relative_to(ctx.repo_root)) if inside(path, ctx.repo_root) else str(path))
        paths += resolved
    return views, paths


def _cd(segment: Segment, cwd: Path, ctx: Context, first: bool) -> tuple[Path | None, list[str]]:
    """Where a `cd` goes, and why it does not count: only an existing directory inside the repo,
    joined by `&&` or `;` (a piped or backgrounded cd changes nothing for what follows)."""
    operands = [a for a in segment.words[1:] if a not in ("-P", "-L")]
    if len(operands) != 1 or operands[0].startswith("-"):
        return None, [f"cd needs exactly one directory: cd {' '.join(segment.words[1:])}".rstrip()]
    target = operands[0]
    if "$" in target or GLOB.search(target):
        return None, [f"cd to a path the policy cannot resolve: {target}"]
    reasons = []
    if segment.before not in (None, "&&", ";") or segment.after not in (None, "&&", ";"):
        op = segment.after if segment.after not in (None, "&&", ";") else segment.before
        reasons.append(f"cd joined by {op!r} does not change the directory of what follows")
    expanded = expand_home(target) or target
    if first and not os.path.isabs(expanded):
        return None, reasons + [f"no repo context: the leading cd must name an absolute path: {target}"]
    path = resolve(cwd, expanded)
    if path is None or not inside(path, ctx.repo_root):
        return None, reasons + [f"cd outside the repo: {target}"]
    if not path.is_dir():
        # a failed cd would leave what follows `;` running wherever the shell started
        return None, reasons + [f"cd target is not an existing directory: {target}"]
    return path, reasons


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
