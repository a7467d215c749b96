"""The command-line conventions of every ``rankalign`` command, in one place (see docs/CLI.md).

Each subpackage's ``cli`` module builds its options from these decorators so that one idea has one
spelling, one help text and one set of choices everywhere:

* data read from a file: ``--layout`` (the same choices everywhere), ``--map``, ``--outcomes``,
  ``--skip-invalid``, ``--max-records``, ``--format``;
* models read from disk: ``--device``;
* the main output: ``-o/--output PATH``; every file written is named on stderr (:func:`wrote`);
* reports: ``--json`` prints one JSON object to stdout instead of a table;
* truncation: ``--max-prompt-tokens`` (cut from the left) and ``--max-response-tokens`` (cut from the
  right), in tokens;
* numbers: :class:`FiniteFloat` (a ``click.FloatRange`` that also refuses ``nan`` and ``inf``);
* a renamed option keeps its old spelling as a hidden alias that still works and warns
  (:func:`deprecated_option`, :func:`resolve_deprecated`).

Importing this module needs only click (no torch).
"""

from __future__ import annotations

import math

import click

from rankalign.data.layouts import LAYOUTS

FORMATS = ("jsonl", "json", "csv", "parquet", "preflib", "dataset_dir")


class FiniteFloat(click.FloatRange):
    """A float option within an optional range that must also be finite: ``click.FloatRange`` alone lets
    ``nan`` through every bound (no comparison with NaN is true) and ``inf`` through an open upper end."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number

    def _describe_range(self) -> str:
        """``--help``'s range: click would print ``x<=None`` for an unbounded one."""
        if self.min is None and self.max is None:
            return "finite"
        return super()._describe_range()


def layout_option(f):
    return click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                        help="Layout of the file (detected from the columns when omitted).")(f)


def map_option(f):
    return click.option("--map", "mapping", default=None, metavar="OURS=THEIRS,...",
                        help="Rename the file's columns, e.g. item_a=home,item_b=away,outcome=result.")(f)


def outcomes_option(f):
    return click.option("--outcomes", default=None, metavar="LABEL=a|b|tie,...",
                        help="Relabel outcome values, e.g. 1=a,0=tie,-1=b.")(f)


def skip_invalid_option(f):
    return click.option("--skip-invalid", is_flag=True,
                        help="Skip bad rows and count them by reason instead of stopping at the first.")(f)


def format_option(f):
    return click.option("--format", "file_format", default=None, type=click.Choice(FORMATS),
                        help="File format (from the extension when omitted; a folder is a saved "
                             "datasets.Dataset).")(f)


def max_records_option(f):
    return click.option("--max-records", type=click.IntRange(min=1), default=None,
                        help="Use only the first N records of the file.")(f)


def rank_by_option(f):
    return click.option("--rank-by", default=None, metavar="ATTRIBUTE",
                        help="Rated lists (UltraFeedback-style): rank on this attribute (e.g. helpfulness) or "
                             "per-completion field (e.g. overall_score) instead of the mean of the attributes.")(f)


def data_options(f):
    """``--layout --map --outcomes --skip-invalid --format --max-records --rank-by``: how a data file is read."""
    for decorator in (rank_by_option, max_records_option, format_option, skip_invalid_option, outcomes_option, map_option,
                      layout_option):
        f = decorator(f)
    return f


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        help="Where models run: cpu, cuda, cuda:1, ... or auto (a GPU when there is one).")(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON object to stdout instead of a table.")(f)


def truncation_options(f):
    f = click.option("--max-response-tokens", type=click.IntRange(min=1), default=None,
                     help="Cut every response from the right to this many tokens.")(f)
    return click.option("--max-prompt-tokens", type=click.IntRange(min=1), default=None,
                        help="Cut every prompt from the left to this many tokens (a leading BOS is kept).")(f)


def output_option(what: str, *, required: bool = False, file: bool = True, default=None, show_default=False):
    """``-o/--output PATH``: where the command writes its main output (``what`` says what it is)."""
    kind = click.Path(dir_okay=not file, file_okay=file)
    return click.option("-o", "--output", "output", type=kind, required=required, default=default,
                        show_default=show_default, help=f"Write {what} here.")


def deprecated_option(old: str, dest: str, new: str, **kwargs):
    """A hidden option ``old`` kept for scripts written before it became ``new``; its value arrives as
    ``dest`` and :func:`resolve_deprecated` merges it (with a warning)."""
    return click.option(old, dest, hidden=True, default=None, help=f"Deprecated spelling of {new}.", **kwargs)


def resolve_deprecated(new_value, old_value, *, new: str, old: str, new_default=None):
    """The value of option ``new`` given either spelling; warns on stderr when the old one is used and
    refuses both at once."""
    if old_value is None or old_value == () or old_value is False:
        return new_value
    if new_value is not None and new_value != new_default:
        raise click.UsageError(f"{old} is the old spelling of {new}: give one of them")
    click.echo(f"warning: {old} is deprecated, use {new}", err=True)
    return old_value


def refuse_overwriting_inputs(source, *outputs, models=()) -> None:
    """A usage error when an output path names the input file ``source`` (it would be replaced, atomically
    but replaced, before anyone sees the result), when two outputs name the same file (the second would
    replace the first), or when an output path is empty. Outputs that are None were not given.

    ``models`` are the other inputs a command reads (model folders, a run folder, a ``.gguf`` file; None and
    names that are not paths are ignored): an output may be a new file inside such a folder, but never one
    of its existing files (``-o RUN/run_source.json`` or ``--plot MODEL/model.safetensors`` would destroy
    the model or the run record)."""
    import os

    given = [output for output in outputs if output is not None]
    if any(not str(output).strip() for output in given):
        raise click.UsageError("an output path is empty")
    seen = {}
    for output in given:
        key = os.path.realpath(output)
        if key in seen:
            raise click.UsageError(f"two outputs name the same file ({seen[key]} and {output}); the second "
                                   "would replace the first")
        seen[key] = output
    if source is not None and os.path.isfile(source):
        for output in given:
            if os.path.exists(output) and os.path.samefile(output, source):
                raise click.UsageError(f"the output {output} is the input file {source}; write it elsewhere")
    for model in models:
        if model is None or not os.path.exists(str(model)):
            continue
        root = os.path.realpath(str(model))
        for output in outputs:
            if output is None or not str(output).strip() or not os.path.exists(output):
                continue
            target = os.path.realpath(output)
            inside = os.path.isdir(root) and os.path.commonpath([root, target]) == root
            if inside or target == root:
                raise click.UsageError(f"the output {output} is a file of the input {model} (a model or run "
                                       "folder); writing it would destroy that input: write elsewhere")


def wrote(path, what: str) -> None:
    """Say on stderr where a file was written (every command that writes a file does)."""
    click.echo(f"wrote {what}: {path}", err=True)


def check_help_everywhere(command: click.Command) -> list[str]:
    """Options of ``command`` (and its subcommands) without help text, as ``"command --option"``."""
    missing = []

    def visit(cmd, path):
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                visit(cmd.get_command(ctx, name), f"{path} {name}")
            return
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help and param.name != "help":
                missing.append(f"{path} {param.opts[-1]}")

    visit(command, "rankalign")
    return missing
