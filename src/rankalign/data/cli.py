"""`rankalign data inspect` and `rankalign data convert`: thin commands over rankalign.data."""

from __future__ import annotations

import json
import sys

import click

from rankalign._escape import for_terminal

from .layouts import LAYOUTS
from .readers import iter_records, write
from .records import PAIR_STRATEGIES
from .summary import summarize, to_lists, to_pairs

_layout_option = click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                              help="Layout of the file (detected from the columns when omitted).")
_map_option = click.option("--map", "mapping", default=None, metavar="OURS=THEIRS,...",
                           help="Rename the file's columns, e.g. item_a=home,item_b=away,outcome=result.")
_outcomes_option = click.option("--outcomes", default=None, metavar="LABEL=a|b|tie,...",
                                help="Relabel outcome values, e.g. 1=a,0=tie,-1=b.")
_skip_option = click.option("--skip-invalid", is_flag=True,
                            help="Skip bad rows and count them by reason instead of stopping at the first.")
_format_option = click.option("--format", "file_format", default=None,
                              type=click.Choice(["jsonl", "json", "csv", "parquet", "preflib", "dataset_dir"]),
                              help="File format (from the extension when omitted; a folder is a saved "
                                   "datasets.Dataset).")


@click.group()
def data():
    """Inspect, validate and convert preference data files."""


def _stream(path, layout, mapping, outcomes, skip_invalid, file_format):
    return iter_records(path, layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                        format=file_format)


def _fmt_percentiles(stats):
    if not stats:
        return "-"
    return (f"p5 {stats['p5']:.0f} / p50 {stats['p50']:.0f} / p95 {stats['p95']:.0f} / max {stats['max']:.0f}")


@data.command()
@click.argument("file", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@_layout_option
@_map_option
@_outcomes_option
@_skip_option
@_format_option
def inspect(file, as_json, layout, mapping, outcomes, skip_invalid, file_format):
    """Validate FILE and report what is in it: records, layout, list sizes, tie rate, annotators,
    prompt/response lengths (characters), duplicates and problems found."""
    stream = _stream(file, layout, mapping, outcomes, skip_invalid, file_format)
    summary = summarize(stream, stream.report)
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
    table.add_row("duplicates", f"{summary['duplicates']:,}")
    if summary["labels"]:
        table.add_row("labels", for_terminal(summary["labels"]))
    if summary["notes"]:
        table.add_row("notes", for_terminal(", ".join(f"{k} {v:,.6g}" for k, v in summary["notes"].items())))
    console = Console()
    console.print(table)
    for problem in summary["problems"]:
        console.print(f"[yellow]problem[/yellow] {for_terminal(problem)}", markup=True, highlight=False)


@data.command()
@click.argument("in_file", metavar="IN", type=click.Path(exists=True))
@click.argument("out_file", metavar="OUT", type=click.Path(dir_okay=False))
@click.option("--to", "target", type=click.Choice(["pairs", "lists"]), required=True,
              help="pairs: decompose every list; lists: merge the pairs of a prompt where lossless.")
@click.option("--strategy", type=click.Choice(PAIR_STRATEGIES), default="all", show_default=True,
              help="Pair decomposition for --to pairs.")
@_layout_option
@_map_option
@_outcomes_option
@_skip_option
@_format_option
def convert(in_file, out_file, target, strategy, layout, mapping, outcomes, skip_invalid, file_format):
    """Convert IN to native records in OUT (JSONL/JSON/CSV/Parquet by extension), written atomically.

    The report (to stderr) counts everything expanded, merged or dropped; conflicting judgments of the same
    pair are kept as separate weighted records, never merged."""
    stream = _stream(in_file, layout, mapping, outcomes, skip_invalid, file_format)
    if target == "pairs":
        records, report = to_pairs(stream, strategy)
    else:
        records, report = to_lists(stream)
    written = write(records, out_file)
    report["read"] = stream.report.to_dict()
    report["written"] = written
    report["out"] = str(out_file)
    click.echo(json.dumps(report, ensure_ascii=False), file=sys.stderr)
