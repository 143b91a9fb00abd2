"""What auto-repair may install or clone: exact package pins (a name an index serves later, a
typosquat or a hijacked release, cannot come in through a config entry) and allowlisted clones."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import field_validator

from loop.config.load import StrictModel


class CloneSpec(StrictModel):
    repo: str                # must start with an auto_repair_clone_allowlist prefix
    # Auto-repair checks out only a full 40-hex commit sha; a branch or tag (the default "main"
    # included) still loads, so old configs keep working, but the clone is refused at repair time.
    ref: str = "main"
    subdir: str = ""
    editable: bool = True


# ------------------------------------------------------------ package pins ----
# What auto-repair may pip-install: an exact pin, never a bare name or a range, so a name an index
# serves later (a typosquat, a hijacked release) cannot come in through a config entry.

_PKG_NAME_RE = re.compile(r"^([A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9])$")       # PEP 508 name
_VERSION_RE = re.compile(r"^(\d+!)?\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?"
                         r"(\+[a-z0-9]+(\.[a-z0-9]+)*)?$", re.IGNORECASE)                  # PEP 440, no wildcard
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PIN_HELP = ("write 'name==1.2.3', a mapping {package: name, version: 1.2.3, sha256: <optional hex>}, "
             "or an absolute path to an existing local directory or .whl file")


class PackagePin(StrictModel):
    """One exactly pinned distribution; with `sha256`, pip installs it in --require-hashes mode."""

    package: str
    version: str
    sha256: str | None = None

    @field_validator("package")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _PKG_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a package name")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: Any) -> str:
        v = str(v).strip()
        if v.startswith("=="):
            v = v[2:].strip()
        if not _VERSION_RE.match(v):
            raise ValueError(f"{v!r} is not an exact version (a full PEP 440 version such as 1.2.3)")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip().lower().removeprefix("sha256:")
        if not _SHA256_RE.match(v):
            raise ValueError(f"sha256 {v!r} is not 64 hex digits")
        return v

    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


def check_package_pin(value: PackagePin | str) -> PackagePin | Path:
    """A pin string/mapping as a PackagePin, or the local path it names; ValueError if not pinned."""
    if isinstance(value, PackagePin):
        return value
    text = str(value).strip()
    if text.startswith("/"):
        path = Path(text)
        if path.is_dir() or (path.is_file() and path.suffix == ".whl"):
            return path
        raise ValueError(f"local path {text!r} is not an existing directory or .whl file; {_PIN_HELP}")
    name, sep, version = text.partition("==")
    if not sep or "=" in version or not _PKG_NAME_RE.match(name.strip()) or not _VERSION_RE.match(version.strip()):
        raise ValueError(f"{text!r} is not pinned; {_PIN_HELP}")
    return PackagePin(package=name.strip(), version=version.strip())


def _check_pin_map(key: str, value: dict[str, PackagePin | str]) -> dict[str, PackagePin | str]:
    for name, pin in value.items():
        try:
            check_package_pin(pin)
        except ValueError as exc:
            raise ValueError(f"{key}[{name!r}]: {exc}") from None
    return value


