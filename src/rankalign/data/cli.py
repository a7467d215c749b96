"""`rankalign data inspect` and `rankalign data convert`: thin commands over rankalign.data."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rankalign._cli import (
    data_options,
    json_option,
    output_option,
    refuse_overwriting_inputs,
    resolve_deprecated,
    wrote,
)
from rankalign._escape import for_terminal

from .errors import DataError
from .readers import iter_records, write
from .records import PAIR_STRATEGIES
from .summary import rank_by as rank_records
from .summary import summarize, to_lists, to_pairs
from .trl import TRL_TARGETS, to_trl, to_trl_kto, write_rows


@click.group()
def data():
    """Inspect, validate and convert preference data files."""


def _stream(path, layout, mapping, outcomes, skip_invalid, file_format, max_records=None, rank_by=None):
    stream = iter_records(path, layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                          format=file_format)
    records = rank_records(stream, rank_by)
    if max_records is not None:
        import itertools

        records = itertools.islice(records, max_records)
    return records, stream


def _fmt_percentiles(stats):
    if not stats:
        return "-"
    return (f"p5 {stats['p5']:.0f} / p50 {stats['p50']:.0f} / p95 {stats['p95']:.0f} / max {stats['max']:.0f}")


@data.command()
@click.argument("file", type=click.Path(exists=True))
@json_option
@data_options
def inspect(file, as_json, layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by):
    """Validate FILE and report what is in it: records, layout, list sizes, tie rate, annotators,
    prompt/response lengths (characters), empty responses, duplicates and problems found."""
    records, stream = _stream(file, layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by)
    summary = summarize(records, stream.report)
    summary["layout"] = stream.layout
    summary["file"] = str(file)
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=for_terminal(file), show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("layout", str(summary["layout"]))
    table.add_row("records", f"{summary['records']:,}  ({', '.join(f'{k} {v:,}' for k, v in summary['kinds'].items())})")
    skipped = summary["skipped"]
    table.add_row("skipped", f"{summary['skipped_total']:,}" + (f"  {skipped}" if skipped else ""))
    table.add_row("total weight", f"{summary['total_weight']:,.6g}")
    table.add_row("list sizes", ", ".join(f"K={k}: {v:,}" for k, v in summary["list_sizes"].items()) or "-")
    tie_rate = summary["tie_rate"]
    table.add_row("tie rate", "-" if tie_rate is None else f"{tie_rate:.3f} ({summary['lists_with_ties']:,} lists)")
    if summary["pair_outcomes"]:
        table.add_row("pair outcomes", ", ".join(f"{k.replace('_', ' ')} {v:,}"
                                                 for k, v in summary["pair_outcomes"].items()))
    if summary["items"] is not None:
        table.add_row("items", f"{summary['items']:,}")
    table.add_row("prompts", f"{summary['prompts']:,}")
    annotators = summary["annotators"]
    table.add_row("annotators", f"{annotators['distinct']:,} distinct, {annotators['records_without']:,} records "
                                f"without")
    table.add_row("prompt chars", _fmt_percentiles(summary["prompt_chars"]))
    table.add_row("response chars", _fmt_percentiles(summary["response_chars"]))
    table.add_row("empty responses", f"{summary['empty_responses']:,}")
    table.add_row("duplicates", f"{summary['duplicates']:,}")
    if summary["labels"]:
        table.add_row("labels", for_terminal(summary["labels"]))
    if summary["notes"]:
        table.add_row("notes", for_terminal(", ".join(f"{k} {v:,.6g}" for k, v in summary["notes"].items())))
    console = Console()
    console.print(table)
    for problem in summary["problems"]:
        console.print(f"[yellow]problem[/yellow] {for_terminal(problem)}", markup=True, highlight=False)


def _check_output_format(output, target: str) -> None:
    """A usage error, before anything is read, when OUTPUT's extension names no format ``target`` writes."""
    from . import _sources

    writable = ("jsonl", "json") if target in TRL_TARGETS else ("jsonl", "json", "csv", "parquet")
    suffix = Path(output).suffix or "(none)"
    try:
        fmt = _sources.detect_format(output)
    except DataError:
        fmt = None
    if fmt not in writable:
        what = "TRL rows" if target in TRL_TARGETS else "records"
        raise click.BadParameter(f"cannot write {what} to {output} (extension {suffix}); name the output "
                                 f"{' or '.join('.' + f for f in writable)}", param_hint="-o/--output")


@data.command()
@click.argument("in_file", metavar="IN", type=click.Path(exists=True))
@click.argument("legacy_out", metavar="[OUT]", required=False, type=click.Path(dir_okay=False))
@output_option("the converted file (JSONL/JSON/CSV/Parquet by extension; trl targets: JSONL/JSON)")
@click.option("--to", "target", type=click.Choice(["pairs", "lists", *TRL_TARGETS]), required=True,
              help="pairs: decompose every list; lists: merge the pairs of a prompt where lossless; "
                   "trl: TRL preference rows prompt/chosen/rejected (conversational when the input was); "
                   "trl-kto: TRL unpaired rows prompt/completion/label.")
@click.option("--strategy", type=click.Choice(PAIR_STRATEGIES), default="all", show_default=True,
              help="Pair decomposition of lists for --to pairs and --to trl.")
@json_option
@data_options
def convert(in_file, legacy_out, output, target, strategy, as_json, layout, mapping, outcomes, skip_invalid,
            file_format, max_records, rank_by):
    """Convert IN to native records (or TRL rows) in -o/--output, written atomically.

    The report counts everything expanded, merged or dropped (by reason); conflicting judgments of the same
    pair are kept as separate weighted records, never merged. A positional OUT still works (deprecated)."""
    output = resolve_deprecated(output, legacy_out, new="-o/--output", old="the positional OUT")
    if output is None:
        raise click.UsageError("give the output file with -o/--output PATH")
    refuse_overwriting_inputs(in_file, output)
    _check_output_format(output, target)
    records, stream = _stream(in_file, layout, mapping, outcomes, skip_invalid, file_format, max_records, rank_by)
    if target == "pairs":
        converted, report = to_pairs(records, strategy)
    elif target == "lists":
        converted, report = to_lists(records)
    elif target == "trl":
        converted, report = to_trl(records, strategy)
    else:
        converted, report = to_trl_kto(records)
    if not converted:  # an empty output file would look like a successful conversion
        dropped = ", ".join(f"{k} {v}" for k, v in (report.get("dropped") or {}).items()) or "none"
        raise DataError(f"nothing to write: no record converts to {target} (dropped: {dropped}); {output} was "
                        "not written", path=in_file, reason="empty",
                        hint="trl targets need a prompt on every record" if target in TRL_TARGETS else None)
    written = (write_rows if target in TRL_TARGETS else write)(converted, output)
    report["read"] = stream.report.to_dict()
    report["written"] = written
    report["output"] = str(output)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        dropped = report.get("dropped") or {}
        click.echo(f"read {report['read'].get('records', report.get('input_records'))} records from {in_file}; "
                   f"{written} {'rows' if target in TRL_TARGETS else 'records'} as {target}; dropped: "
                   f"{', '.join(f'{k} {v}' for k, v in dropped.items()) or 'none'}", err=True)
    wrote(output, f"{written} {target} {'rows' if target in TRL_TARGETS else 'records'}")
