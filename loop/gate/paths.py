"""Where a command may write, and what a token points at: the writable roots, `~`, `..`, symlink
and glob resolution, and the check on every path a command writes or removes. Used by the command
policy (loop/gate/policy.py)."""
from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from loop.config import CommandPolicyConfig

DEVICE_SINKS = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})   # redirecting there is harmless
GLOB = re.compile(r"[*?\[]")
_GLOB_LIMIT = 500   # matches inspected per glob; enough to catch a secret, cheap on a huge tree


@dataclass(frozen=True)
class Context:
    policy: CommandPolicyConfig
    repo_root: Path
    roots: tuple[Path, ...]        # writable roots, resolved
    protected: frozenset[Path]
    allowed: frozenset[str]

    @classmethod
    def build(cls, policy: CommandPolicyConfig, repo_root: Path, workspace: Path,
              protected_files: Iterable[Path]) -> Context:
        repo = Path(repo_root).expanduser().resolve()
        entries = [Path(p).expanduser() for p in policy.writable_paths] + [Path(workspace).expanduser()]
        roots = tuple(dict.fromkeys((p if p.is_absolute() else repo / p).resolve() for p in entries))
        protected = frozenset(Path(p).expanduser().resolve() for p in protected_files)
        return cls(policy, repo, roots, protected, frozenset(policy.allowed_executables))

    def write_problem(self, path: Path, removal: bool) -> str | None:
        """Why `path` may not be written (or removed), None when it may. Inside the repo only its own
        writable entries count (a repo under /tmp is not writable because /tmp is). A removal must
        not take the repo or a writable root with it."""
        if removal and any(inside(keep, path) for keep in (self.repo_root, *self.roots)):
            return "removal of a writable root, the repo, or above"
        in_repo = inside(path, self.repo_root)
        roots = [r for r in self.roots if inside(r, self.repo_root)] if in_repo else self.roots
        if not any(inside(path, r) for r in roots):
            return "removal outside writable paths" if removal else "write outside writable paths"
        return None


def write_reasons(token: str, cwd: Path, ctx: Context, removal: bool, rule: str) -> list[str]:
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
    text = expand_home(token)
    if text is None:
        return [], "unknown home directory"
    parts = Path(text).parts
    first = next((i for i, part in enumerate(parts) if GLOB.search(part)), None)
    if first is None:
        path = resolve(cwd, text, follow_last)
        return ([path], None) if path else ([], "unresolvable path")
    if any(part.startswith(".") for part in parts[first:]):
        return [], "glob that can match '..'"
    prefix = resolve(cwd, str(Path(*parts[:first]))) if first else resolve(cwd, ".")
    if prefix is None:
        return [], "unresolvable path"
    return [prefix.joinpath(*parts[first:]), *glob_matches(text, cwd, follow_last)], None


def expand_home(text: str) -> str | None:
    try:
        return os.path.expanduser(text) if text.startswith("~") else text
    except (KeyError, RuntimeError):
        return None


def resolve(cwd: Path, text: str, follow_last: bool = True) -> Path | None:
    """`text` as an absolute path: `~` expanded, relative to `cwd`, `..` and symlinks resolved.
    Without `follow_last` a final symlink stays itself: `rm`/`mv` act on the link, not its target
    (a trailing slash does follow it)."""
    expanded = expand_home(text)
    if expanded is None:
        return None
    path = cwd / expanded
    try:
        if follow_last or expanded.endswith("/") or path.name in ("", ".", ".."):
            return path.resolve(strict=False)
        return path.parent.resolve(strict=False) / path.name
    except (OSError, RuntimeError, ValueError):   # symlink loop, NUL byte
        return None


def glob_matches(pattern: str, cwd: Path, follow_last: bool = True) -> list[Path]:
    if not GLOB.search(pattern):
        return []
    try:
        found = islice(glob.iglob(pattern if os.path.isabs(pattern) else str(cwd / pattern)), _GLOB_LIMIT)
        return [p for p in (resolve(cwd, m, follow_last) for m in found) if p]
    except (OSError, ValueError, re.error):
        return []


def inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
