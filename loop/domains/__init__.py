"""Task domains. Every task derives SpicaDomain; anything else is refused (`resolve_domain`)."""
from __future__ import annotations

import importlib
from typing import Any

from loop.domains.base import SPLIT_NAMES, DomainSplits, SampleSet, SpicaDomain
from loop.domains.csv_labels import CsvLabelsDomain
from loop.domains.digits import DigitsDomain
from loop.domains.image_folder import ImageFolderDomain
from loop.domains.shapes import ShapesDomain
from loop.errors import DomainError

DOMAINS: dict[str, type[SpicaDomain]] = {d.name: d for d in (DigitsDomain, ImageFolderDomain, CsvLabelsDomain,
                                                                ShapesDomain)}

__all__ = ["DOMAINS", "SPLIT_NAMES", "DomainSplits", "SampleSet", "SpicaDomain", "require_spica",
           "resolve_domain"]


def require_spica(obj: Any) -> SpicaDomain:
    """Return `obj` if it is a SpicaDomain instance; refuse anything else."""
    if not isinstance(obj, SpicaDomain):
        raise DomainError(f"{type(obj).__module__}.{type(obj).__qualname__} is not a SpicaDomain; "
                          "every task must derive loop.domains.SpicaDomain")
    return obj


def resolve_domain(spec: str, args: dict[str, Any] | None = None) -> SpicaDomain:
    """Build a domain from a registered name or a `package.module:Class` path."""
    args = dict(args or {})
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
