"""The command policy's rules on particular programs' arguments (python, git, find, grep, chmod,
nvidia-smi, sort) and which arguments of a program it writes, removes or moves away."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from loop.gate.paths import Context, inside, resolve, write_reasons
from loop.gate.shell import split_operands

NETWORK_GIT = frozenset({"clone", "fetch", "pull", "push", "remote", "submodule", "ls-remote"})
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


def _python_reasons(args: list[str], cwd: Path, ctx: Context) -> list[str]:
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


def _git_reasons(args: list[str], cwd: Path, ctx: Context) -> list[str]:
    reasons, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        if args[i] == "-c":
            reasons.append("git -c can run arbitrary commands (aliases, core.sshCommand): -c")
        i += 2 if args[i] in ("-c", "-C") else 1
    sub = args[i] if i < len(args) else ""
    if sub in NETWORK_GIT and not ctx.policy.allow_network:
        reasons.append(f"network: git {sub}")
    return reasons


def _find_reasons(args: list[str], cwd: Path, ctx: Context) -> list[str]:
    return [f"find action that runs or writes: {a}" for a in args if a in FIND_ACTIONS]


def _grep_reasons(args: list[str], cwd: Path, ctx: Context) -> list[str]:
    """A recursive grep reads every file below its paths: keep it to the repo and writable roots."""
    recursive = any(a in ("--recursive", "--dereference-recursive", "--directories=recurse")
                    or re.fullmatch(r"-[A-Za-z]*[rR][A-Za-z]*", a) for a in args)
    if not recursive:
        return []
    operands, _ = split_operands(args, "efmABCd", ("--regexp", "--file", "--max-count"))
    reasons = []
    for operand in operands:
        path = resolve(cwd, operand)
        if path is None or not any(inside(path, r) for r in (ctx.repo_root, *ctx.roots)):
            reasons.append(f"recursive read outside the repo: grep {operand}")
    return reasons


def _chmod_reasons(args: list[str], cwd: Path, ctx: Context) -> list[str]:
    reasons = []
    mode = re.compile(r"[0-7]{3,4}|[ugoa]*(?:[-+=][rwxXstugo]*)+(?:,[ugoa]*(?:[-+=][rwxXstugo]*)+)*")
    modes = [a for a in args if mode.fullmatch(a)]
    for m in modes:
        if (m.isdigit() and int(m, 8) & 0o6000) or (not m.isdigit() and "s" in m):
            reasons.append(f"privilege change: setuid/setgid bit chmod {m}")
    operands, _ = split_operands([a for a in args if a not in modes], "", ("--reference",))
    for path in operands:
        reasons += write_reasons(path, cwd, ctx, removal=False, rule="chmod")
    return reasons


def _nvidia_smi_reasons(args: list[str], cwd: Path, ctx: Context) -> list[str]:
    return [f"nvidia-smi option that changes the GPU: {a}" for a in args
            if a.partition("=")[0] in NVIDIA_SMI_MUTATING]


def _sort_reasons(args: list[str], cwd: Path, ctx: Context) -> list[str]:
    return [f"runs another command: sort {a}" for a in args if a.startswith("--compress-program")]


ARGUMENT_RULES: dict[str, Callable[[list[str], Path, Context], list[str]]] = {
    "python": _python_reasons, "git": _git_reasons, "find": _find_reasons, "grep": _grep_reasons,
    "chmod": _chmod_reasons, "nvidia-smi": _nvidia_smi_reasons, "sort": _sort_reasons}


def written_operands(name: str, args: list[str]) -> list[tuple[str, bool, str]]:
    """(path, is_removal, rule) for each path the command writes, removes or moves away."""
    if name in ("rm", "rmdir"):
        return [(p, True, name) for p in split_operands(args)[0]]
    if name in ("mv", "cp", "ln"):
        operands, options = split_operands(args, "tS", ("--target-directory", "--suffix"))
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
        return [(p, False, name) for p in split_operands(args, short, long)[0]]
    if name == "dd":
        return [(a[3:], False, "dd of=") for a in args if a.startswith("of=")]
    if name == "sort":
        _, options = split_operands(args, "ktoST", ("--output", "--temporary-directory", "--key",
                                                     "--field-separator", "--buffer-size"))
        return [(v, False, f"sort {k}") for k, v in options
                if k in ("-o", "--output", "-T", "--temporary-directory")]
    if name == "uniq":
        operands = split_operands(args, "fsw", ("--skip-fields", "--skip-chars", "--check-chars"))[0]
        return [(p, False, "uniq output") for p in operands[1:2]]
    return []
