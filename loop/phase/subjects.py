"""What PHASE evaluates: GEN_HEAD and the archive's top-k intact PASS entries (by lineage score; an
entry whose weights retention pruned is no candidate), grouped by the SPICA domain each belongs to,
every domain built once."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from loop.archive.freeze import require_intact
from loop.archive.lineage import read_lineage
from loop.archive.paths import ModelPaths
from loop.archive.pruned import weights_pruned
from loop.domains import SpicaDomain, require_spica, resolve_domain
from loop.errors import ArchiveTampered, ConfigError
from loop.trainer.models import read_model_config


@dataclass
class Subject:
    """One model PHASE evaluates: an intact archive entry (GEN_HEAD or a top-k PASS entry)."""

    name: str
    folder: Path
    is_head: bool


def select_models(paths: ModelPaths, top_k: int, insights: list[str]) -> list[Subject]:
    """GEN_HEAD, then the k best intact PASS entries by lineage score; every entry that fails
    verification is skipped and said so in `insights`."""
    subjects: list[Subject] = []
    head = paths.head_name()   # a dangling link still names its entry, so verification reports it
    if head is not None:
        try:
            subjects.append(Subject(head, require_intact(paths, head), is_head=True))
        except ArchiveTampered as exc:
            insights.append(f"GEN_HEAD ({head}) failed archive verification and was skipped: {exc}")
    rows = sorted((r for r in read_lineage(paths.lineage) if r.status.strip() == "PASS" and r.name != head
                   and not weights_pruned(paths.entry(r.name))), key=lambda r: (-r.score, r.name))
    picked = 0
    for row in rows:
        if picked >= top_k:
            break
        try:
            subjects.append(Subject(row.name, require_intact(paths, row.name), is_head=False))
            picked += 1
        except ArchiveTampered as exc:
            insights.append(f"archive entry {row.name} failed verification and was skipped: {exc}")
    return subjects


@dataclass
class DomainGroup:
    """The models of one domain (same spec and arguments), and that domain built once."""

    label: str
    domain: SpicaDomain
    subjects: list[Subject] = field(default_factory=list)


def group_by_domain(subjects: list[Subject], insights: list[str]) -> list[DomainGroup]:
    """Group models by the domain in their config.json and build each domain once. A domain that
    is not a SpicaDomain raises DomainError: PHASE evaluates SPICA-derived instances only."""
    specs: dict[tuple[str, str], list[Subject]] = {}
    for subject in subjects:
        try:
            cfg = read_model_config(subject.folder)
        except ConfigError as exc:
            insights.append(f"{subject.name} is not a loadable model folder and was skipped: {exc}")
            continue
        specs.setdefault((cfg.domain, json.dumps(cfg.domain_args, sort_keys=True)), []).append(subject)
    built = [(resolve_domain(spec, json.loads(args)), spec, args, members)
             for (spec, args), members in specs.items()]
    names = [require_spica(domain).name for domain, *_ in built]
    groups = []
    for domain, spec, args, members in built:
        label = domain.name
        if names.count(label) > 1:   # the same task under different arguments: keep them apart
            label = f"{label}@{hashlib.sha256((spec + args).encode()).hexdigest()[:8]}"
        groups.append(DomainGroup(label, domain, members))
    return sorted(groups, key=lambda g: g.label)
