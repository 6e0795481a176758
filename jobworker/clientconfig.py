"""Where C{jw} gets its settings: flags, environment, config file, defaults."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field

DEFAULT_SERVER = "https://localhost:8443"
#: The development CA shipped in the source tree (certs/ca.pem).
DEV_CA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "certs", "ca.pem"
)

#: Keys a config file may hold, and the environment variable of each.
KEYS = {"server": "JW_SERVER", "ca": "JW_CA", "user": "JW_USER"}


class ConfigError(Exception):
    """The config file cannot be used; the message says why."""


def configPath(environ: dict[str, str]) -> str:
    """C{$XDG_CONFIG_HOME/jobworker/config.toml}, else C{~/.config/...}."""
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "jobworker", "config.toml")


def readConfig(path: str) -> dict[str, str]:
    """
    The settings in a config file (none if it does not exist).

    @raise ConfigError: unreadable, not TOML, unknown keys or non-string values.
    """
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)} "
            f"(known: {', '.join(KEYS)})"
        )
    for key, value in values.items():
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key} must be a non-empty string")
    if "ca" in values:
        values["ca"] = os.path.join(
            os.path.dirname(path), os.path.expanduser(values["ca"])
        )
    return values


@dataclass
class Settings:
    """The settings in force, and where each one came from."""

    server: str = DEFAULT_SERVER
    ca: str = DEV_CA
    user: str | None = None
    origins: dict[str, str] = field(default_factory=dict)


def resolve(
    flags: dict[str, str | None], environ: dict[str, str], path: str
) -> Settings:
    """Flags override the environment, which overrides the file and defaults."""
    fileValues = readConfig(path)
    settings = Settings(
        origins={"server": "default", "ca": "default", "user": "prompt"}
    )
    for key, variable in KEYS.items():
        for value, origin in (
            (flags.get(key), f"--{key}"),
            (environ.get(variable), variable),
            (fileValues.get(key), path),
        ):
            if value:
                setattr(settings, key, value)
                settings.origins[key] = origin
                break
    return settings
