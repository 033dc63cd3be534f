"""MkDocs hook: the CLI and config reference pages, generated from the code at every build."""

from __future__ import annotations

import json
from pathlib import Path

import click
import typer

from refineg.cli import app
from refineg.config import RunConfig

DOCS = Path(__file__).resolve().parents[1]


def _default(value) -> str:
    if value is None or value == () or isinstance(value, click.core.ParameterSource):
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return f"`{value}`"


def cli_page() -> str:
    """Every command with its arguments and options, from the typer app itself."""
    group = typer.main.get_command(app)
    lines = [
        "# CLI reference",
        "",
        "Generated from `refineg --help` at every build of these pages. Every command "
        "also takes `--debug` (a traceback instead of the one-line error).",
        "",
    ]
    for name, cmd in group.commands.items():
        lines += [f"## refineg {name}", "", (cmd.help or "").strip(), ""]
        rows = []
        for p in cmd.params:
            if p.name == "help":
                continue
            if isinstance(p, click.Argument):
                rows.append((p.human_readable_name, getattr(p, "help", "") or "", "required"))
            else:
                flag = " / ".join(p.opts) + (" (repeatable)" if getattr(p, "multiple", False) else "")
                needed = "required" if p.required else _default(None if p.is_flag and p.default is False else p.default)
                rows.append((flag, p.help or "", needed))
        lines += ["| argument or option | what it is | default |", "|---|---|---|"]
        lines += [f"| `{a}` | {h.replace('|', '/')} | {d} |" for a, h, d in rows]
        lines.append("")
    return "\n".join(lines)


def config_page() -> str:
    """Every config section and key with its type, default and description, from the pydantic models."""
    lines = [
        "# Config reference",
        "",
        "Generated from `refineg.config` at every build of these pages. A TOML file "
        "given with `--config` sets any of these; command-line options override it. Paths are taken as "
        "written (relative to the working folder).",
        "",
    ]
    for section, field in RunConfig.model_fields.items():
        model = field.annotation
        lines += [
            f"## [{section}]",
            "",
            (model.__doc__ or "").strip(),
            "",
            "| key | type | default | what it is |",
            "|---|---|---|---|",
        ]
        for key, f in model.model_fields.items():
            default = f.default_factory() if f.default_factory is not None else f.default
            shown = f"`{json.dumps(default, default=str)}`" if default is not None else ""
            kind = getattr(f.annotation, "__name__", None) or str(f.annotation)
            kind = kind.replace("typing.", "").replace("pathlib.", "").replace("|", "or")
            lines.append(f"| `{key}` | {kind} | {shown} | {(f.description or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def on_pre_build(config, **kwargs) -> None:
    """Write the generated pages before MkDocs reads the docs folder."""
    (DOCS / "reference").mkdir(exist_ok=True)
    (DOCS / "reference" / "cli.md").write_text(cli_page(), encoding="utf-8")
    (DOCS / "reference" / "config.md").write_text(config_page(), encoding="utf-8")
