"""Auto-repair, allowlisted clones: a repo comes only from a URL prefix in
`auto_repair_clone_allowlist`, is checked out only at a full 40-hex commit sha, lives in
`<workspace>/autofix_repos/`, and is then pip-installed from its folder (built, not a wheel).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Sequence

import git

from loop.run.repair.install import pip_install
from loop.run.repair.steps import RepairAction, RepairStep, StepContext

REPOS_DIR = "autofix_repos"

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def clone_dir(workspace: Path, repo: str) -> Path:
    """`<workspace>/autofix_repos/<name>-<hash>`: readable, and two repos called 'models' don't clash."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
    digest = hashlib.sha1(repo.encode()).hexdigest()[:8]
    return Path(workspace) / REPOS_DIR / f"{name or 'repo'}-{digest}"


def checkout_clone(repo: str, ref: str, dest: Path) -> Path:
    """Clone `repo` into `dest`, or reuse the clone already there, and check out `ref`.

    A reused clone is fetched only when it lacks `ref`.
    """
    reused = (dest / ".git").exists()
    clone = git.Repo(dest) if reused else git.Repo.clone_from(repo, dest)
    try:
        clone.git.checkout(ref)
    except git.GitCommandError:
        if not reused:
            raise
        clone.remotes.origin.fetch()
        clone.git.checkout(ref)
    return dest


def clone_refusal(repo_url: str, ref: str, allowlist: Sequence[str]) -> str | None:
    """Why a clone of `repo_url`@`ref` is refused (None: allowed)."""
    if not _COMMIT_RE.match(ref):
        return (f"refused: ref {ref!r} is not a full 40-hex commit sha (a branch or tag can move; "
                "pin the clone to a commit)")
    if re.search(r"(^|/)\.\.(/|$)", repo_url) or "::" in repo_url.split("/", 1)[0]:
        return f"refused: repo {repo_url!r} uses '..' or a transport helper"
    for prefix in allowlist:
        if prefix and (repo_url == prefix.rstrip("/") or
                       repo_url.startswith(prefix if prefix.endswith("/") else prefix + "/")):
            return None
    return (f"refused: repo {repo_url!r} is not under a prefix in auto_repair_clone_allowlist "
            f"({list(allowlist) or 'empty: no clones allowed'})")


def clone_step(step: RepairStep, ctx: StepContext) -> RepairAction:
    """A `clone` step: check the repo and ref, clone or reuse, verify the commit, install the subdir."""
    assert step.clone is not None
    spec = step.clone
    action = RepairAction(kind="clone", target=step.target, source=step.source, repo=spec.repo,
                          ok=False, detail="")
    url = _repo_url(spec.repo, ctx.repo_root)
    refusal = clone_refusal(url, spec.ref, ctx.clone_allowlist)
    if refusal:
        return action.model_copy(update={"detail": refusal})
    dest = clone_dir(ctx.workspace, spec.repo)
    try:
        checkout_clone(url, spec.ref, dest)
        head = git.Repo(dest).head.commit.hexsha
    except (git.GitError, OSError, ValueError) as exc:
        return action.model_copy(update={"detail": f"clone/checkout of {spec.repo}@{spec.ref} failed: {exc}"})
    if head != spec.ref:   # e.g. a branch named like a sha
        return action.model_copy(update={"detail": f"refused: checkout of {spec.ref} gave commit {head}"})
    source_dir = (dest / spec.subdir).resolve()
    if not source_dir.is_relative_to(dest.resolve()):
        return action.model_copy(update={"detail": f"subdir {spec.subdir!r} points outside the clone"})
    # A clone is a local directory: it must be built, so no --only-binary for it.
    ok, detail = pip_install(ctx.python, str(source_dir), ctx.pip_args, editable=spec.editable, cwd=ctx.repo_root,
                             index_url=ctx.index_url, only_binary=False)
    return action.model_copy(update={"ok": ok, "package": str(source_dir), "detail": detail})


def _repo_url(repo: str, repo_root: Path) -> str:
    """A relative local repo path means relative to the repo root, not to the daemon's cwd."""
    if "://" in repo or re.match(r"^[\w.-]+@", repo) or Path(repo).is_absolute():
        return repo
    local = repo_root / repo
    return str(local.resolve()) if local.exists() else repo
