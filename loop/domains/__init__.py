"""Task domains. Every task derives SpicaDomain; anything else is refused (`resolve_domain`).

A `package.module:Class` spec imports code, so once a process says which it trusts
(`trust_domains`: the daemon, PHASE and the CLI commands that read run-written model folders, from
the daemon config's `trusted_domains`), any other spec is refused before anything is imported, and
so is a trusted one whose package lives where runs write (the workspace).

`base.py` (SpicaDomain, splits, sample sets), the tasks (`digits.py`, `shapes.py`, `image_folder.py`,
`csv_labels.py`), `listing.py` (file listings), `ages.py` (age-based splits), `pixels.py` (the
decoded-pixel cache), `datareport.py` and `summary.py` (the data report and its summary)."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from loop.domains.base import SPLIT_NAMES, DomainSplits, SampleSet, SpicaDomain
from loop.domains.csv_labels import CsvLabelsDomain
from loop.domains.digits import DigitsDomain
from loop.domains.image_folder import ImageFolderDomain
from loop.domains.shapes import ShapesDomain
from loop.errors import DomainError

DOMAINS: dict[str, type[SpicaDomain]] = {d.name: d for d in (DigitsDomain, ImageFolderDomain, CsvLabelsDomain,
                                                                ShapesDomain)}

__all__ = ["DOMAINS", "SPLIT_NAMES", "DomainSplits", "SampleSet", "SpicaDomain", "check_trusted", "require_spica",
           "resolve_domain", "task_domain", "trust_domains", "trust_from"]


def require_spica(obj: Any) -> SpicaDomain:
    """Return `obj` if it is a SpicaDomain instance; refuse anything else."""
    if not isinstance(obj, SpicaDomain):
        raise DomainError(f"{type(obj).__module__}.{type(obj).__qualname__} is not a SpicaDomain; "
                          "every task must derive loop.domains.SpicaDomain")
    return obj


_trusted: set[str] | None = None        # None: this process trusts any spec (a user's own `llmloop train`)
_untrusted_roots: tuple[Path, ...] = ()


def trust_domains(specs: list[str], untrusted_roots: list[Path] = ()) -> None:
    """From now on in this process, import only these `module:Class` specs, never from below
    `untrusted_roots` (registered names need no trust)."""
    global _trusted, _untrusted_roots
    _trusted = set(specs)
    _untrusted_roots = tuple(Path(r).resolve() for r in untrusted_roots)


def trust_from(cfg, workspace: Path) -> None:
    """`trust_domains` from a daemon config (loop.config.DaemonConfig): its `trusted_domains`, never
    from below its workspace."""
    trust_domains(list(cfg.trusted_domains), [Path(workspace)])


def task_domain(cfg) -> SpicaDomain:
    """The daemon's own task, from its default trainer config (loop.config.DaemonConfig): what every
    daemon-side probe runs on, never a task a run's config.json names. One per config content."""
    from loop.config import read_yaml

    data = read_yaml(cfg.resolve(cfg.default_trainer_config)).get("data", {}) or {}
    return _task(data.get("domain", "digits"), json.dumps(data.get("domain_args") or {}, sort_keys=True))


@functools.lru_cache(maxsize=2)
def _task(spec: str, args: str) -> SpicaDomain:
    return resolve_domain(spec, json.loads(args))


def check_trusted(spec: str) -> None:
    """DomainError unless `spec` is registered or trusted here; imports nothing."""
    if spec in DOMAINS or ":" not in spec or _trusted is None:
        return
    if spec not in _trusted:
        raise DomainError(f"data.domain: {spec} is not in the daemon config's trusted_domains "
                          f"({', '.join(sorted(_trusted)) or 'none'}); a module:Class task is imported only when "
                          "the operator lists it there")
    top = spec.partition(":")[0].split(".")[0]
    found = importlib.util.find_spec(top)          # a top-level name: located, not executed
    places = [Path(found.origin)] if found and found.origin else []
    places += [Path(p) for p in (found.submodule_search_locations or [])] if found else []
    for place in places:
        if any(place.resolve().is_relative_to(root) for root in _untrusted_roots):
            raise DomainError(f"data.domain: {spec} would be imported from {place}, inside the workspace where "
                              "runs write; install the task's package elsewhere")


def resolve_domain(spec: str, args: dict[str, Any] | None = None) -> SpicaDomain:
    """Build a domain from a registered name or a trusted `package.module:Class` path."""
    args = dict(args or {})
    check_trusted(spec)
    if spec in DOMAINS:
        cls: Any = DOMAINS[spec]
    elif ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise DomainError(f"data.domain: cannot import {spec}: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, SpicaDomain)):
            raise DomainError(f"data.domain: {spec} is not a SpicaDomain; "
                              "every task must derive loop.domains.SpicaDomain")
    else:
        raise DomainError(f"data.domain: unknown domain {spec!r}; known: {', '.join(sorted(DOMAINS))} "
                          "or package.module:Class")
    try:
        domain = cls(**args)
    except TypeError as exc:
        raise DomainError(f"data.domain_args: {exc}") from exc
    return require_spica(domain)
