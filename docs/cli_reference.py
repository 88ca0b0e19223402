"""Render docs/reference.md from the click command tree and docs/examples.toml.

Run by cog (`cog -r -I docs docs/reference.md`); tests/unit/test_docs.py checks that the
page is current, that every command has help, and that every command has an example.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import click

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

DOCS = Path(__file__).resolve().parent
# The page describes this checkout, whichever nbremote the environment has installed.
sys.path.insert(0, str(DOCS.parent / "src"))

from nbremote.cli import cli  # noqa: E402

EXAMPLES = DOCS / "examples.toml"
WIDTH = 80  # fixed, so the page does not depend on the terminal it is made in


def walk(
    command: click.Command = cli, parent: click.Context | None = None, name: str = "nbremote"
) -> Iterator[tuple[str, click.Command, click.Context]]:
    """Every visible command, depth first: ("server init", command, its context); the root is ""."""
    ctx = command.make_context(
        name, [], parent=parent, resilient_parsing=True, terminal_width=WIDTH, max_content_width=WIDTH
    )
    path = " ".join(ctx.command_path.split()[1:])
    yield path, command, ctx
    if isinstance(command, click.Group):
        for sub in command.list_commands(ctx):
            child = command.get_command(ctx, sub)
            if child is not None and not child.hidden:
                yield from walk(child, ctx, sub)


def examples() -> dict[str, dict[str, str]]:
    """docs/examples.toml: command path -> {command line: what it does}."""
    with EXAMPLES.open("rb") as handle:
        return tomllib.load(handle)


def anchor(path: str) -> str:
    return "-".join(["nbremote", *path.split()])


def render() -> str:
    known = examples()
    commands = list(walk())
    lines = ["| command | what it does |", "|---|---|"]
    for path, command, _ in commands:
        title = f"nbremote {path}".strip()
        summary = command.get_short_help_str(200).replace("|", "\\|")  # a bare | would end the cell
        lines.append(f"| [`{title}`](#{anchor(path)}) | {summary} |")
    for path, command, ctx in commands:
        title = f"nbremote {path}".strip()
        lines += ["", f"## {title}", "", "```text", command.get_help(ctx).rstrip(), "```", ""]
        lines.append("Examples:" if len(known.get(path, {})) > 1 else "Example:")
        lines.append("")
        for line, what in known.get(path, {}).items():
            lines.append(f"- `{line}`: {what}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
