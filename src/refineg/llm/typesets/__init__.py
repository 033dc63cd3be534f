"""Type descriptions: a small TOML format mapping each entity type to a definition, examples and exclusions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tomllib

from ...errors import ConfigError

BUILTIN = {"twitter": "twitter.toml", "ccks": "ccks_military.toml"}


@dataclass(frozen=True)
class TypeInfo:
    """One entity type's description."""

    name: str
    definition: str
    examples: tuple[str, ...]
    exclude: str


@dataclass(frozen=True)
class TypeSet:
    """The entity types of one domain."""

    name: str
    domain: str
    types: tuple[TypeInfo, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The type names, in file order."""
        return tuple(t.name for t in self.types)

    def describe(self) -> str:
        """The types as prompt text."""
        lines = []
        for t in self.types:
            lines.append(f"- {t.name}: {t.definition} Examples: {', '.join(t.examples)}. Not this type: {t.exclude}")
        return "\n".join(lines)


def load_typeset(name_or_path: str | Path = "twitter") -> TypeSet:
    """A built-in type set (``twitter``, ``ccks``) or one from a TOML file."""
    path = Path(__file__).parent / BUILTIN[name_or_path] if name_or_path in BUILTIN else Path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read type descriptions: {exc}") from None
    try:
        types = tuple(
            TypeInfo(name, d["definition"], tuple(d.get("examples", ())), d.get("exclude", ""))
            for name, d in raw["types"].items()
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: each [types.NAME] needs a definition ({exc})") from None
    if not types:
        raise ConfigError(f"{path}: no [types.NAME] tables")
    return TypeSet(raw.get("name", path.stem), raw.get("domain", ""), types)
