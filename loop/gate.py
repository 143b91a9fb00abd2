"""The two checks a Builder decision passes before anything runs.

`quality_gate` applies the seed README's "Lightweight Quality Gate" checklist and only reports;
the caller turns a failing cycle into `downgrade(...)`, a `wait` that keeps the housekeeping.

`check_command` is the command policy for `run_command`. It parses the line (shlex, posix) and
never runs or trusts it: every segment's executable, every path it writes, every token that
could name a credential is checked, and ALL broken rules come back, each naming the rule and the
offending token. Whatever the parser cannot follow (substitutions, subshells, nested shells,
inline code, here-docs, eval) is refused rather than guessed at. `policy_check` is its CLI face.

What the policy does not promise: a script run by an allowed interpreter (`python x.py`) can do
anything its user can. The policy bounds what the shell line itself does; it is not a sandbox.
"""
from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from pydantic import BaseModel, Field

from loop.agents.schema import Decision, wait_decision
from loop.config import CommandPolicyConfig, DaemonConfig
from loop.errors import PolicyRefused

# ================================================================ quality gate ====

MIN_RATIONALE_CHARS = 20
MIN_RATIONALE_WORDS = 4
MIN_RUN_LABEL_CHARS = 3
FILLER_RATIONALES = frozenset({
    "continue", "try again", "n/a", "na", "none", "tbd", "todo", "ok", "okay", "wait", "nothing",
    "no reason", "because", "keep going", "same as before", "see above", "idk", "as above"})
GENERIC_RUN_LABELS = frozenset({
    "run", "test", "experiment", "job", "tmp", "temp", "train", "untitled", "wait", "command", "cmd",
    "exp", "label", "default", "none", "null", "new", "foo", "bar"})
# `cd <path>` (or PowerShell's Set-Location) then `&&` or `;`: the command says where it runs.
_REPO_CONTEXT = re.compile(
    r"""^\s*(?:cd|(?i:set-location))\s+(?:"[^"]+"|'[^']+'|[^\s;&|'"]+)\s*(?:&&|;)""")


class QualityResult(BaseModel):
    """What the gate found. `housekeeping` is telemetry only: it never blocks a cycle."""

    ok: bool
    reasons: list[str] = Field(default_factory=list)
    housekeeping: dict[str, int | bool] = Field(default_factory=dict)


def quality_gate(decision: Decision) -> QualityResult:
    """The seed's checklist. `train` needs no label: the loop makes one."""
    reasons = rationale_reasons(decision.rationale)
    if decision.action == "run_command":
        reasons += command_context_reasons(decision.command)
        reasons += run_label_reasons(decision.run_label)
    return QualityResult(ok=not reasons, reasons=reasons, housekeeping=housekeeping(decision))


def rationale_reasons(rationale: str) -> list[str]:
    text = " ".join(rationale.split())
    words = text.split()
    if re.sub(r"[^\w/ ]+", "", text.lower()).strip() in FILLER_RATIONALES:   # "Continue." is "continue"
        return [f"rationale is generic filler: {text!r}"]
    if len(text) < MIN_RATIONALE_CHARS or len(words) < MIN_RATIONALE_WORDS:
        return [f"rationale is too short (need {MIN_RATIONALE_CHARS}+ characters and "
                f"{MIN_RATIONALE_WORDS}+ words): {text!r}"]
    if len({w.lower() for w in words}) < 3:   # "continue continue continue continue"
        return [f"rationale repeats itself: {text!r}"]
    return []


def run_label_reasons(label: str) -> list[str]:
    text = label.strip()
    if not text:
        return ["run_label is empty"]
    if len(text) < MIN_RUN_LABEL_CHARS:
        return [f"run_label is shorter than {MIN_RUN_LABEL_CHARS} characters: {text!r}"]
    stem = re.sub(r"[\W_]*\d*$", "", text.lower())   # "run_2" is as generic as "run"
    if text.lower() in GENERIC_RUN_LABELS or stem in GENERIC_RUN_LABELS:
        return [f"run_label is generic: {text!r}"]
    return []


def command_context_reasons(command: str) -> list[str]:
    if not command.strip():
        return ["run_command has an empty command"]
    if not _REPO_CONTEXT.match(command):
        return ["command has no explicit repo context (start with `cd <repo> &&` or `Set-Location <repo>;`)"]
    return []


def housekeeping(decision: Decision) -> dict[str, int | bool]:
    tracked: dict[str, int | bool] = {
        "todo_new": len(decision.todo_new),
        "notes_update": bool(decision.notes_update.strip()),
        "data_exploration_update": bool(decision.data_exploration_update.strip()),
        "resolve_shared_todo_ids": len(decision.resolve_shared_todo_ids),
    }
    tracked["empty"] = not any(tracked.values())
    return tracked


def downgrade(decision: Decision, result: QualityResult) -> Decision:
    """The `wait` a failing cycle becomes; the housekeeping still lands."""
    reasons = "; ".join(result.reasons) or "quality gate failed"
    wait = wait_decision(f"quality gate downgraded `{decision.action}` to wait: {reasons}")
    return wait.model_copy(update={
        "todo_new": list(decision.todo_new),
        "notes_update": decision.notes_update,
        "data_exploration_update": decision.data_exploration_update,
        "resolve_shared_todo_ids": list(decision.resolve_shared_todo_ids),
    })


# ============================================================== command policy ====

_PUNCT = "();<>|&\n"
SEPARATORS = frozenset({";", "&&", "||", "|", "&", "|&"})
WRITE_REDIRECTS = frozenset({">", ">>", "&>", "&>>", ">|", ">&", "<>"})
READ_REDIRECTS = frozenset({"<", "<&"})
DEVICE_SINKS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})   # redirecting there is harmless

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
NETWORK_GIT = frozenset({"clone", "fetch", "pull", "push", "remote", "submodule", "ls-remote"})
SYSTEM_BIN_DIRS = (Path("/usr/bin"), Path("/bin"), Path("/usr/local/bin"))
SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")
FIND_ACTIONS = frozenset({"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprint0",
                          "-fprintf", "-fls"})
# nvidia-smi is allowed for queries; these change or reset the GPU.
NVIDIA_SMI_MUTATING = frozenset({
    "-pm", "--persistence-mode", "-e", "--ecc-config", "-p", "--reset-ecc-errors", "-c", "--compute-mode",
    "-r", "--gpu-reset", "-ac", "--applications-clocks", "-rac", "--reset-applications-clocks",
    "-acp", "--applications-clocks-permission", "-pl", "--power-limit", "-lgc", "--lock-gpu-clocks",
    "-rgc", "--reset-gpu-clocks", "-lmc", "--lock-memory-clocks", "-rmc", "--reset-memory-clocks",
    "-mig", "--multi-instance-gpu", "-am", "--accounting-mode", "-caa", "--clear-accounted-apps",
    "--auto-boost-default", "--auto-boost-permission", "-cc", "--cuda-clocks", "mig", "drain"})
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
_FD_NUMBER = re.compile(r"(^|[\s;&|])\d+(?=[<>])")   # `2>x` -> `>x`: which fd is written does not matter
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")
_BRACE = re.compile(r"\{[^{}]*(?:,|\.\.)[^{}]*\}")
_GLOB = re.compile(r"[*?\[]")
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
_GLOB_LIMIT = 500   # matches inspected per glob; enough to catch a secret, cheap on a huge tree


class PolicyVerdict(BaseModel):
    """The policy's answer: `reasons` lists every broken rule, each naming the offending token."""

    allowed: bool
    reasons: list[str] = Field(default_factory=list)
    cwd: Path | None = None   # where the leading `cd` puts the command; None without a valid one

    def raise_if_refused(self, command: str) -> None:
        if not self.allowed:
            raise PolicyRefused(f"command refused: {command!r}: " + "; ".join(self.reasons))


@dataclass
class _Segment:
    """One simple command between separators. `before`/`after` are the joining operators."""

    words: list[str]
    redirects: list[tuple[str, str]]
    before: str | None = None
    after: str | None = None


@dataclass(frozen=True)
class _Context:
    policy: CommandPolicyConfig
    repo_root: Path
    roots: tuple[Path, ...]        # writable roots, resolved
    protected: frozenset[Path]
    allowed: frozenset[str]

    @classmethod
    def build(cls, policy: CommandPolicyConfig, repo_root: Path, workspace: Path,
              protected_files: Iterable[Path]) -> _Context:
        repo = Path(repo_root).expanduser().resolve()
        entries = [Path(p).expanduser() for p in policy.writable_paths] + [Path(workspace).expanduser()]
        roots = tuple(dict.fromkeys((p if p.is_absolute() else repo / p).resolve() for p in entries))
        protected = frozenset(Path(p).expanduser().resolve() for p in protected_files)
        return cls(policy, repo, roots, protected, frozenset(policy.allowed_executables))

    def write_problem(self, path: Path, removal: bool) -> str | None:
        """Why `path` may not be written (or removed), None when it may. Inside the repo only its own
        writable entries count (a repo under /tmp is not writable because /tmp is). A removal must
        not take the repo or a writable root with it."""
        if removal and any(_inside(keep, path) for keep in (self.repo_root, *self.roots)):
            return "removal of a writable root, the repo, or above"
        in_repo = _inside(path, self.repo_root)
        roots = [r for r in self.roots if _inside(r, self.repo_root)] if in_repo else self.roots
        if not any(_inside(path, r) for r in roots):
            return "removal outside writable paths" if removal else "write outside writable paths"
        return None


def check_command(command: str, policy: CommandPolicyConfig, repo_root: Path, workspace: Path,
                  protected_files: Sequence[Path] = ()) -> PolicyVerdict:
    """Every rule `command` breaks; allowed only when there are none."""
    ctx = _Context.build(policy, repo_root, workspace, protected_files)
    reasons = _text_reasons(command, policy)
    try:
        tokens = _tokenize(command)
    except ValueError as exc:
        return PolicyVerdict(allowed=False, reasons=_unique(reasons + [f"unparsable command: {exc}"]))
    segments, operator_reasons = _split_segments(tokens)
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


def policy_check(command: str, cfg: DaemonConfig, repo_root: Path) -> int:
    """`llmloop policy check -- CMD`: print the verdict; 0 when allowed, 1 when refused."""
    workspace = Path(cfg.workspace).expanduser()
    if not workspace.is_absolute():
        workspace = Path(repo_root) / workspace
    protected = [Path(cfg.credentials_file).expanduser()]
    verdict = check_command(command, cfg.command_policy, Path(repo_root), workspace, protected)
    print(format_verdict(command, verdict))
    return 0 if verdict.allowed else 1


def format_verdict(command: str, verdict: PolicyVerdict) -> str:
    if verdict.allowed:
        return f"ALLOWED: {command}"
    return "\n".join([f"REFUSED: {command}", *(f"- {reason}" for reason in verdict.reasons)])


# ------------------------------------------------------------------ parsing ----

def _tokenize(command: str) -> list[str]:
    """shlex words and operator runs; newlines are operators. No comments: a `#` hides nothing."""
    lexer = shlex.shlex(_FD_NUMBER.sub(r"\1", command), posix=True, punctuation_chars=_PUNCT)
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def _classify(token: str) -> str:
    """'word', 'sep', 'redirect', or the refusal reason for an operator the policy will not follow."""
    if not token or not set(token) <= set(_PUNCT):
        return "word"
    if "(" in token or ")" in token:
        return f"subshell or process substitution: {token!r}"
    if "<<" in token:
        return f"here-document or here-string: {token!r}"
    if token in WRITE_REDIRECTS or token in READ_REDIRECTS:
        return "redirect"
    if set(token) <= set(";&|\n") and (token.replace("\n", "") or ";") in SEPARATORS:
        return "sep"
    return f"unrecognised shell operator: {token!r}"


def _split_segments(tokens: list[str]) -> tuple[list[_Segment], list[str]]:
    segments, reasons = [], []
    current = _Segment([], [])
    i = 0
    while i < len(tokens):
        token, kind = tokens[i], _classify(tokens[i])
        if kind == "word":
            current.words.append(token)
        elif kind == "sep":
            current.after = token.replace("\n", "") or ";"
            segments.append(current)
            current = _Segment([], [], before=current.after)
        elif kind == "redirect":
            if i + 1 < len(tokens) and _classify(tokens[i + 1]) == "word":
                current.redirects.append((token, tokens[i + 1]))
                i += 1
            else:
                reasons.append(f"redirection without a target: {token!r}")
        else:
            reasons.append(kind)
        i += 1
    segments.append(current)
    return [s for s in segments if s.words or s.redirects], reasons


def _operands(args: Sequence[str], short_values: str = "",
              long_values: Iterable[str] = ()) -> tuple[list[str], list[tuple[str, str]]]:
    """Split GNU-style arguments into operands and (option, value) pairs for value-taking options."""
    long_values = set(long_values)
    operands: list[str] = []
    options: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            operands += args[i + 1:]
            break
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            if key in long_values:
                if not eq and i + 1 < len(args):
                    value, i = args[i + 1], i + 1
                options.append((key, value))
        elif arg.startswith("-") and len(arg) > 1:
            for j, flag in enumerate(arg[1:], 1):
                if flag in short_values:
                    value = arg[j + 1:]
                    if not value and i + 1 < len(args):
                        value, i = args[i + 1], i + 1
                    options.append(("-" + flag, value))
                    break
        else:
            operands.append(arg)
        i += 1
    return operands, options


# ------------------------------------------------------------------- rules ----

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


def _segment_reasons(segment: _Segment, cwd: Path, ctx: _Context) -> list[str]:
    reasons: list[str] = []
    for op, target in segment.redirects:
        reasons += _token_reasons(target, cwd, ctx)
        is_fd_dup = op in (">&", "<&") and (target.isdigit() or target == "-")
        if op in WRITE_REDIRECTS and not is_fd_dup:
            reasons += _write_reasons(target, cwd, ctx, removal=False, rule=f"redirect {op}")
    words = list(segment.words)
    while words and _ASSIGNMENT.match(words[0]):
        reasons.append(f"environment assignment before a command: {words[0]}")
        words.pop(0)
    for word in words:
        reasons += _token_reasons(word, cwd, ctx)
    if words:
        reasons += _command_reasons(words, cwd, ctx)
    return reasons


def _command_reasons(words: list[str], cwd: Path, ctx: _Context, depth: int = 0) -> list[str]:
    exe, args = words[0], words[1:]
    name = os.path.basename(exe) or exe
    reasons = _executable_reasons(exe, name, cwd, ctx)
    rule = _ARGUMENT_RULES.get("python" if _PYTHON.match(name) else name)
    if rule:
        reasons += rule(args, cwd, ctx)
    for path, removal, label in _written_operands(name, args):
        reasons += _write_reasons(path, cwd, ctx, removal=removal, rule=label)
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


def _executable_reasons(exe: str, name: str, cwd: Path, ctx: _Context) -> list[str]:
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


def _executable_path_reasons(exe: str, cwd: Path, ctx: _Context) -> list[str]:
    """A path executable: in the repo or a system bin dir, not somewhere the loop could have written
    it, and really the program its name says (`.venv/bin/python` -> python3.11 is fine)."""
    location = Path(os.path.normpath(cwd / os.path.expanduser(exe)))
    real = _resolve(cwd, exe)
    reasons = []
    if not (_inside(location, ctx.repo_root) or any(_inside(location, d) for d in SYSTEM_BIN_DIRS)):
        reasons.append(f"executable outside the repo and system bin dirs: {exe}")
    if any(ctx.write_problem(p, removal=False) is None for p in (location, real) if p):
        reasons.append(f"executable inside a writable path: {exe}")
    allowed_stems = {_VERSION_SUFFIX.sub("", a) for a in ctx.allowed}
    if real is None or _VERSION_SUFFIX.sub("", real.name) not in allowed_stems:
        reasons.append(f"executable path resolves to a program that is not allowed: {exe} -> {real}")
    return reasons


def _python_reasons(args: list[str], cwd: Path, ctx: _Context) -> list[str]:
    """Scripts and `-m loop…`/`-m pytest` only: no inline code, no stdin code, no pip."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-":
            return ["inline code: python -"]
        if arg == "--":
            i += 1
            break
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        if not arg.startswith("-"):
            return []   # the script; the rest are its own arguments
        for j, flag in enumerate(arg[1:], 1):
            if flag == "c":
                return [f"inline code: python {arg}"]
            if flag == "m":
                module = arg[j + 1:] or (args[i + 1] if i + 1 < len(args) else "")
                return _python_module_reasons(module)
            if flag in "WX":
                i += 0 if arg[j + 1:] else 1   # the value is the next argument
                break
        i += 1
    return [] if i < len(args) else ["python without a script reads code from stdin"]


def _python_module_reasons(module: str) -> list[str]:
    if module == "pip" or module.startswith("pip."):
        return ["package install outside auto-repair: python -m pip"]
    if module in ("loop", "pytest") or module.startswith("loop."):
        return []
    return [f"python -m only runs loop, loop.* or pytest: -m {module}"]


def _git_reasons(args: list[str], cwd: Path, ctx: _Context) -> list[str]:
    reasons, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "-c":
            reasons.append("git -c can run arbitrary commands (aliases, core.sshCommand): -c")
        i += 2 if args[i] in ("-c", "-C") else 1
    sub = args[i] if i < len(args) else ""
    if sub in NETWORK_GIT and not ctx.policy.allow_network:
        reasons.append(f"network: git {sub}")
    return reasons


def _find_reasons(args: list[str], cwd: Path, ctx: _Context) -> list[str]:
    return [f"find action that runs or writes: {a}" for a in args if a in FIND_ACTIONS]


def _grep_reasons(args: list[str], cwd: Path, ctx: _Context) -> list[str]:
    """A recursive grep reads every file below its paths: keep it to the repo and writable roots."""
    recursive = any(a in ("--recursive", "--dereference-recursive", "--directories=recurse")
                    or re.fullmatch(r"-[A-Za-z]*[rR][A-Za-z]*", a) for a in args)
    if not recursive:
        return []
    operands, _ = _operands(args, "efmABCd", ("--regexp", "--file", "--max-count"))
    reasons = []
    for operand in operands:
        path = _resolve(cwd, operand)
        if path is None or not any(_inside(path, r) for r in (ctx.repo_root, *ctx.roots)):
            reasons.append(f"recursive read outside the repo: grep {operand}")
    return reasons


def _chmod_reasons(args: list[str], cwd: Path, ctx: _Context) -> list[str]:
    reasons = []
    mode = re.compile(r"[0-7]{3,4}|[ugoa]*(?:[-+=][rwxXstugo]*)+(?:,[ugoa]*(?:[-+=][rwxXstugo]*)+)*")
    modes = [a for a in args if mode.fullmatch(a)]
    for m in modes:
        if (m.isdigit() and int(m, 8) & 0o6000) or (not m.isdigit() and "s" in m):
            reasons.append(f"privilege change: setuid/setgid bit chmod {m}")
    operands, _ = _operands([a for a in args if a not in modes], "", ("--reference",))
    for path in operands:
        reasons += _write_reasons(path, cwd, ctx, removal=False, rule="chmod")
    return reasons


def _nvidia_smi_reasons(args: list[str], cwd: Path, ctx: _Context) -> list[str]:
    return [f"nvidia-smi option that changes the GPU: {a}" for a in args
            if a.partition("=")[0] in NVIDIA_SMI_MUTATING]


def _sort_reasons(args: list[str], cwd: Path, ctx: _Context) -> list[str]:
    return [f"runs another command: sort {a}" for a in args if a.startswith("--compress-program")]


_ARGUMENT_RULES: dict[str, Callable[[list[str], Path, _Context], list[str]]] = {
    "python": _python_reasons, "git": _git_reasons, "find": _find_reasons, "grep": _grep_reasons,
    "chmod": _chmod_reasons, "nvidia-smi": _nvidia_smi_reasons, "sort": _sort_reasons}


def _written_operands(name: str, args: list[str]) -> list[tuple[str, bool, str]]:
    """(path, is_removal, rule) for each path the command writes, removes or moves away."""
    if name in ("rm", "rmdir"):
        return [(p, True, name) for p in _operands(args)[0]]
    if name in ("mv", "cp", "ln"):
        operands, options = _operands(args, "tS", ("--target-directory", "--suffix"))
        targets = [v for k, v in options if k in ("-t", "--target-directory")]
        sources = operands if targets else operands[:-1]
        dests = targets or operands[-1:]
        out = [(d, False, name) for d in dests]
        if name == "mv":
            out += [(s, True, "mv source") for s in sources]
        if name == "ln":   # a link from writable space to anywhere else is an escape hatch
            out += [(s, False, "ln target") for s in sources]
        return out
    if name in ("mkdir", "touch", "truncate", "tee"):
        short, long = {"mkdir": ("m", ("--mode",)), "touch": ("rdt", ("--reference", "--date")),
                       "truncate": ("sr", ("--size", "--reference")), "tee": ("", ())}[name]
        return [(p, False, name) for p in _operands(args, short, long)[0]]
    if name == "dd":
        return [(a[3:], False, "dd of=") for a in args if a.startswith("of=")]
    if name == "sort":
        _, options = _operands(args, "ktoST", ("--output", "--temporary-directory", "--key",
                                                "--field-separator", "--buffer-size"))
        return [(v, False, f"sort {k}") for k, v in options
                if k in ("-o", "--output", "-T", "--temporary-directory")]
    if name == "uniq":
        operands = _operands(args, "fsw", ("--skip-fields", "--skip-chars", "--check-chars"))[0]
        return [(p, False, "uniq output") for p in operands[1:2]]
    return []


def _write_reasons(token: str, cwd: Path, ctx: _Context, removal: bool, rule: str) -> list[str]:
    if token in DEVICE_SINKS and not removal:
        return []
    if "$" in token:
        return [f"variable in a written path ({rule}): {token}"]
    paths, problem = _write_targets(token, cwd, follow_last=not removal)
    if problem:
        return [f"{problem} ({rule}): {token}"]
    for path in paths:
        if problem := ctx.write_problem(path, removal):
            return [f"{problem} ({rule}): {token} -> {path}"]
    return []


def _write_targets(token: str, cwd: Path, follow_last: bool) -> tuple[list[Path], str | None]:
    """Resolved paths a written token may touch. A glob stands for 'anything below its fixed
    prefix', plus whatever it matches now (a match may be a symlink out)."""
    text = _expand_home(token)
    if text is None:
        return [], "unknown home directory"
    parts = Path(text).parts
    first = next((i for i, part in enumerate(parts) if _GLOB.search(part)), None)
    if first is None:
        path = _resolve(cwd, text, follow_last)
        return ([path], None) if path else ([], "unresolvable path")
    if any(part.startswith(".") for part in parts[first:]):
        return [], "glob that can match '..'"
    prefix = _resolve(cwd, str(Path(*parts[:first]))) if first else _resolve(cwd, ".")
    if prefix is None:
        return [], "unresolvable path"
    return [prefix.joinpath(*parts[first:]), *_glob_matches(text, cwd, follow_last)], None


def _token_reasons(token: str, cwd: Path, ctx: _Context) -> list[str]:
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


def _views(token: str, cwd: Path, ctx: _Context) -> tuple[list[str], list[Path]]:
    """The texts a token may stand for (as written, `~` expanded, resolved through symlinks, its
    glob matches) and the resolved paths. Inside the repo the path is shown relative to it, so the
    repo's own location never reads as a credential."""
    views, paths = [], []
    for part in dict.fromkeys(p for p in (token, token.partition("=")[2]) if p):
        expanded = _expand_home(part) or part
        resolved = [p for p in (_resolve(cwd, part), *_glob_matches(expanded, cwd)) if p]
        in_repo = bool(resolved) and _inside(resolved[0], ctx.repo_root)
        if not (in_repo and os.path.isabs(expanded)):
            views += [part, expanded]
        for path in resolved:
            views.append(str(path.relative_to(ctx.repo_root)) if _inside(path, ctx.repo_root) else str(path))
        paths += resolved
    return views, paths


def _cd(segment: _Segment, cwd: Path, ctx: _Context, first: bool) -> tuple[Path | None, list[str]]:
    """Where a `cd` goes, and why it does not count: only an existing directory inside the repo,
    joined by `&&` or `;` (a piped or backgrounded cd changes nothing for what follows)."""
    operands = [a for a in segment.words[1:] if a not in ("-P", "-L")]
    if len(operands) != 1 or operands[0].startswith("-"):
        return None, [f"cd needs exactly one directory: cd {' '.join(segment.words[1:])}".rstrip()]
    target = operands[0]
    if "$" in target or _GLOB.search(target):
        return None, [f"cd to a path the policy cannot resolve: {target}"]
    reasons = []
    if segment.before not in (None, "&&", ";") or segment.after not in (None, "&&", ";"):
        op = segment.after if segment.after not in (None, "&&", ";") else segment.before
        reasons.append(f"cd joined by {op!r} does not change the directory of what follows")
    expanded = _expand_home(target) or target
    if first and not os.path.isabs(expanded):
        return None, reasons + [f"no repo context: the leading cd must name an absolute path: {target}"]
    path = _resolve(cwd, expanded)
    if path is None or not _inside(path, ctx.repo_root):
        return None, reasons + [f"cd outside the repo: {target}"]
    if not path.is_dir():
        # a failed cd would leave what follows `;` running wherever the shell started
        return None, reasons + [f"cd target is not an existing directory: {target}"]
    return path, reasons


# ------------------------------------------------------------------ paths ----

def _expand_home(text: str) -> str | None:
    try:
        return os.path.expanduser(text) if text.startswith("~") else text
    except (KeyError, RuntimeError):
        return None


def _resolve(cwd: Path, text: str, follow_last: bool = True) -> Path | None:
    """`text` as an absolute path: `~` expanded, relative to `cwd`, `..` and symlinks resolved.
    Without `follow_last` a final symlink stays itself: `rm`/`mv` act on the link, not its target
    (a trailing slash does follow it)."""
    expanded = _expand_home(text)
    if expanded is None:
        return None
    path = cwd / expanded
    try:
        if follow_last or expanded.endswith("/") or path.name in ("", ".", ".."):
            return path.resolve(strict=False)
        return path.parent.resolve(strict=False) / path.name
    except (OSError, RuntimeError, ValueError):   # symlink loop, NUL byte
        return None


def _glob_matches(pattern: str, cwd: Path, follow_last: bool = True) -> list[Path]:
    if not _GLOB.search(pattern):
        return []
    try:
        found = islice(glob.iglob(pattern if os.path.isabs(pattern) else str(cwd / pattern)), _GLOB_LIMIT)
        return [p for p in (_resolve(cwd, m, follow_last) for m in found) if p]
    except (OSError, ValueError, re.error):
        return []


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))
