"""Print every ``rankalign`` command and its options as a Markdown table, by walking the click tree.

Usage: ``python scripts/cli_options_table.py [--hidden]``. Hidden options (deprecated aliases) are left
out unless ``--hidden`` is given; an option without help text is marked "(no help)". Used for the before/after table of the CLI conventions (docs/CLI.md).
"""

from __future__ import annotations

import sys

import click

from rankalign.cli import main


def walk(command: click.Command, ctx: click.Context, path: list[str]):
    """Yield ``(command path, command)`` for every leaf command below ``command``."""
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None:
                continue
            yield from walk(sub, click.Context(sub, info_name=name, parent=ctx), path + [name])
    else:
        yield " ".join(path), command


def describe(param: click.Parameter) -> str:
    """One option as it is spelled on the command line, e.g. ``-o/--output PATH`` or ``FILE`` (argument)."""
    if isinstance(param, click.Argument):
        return param.human_readable_name.upper()
    names = "/".join(sorted(param.opts, key=len)) + ("/" + "/".join(param.secondary_opts) if param.secondary_opts else "")
    if param.is_flag:
        return names
    kind = param.type
    if isinstance(kind, click.Choice):
        return f"{names} [{'|'.join(map(str, kind.choices))}]"
    return f"{names} {param.make_metavar(click.Context(click.Command('x'))) if hasattr(param, 'make_metavar') else ''}".strip()


def rows(include_hidden: bool = False):
    ctx = click.Context(main, info_name="rankalign")
    for path, command in walk(main, ctx, ["rankalign"]):
        params = [p for p in command.params if p.name != "help" and (include_hidden or not getattr(p, "hidden", False))]
        yield path, [describe(p) + ("" if isinstance(p, click.Argument) or p.help else " (no help)") for p in params]


def main_script(argv: list[str]) -> None:
    include_hidden = "--hidden" in argv
    print("| command | arguments and options |")
    print("| --- | --- |")
    for path, params in rows(include_hidden):
        print(f"| `{path}` | {', '.join(f'`{p}`' for p in params)} |")


if __name__ == "__main__":
    main_script(sys.argv[1:])
