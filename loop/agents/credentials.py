"""API keys: from the role's environment variable, else the 0600 credentials file `llmloop login` writes."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loop.config import LLMRole
from loop.errors import ConfigError
from loop.util.fsutil import atomic_write_text


def resolve_api_key(role: LLMRole, credentials_file: str | Path) -> str | None:
    """The key from `role.api_key_env` in the environment, else from the credentials file."""
    from_env = os.environ.get(role.api_key_env, "").strip()
    if from_env:
        return from_env
    try:
        data = json.loads(Path(credentials_file).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get(role.api_key_env) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


def write_credentials(path: str | Path, env_name: str, api_key: str) -> None:
    """Merge `env_name: api_key` into the JSON credentials file, written atomically with mode 0600."""
    path = Path(path).expanduser()
    data = _read_credentials(path)
    data[env_name] = api_key
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
        os.chmod(path.parent, 0o700)      # mkdir's mode is filtered by the umask
    atomic_write_text(path, json.dumps(data, indent=2) + "\n", mode=0o600)


def _read_credentials(path: Path) -> dict[str, Any]:
    """The existing file's mapping ({} when absent); a corrupt one is refused, not overwritten."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the credentials file ({type(exc).__name__}); "
                          "fix or delete it, then log in again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the credentials file must hold a JSON object")
    return data
