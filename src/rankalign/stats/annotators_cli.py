"""Annotator-aware commands: ``rankalign rate FILE --by-annotator``, ``--weight-by-reliability``, and
``rankalign annotators FILE`` (the annotator quality report).

Both read records with :func:`rankalign.data.read` (every layout whose rows carry an ``annotator``, e.g.
``winner,loser,annotator`` CSV, arena battles with a ``judge``, ranked lists), so that each judgment keeps
its annotator; the models are in :mod:`rankalign.stats.annotators`.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import click
import numpy as np

from rankalign import _json as strict_json
from rankalign._atomic import atomic_write
from rankalign._cli import (
    FiniteFloat,
    json_option,
    layout_option,
    map_option,
    outcomes_option,
    refuse_overwriting_inputs,
    skip_invalid_option,
)
from rankalign._escape import for_csv, for_terminal
from rankalign.data.errors import DataError

from . import annotators as A
from .cli import MAX_PRIOR


def _read_annotated(path, layout, mapping, outcomes, skip_invalid):
    """Records of ``path`` -> (AnnotatedRankings, ReadReport).

    Two-item comparisons with an ``annotator`` column take the columnar reader
    (:func:`rankalign.data.read_comparisons`, arrays, no object per row); everything else (rankings, an
    annotator under another name such as an arena's ``judge``, missing ids to report) the record reader.
    """
    from rankalign.data import detect_format, read, read_comparisons

    from .cli import _line_of_row

    if detect_format(path) != "preflib" and layout not in ("rankedlist_lists", "lists"):
        try:
            pairs = read_comparisons(path, layout=layout, mapping=mapping, outcomes=outcomes,
                                     skip_invalid=skip_invalid, keep=("annotator",))
        except DataError as error:
            if error.reason not in ("unknown_layout", "not_a_pair", "missing_field"):
                raise
        else:
            owners = pairs.extra["annotator"]
            if owners.dtype.kind in "fiu":
                owners = np.array([repr(v) if not float(v).is_integer() else str(int(v)) for v in owners.tolist()],
                                  dtype=object) if not np.isnan(owners).any() else None
            if owners is not None and all(isinstance(o, str) and o for o in owners.tolist()):
                return _from_comparisons(pairs, owners, path), pairs.report
    result = read(path, layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid)
    records, lines = result.records, [_line_of_row(path, i) for i in range(len(result.records))]
    if skip_invalid:  # a record without an annotator is invalid here: skipped and counted like any other
        kept = []
        for record, line in zip(records, lines):
            if getattr(record, "annotator", True) is None:
                result.report.skip(DataError("the record has no annotator id", path=path, line=line,
                                             field="annotator", reason="missing_annotator"))
                result.report.records -= 1
            else:
                kept.append((record, line))
        records, lines = [r for r, _ in kept], [line for _, line in kept]
    return A.annotated_rankings(records, path=path, lines=lines), result.report


def _from_comparisons(pairs, owners, path):
    """AnnotatedRankings from columnar comparisons (a pair is a ranking of two, a tie one level of two)."""
    from .cli import _line_of_row

    names, owner = np.unique(np.asarray(owners, dtype=str), return_inverse=True)
    first, second, outcome = pairs.first.tolist(), pairs.second.tolist(), pairs.outcome.tolist()
    rankings = [[a, b] if o == 1.0 else [b, a] if o == 0.0 else [[a, b]] for a, b, o in zip(first, second, outcome)]
    return A.AnnotatedRankings(items=list(pairs.items), annotators=[str(n) for n in names], rankings=rankings,
                               annotator=owner.ravel().astype(np.int64), weight=np.asarray(pairs.count, dtype=np.float64),
                               lines=[_line_of_row(path, i) for i in range(len(rankings))])


def reliability_weighted_rankings(path, layout, mapping, outcomes, skip_invalid, model="bradley-terry", prior=None):
    """The ``rankings`` data of ``rankalign rate`` with each judgment's weight multiplied by its annotator's
    reliability weight ``(1 - 2 eps_u)^2`` (:func:`rankalign.stats.annotators.fit_annotator_reliability`)."""
    data, report = _read_annotated(path, layout, mapping, outcomes, skip_invalid)
    reliability = A.fit_annotator_reliability(data, model=model, prior=A.DEFAULT_PRIOR if prior is None else prior,
                                              path=path)
    weights = data.weight * reliability.weights[data.annotator]
    return data.items, data.rankings, weights, data.lines, report


def _group_label(g):
    return f"group {g}"


def rate_by_annotator(file, *, model, groups, restarts, reference, prior, scale, as_json, csv_path, plot_path, level,
                      layout, mapping, outcomes, skip_invalid, seed):
    """``rankalign rate FILE --by-annotator --groups auto|N``."""
    from .cli import _print_table, write_csv, write_plot

    if model not in ("bradley-terry", "plackett-luce"):
        raise click.UsageError("--by-annotator fits mixtures of bt or pl models")
    prior = prior if prior > 0 else A.DEFAULT_PRIOR
    try:
        data, report = _read_annotated(file, layout, mapping, outcomes, skip_invalid)
        common = dict(model=model, restarts=restarts, prior=prior, seed=seed, reference=reference, ci_level=level)
        if groups == "auto":
            mixture = A.choose_groups(data, **common)
        elif int(groups) > len(data.annotators):
            raise click.BadParameter(f"{groups} groups for the {len(data.annotators)} annotator(s) of {file}",
                                     param_hint="--groups")
        else:
            mixture = A.fit_annotator_mixture(data, int(groups), **common)
        pooled = mixture if len(mixture.groups) == 1 else A.fit_annotator_mixture(data, 1, **common)
    except DataError as error:
        raise (error if error.path is not None else error.at(file)) from None
    pooled_result = pooled.groups[0].to_scale(scale)
    group_results = [g.to_scale(scale) for g in mixture.groups]
    counts = np.bincount(mixture.assignment, minlength=len(group_results))
    if csv_path:
        stem = Path(csv_path)
        for g, result in enumerate(group_results):
            write_csv(result, stem.with_name(f"{stem.stem}-group{g}{stem.suffix or '.csv'}"))
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["annotator", "group", "responsibility"])
        for row in mixture.annotator_rows():
            writer.writerow([for_csv(str(row["annotator"])), row["group"], repr(row["responsibility"])])
        atomic_write(stem.with_name(f"{stem.stem}-annotators.csv"),
                     lambda stream: stream.write(buffer.getvalue().encode("utf-8")), binary=True)
    if plot_path:
        stem = Path(plot_path)
        for g, result in enumerate(group_results):
            write_plot(result, stem.with_name(f"{stem.stem}-group{g}{stem.suffix or '.png'}"),
                       title=f"{Path(file).name}: {_group_label(g)} ({counts[g]} annotators)")
    if as_json:
        out = pooled_result.to_dict()
        out["n_groups"] = len(group_results)
        out["selection"] = mixture.selection or {"criterion": "fixed", "bic": {len(group_results): mixture.bic}}
        out["mixture_log_likelihood"] = mixture.log_likelihood
        out["groups"] = [{"group": g, "proportion": float(mixture.proportions[g]), "n_annotators": int(counts[g]),
                          "log_likelihood": result.log_likelihood, "items": result.to_dict()["items"]}
                         for g, result in enumerate(group_results)]
        out["annotators"] = mixture.annotator_rows()
        out["selection"]["bic"] = {str(k): v for k, v in out["selection"]["bic"].items()}
        sys.stdout.write(strict_json.dumps(out) + "\n")
        return
    notes = [f"skipped {report.n_skipped} invalid rows: {dict(report.skipped)}"] if report.n_skipped else []
    selection = mixture.selection.get("bic") if mixture.selection else None
    chosen = (f"{len(group_results)} groups chosen by BIC ("
              + ", ".join(f"G={k}: {v:.1f}" for k, v in selection.items()) + ")") if selection else \
        f"{len(group_results)} groups (fixed), BIC {mixture.bic:.1f}"
    click.echo(f"{len(data.annotators)} annotators, {len(data)} judgments, {len(data.items)} items; "
               f"mixture of {mixture.model} models, {chosen}; log-likelihood {mixture.log_likelihood:.3f}")
    click.echo(f"pooled fit (one group, for comparison): ratings from {pooled_result.ratings.min():.3f} to "
               f"{pooled_result.ratings.max():.3f}, log-likelihood {pooled_result.log_likelihood:.3f}")
    for g, result in enumerate(group_results):
        click.echo(f"\n{_group_label(g)}: {counts[g]} annotators, proportion {mixture.proportions[g]:.3f}")
        _print_table(result, [])
    from rich.console import Console
    from rich.table import Table

    table = Table(title="annotators (most probable group and its responsibility)")
    for column in ("annotator", "group", "responsibility"):
        table.add_column(column, justify="left" if column == "annotator" else "right")
    for row in sorted(mixture.annotator_rows(), key=lambda r: (r["group"], r["annotator"])):
        table.add_row(for_terminal(row["annotator"]), str(row["group"]), f"{row['responsibility']:.3f}")
    Console().print(table)
    for note in notes:
        click.echo(note, err=True)


# ------------------------------------------------------------------------------------ annotators report
def annotator_report(data, *, model="bradley-terry", prior=A.DEFAULT_PRIOR, flip_prior=(0.0, 0.0), min_overlap=5,
                     path=None) -> dict:
    """The report of ``rankalign annotators``: flip rates (Dawid-Skene-style), agreement, item ratings."""
    reliability = A.fit_annotator_reliability(data, model=model, prior=prior, flip_prior=flip_prior, path=path)
    agreement = A.agreement_report(data, min_overlap=min_overlap)
    rows = [{"annotator": a, "n": float(reliability.n[u]), "flip_rate": float(reliability.flip_rate[u]),
             "flip_rate_se": float(reliability.flip_rate_se[u]), "weight": float(reliability.weights[u]),
             "agreement": float(reliability.agreement[u])}
            for u, a in enumerate(reliability.annotators)]
    flips = reliability.flip_rate
    return {"model": reliability.model, "n_annotators": len(data.annotators), "n_judgments": len(data),
            "n_items": len(data.items), "log_likelihood": reliability.log_likelihood,
            "iterations": reliability.iterations, "converged": reliability.converged,
            "flip_prior": list(flip_prior),
            "flip_rate_quantiles": {q: float(np.quantile(flips, float(q))) for q in ("0.1", "0.5", "0.9")},
            "mean_flip_rate": float(np.average(flips, weights=reliability.n)),
            "agreement": {k: (v if isinstance(v, int) else None if not math.isfinite(v) else float(v))
                          for k, v in agreement.items()},
            "items": reliability.ratings.to_dict()["items"], "annotators": rows}


def _write_report_plot(report, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flips = np.array([r["flip_rate"] for r in report["annotators"]])
    n = np.array([r["n"] for r in report["annotators"]])
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.hist(flips, bins=np.linspace(0, 0.5, 26), color="tab:blue", alpha=0.8)
    left.set_xlabel("estimated flip rate")
    left.set_ylabel("annotators")
    left.set_title("flip rates")
    right.scatter(n, flips, s=10, alpha=0.6)
    right.set_xlabel("judgments per annotator")
    right.set_ylabel("estimated flip rate")
    right.set_title("flip rate against judgments")
    agreement = report["agreement"]
    parts = [f"{k} {v:.3f}" for k, v in agreement.items() if isinstance(v, float)]
    figure.suptitle(f"{title}\n" + ", ".join(parts), fontsize=9)
    figure.tight_layout()
    atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=120), binary=True)
    plt.close(figure)


@click.command("annotators")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Choice(["bt", "pl"]), default="bt", show_default=True,
              help="Rating model under the flip noise: bt (every pair a judgment implies) or pl (rankings).")
@click.option("--prior", type=FiniteFloat(min=0.0, max=MAX_PRIOR), default=A.DEFAULT_PRIOR, show_default=True,
              help="MAP penalty ALPHA * sum(theta^2) of the item ratings.")
@click.option("--flip-prior", default="0,0", show_default=True, metavar="FLIPS,KEEPS",
              help="Pseudo-counts added to every annotator's flipped and kept judgments (MAP under a Beta prior); "
                   "with few judgments per annotator, e.g. 1,4 shrinks the rates towards 0.2.")
@click.option("--min-overlap", type=click.IntRange(min=1), default=5, show_default=True,
              help="Units two annotators must share for their Cohen's kappa to enter the mean.")
@click.option("--top", type=click.IntRange(min=0), default=25, show_default=True,
              help="Rows of the table: the annotators with the highest flip rates (0: all).")
@json_option
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Also write every annotator's row as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG: the flip-rate histogram and flip rate against judgments.")
@layout_option
@map_option
@outcomes_option
@skip_invalid_option
def annotators(file, model, prior, flip_prior, min_overlap, top, as_json, csv_path, plot_path, layout, mapping, outcomes,
               skip_invalid):
    """Annotator quality report for FILE: each annotator's flip rate (a Dawid-Skene-style model fitted jointly
    with the item ratings), reliability weight (1 - 2 flip)^2, agreement with the fitted ratings, and the
    agreement statistics (Fleiss' and mean Cohen's kappa on pairs, Krippendorff's ordinal alpha on ranks)."""
    refuse_overwriting_inputs(file, csv_path, plot_path)
    try:
        pseudo = tuple(float(v) for v in flip_prior.split(","))
        if len(pseudo) != 2:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"expected two numbers FLIPS,KEEPS, got {flip_prior!r}",
                                 param_hint="--flip-prior") from None
    if not all(0.0 <= v <= MAX_PRIOR for v in pseudo):  # also refuses nan and inf
        raise click.BadParameter(f"pseudo-counts must be finite numbers in [0, {MAX_PRIOR:g}], got {flip_prior!r}",
                                 param_hint="--flip-prior")
    try:
        data, read_report = _read_annotated(file, layout, mapping, outcomes, skip_invalid)
        report = annotator_report(data, model="bradley-terry" if model == "bt" else "plackett-luce", prior=prior,
                                  flip_prior=pseudo, min_overlap=min_overlap, path=file)
    except DataError as error:
        raise (error if error.path is not None else error.at(file)) from None
    rows = sorted(report["annotators"], key=lambda r: (-r["flip_rate"], r["annotator"]))
    if csv_path:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        columns = ["annotator", "n", "flip_rate", "flip_rate_se", "weight", "agreement"]
        writer.writerow(columns)
        for row in rows:
            writer.writerow([for_csv(str(row[c])) if c == "annotator" else repr(row[c]) for c in columns])
        atomic_write(csv_path, lambda stream: stream.write(buffer.getvalue().encode("utf-8")), binary=True)
    if plot_path:
        _write_report_plot(report, plot_path, f"{Path(file).name}: {report['n_annotators']} annotators")
    if as_json:
        sys.stdout.write(strict_json.dumps(report) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    agreement = report["agreement"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    click.echo(f"{report['n_annotators']} annotators, {report['n_judgments']} judgments, {report['n_items']} items; "
               f"flip model over {report['model']}, log-likelihood {report['log_likelihood']:.3f} "
               f"({report['iterations']} EM iterations{'' if report['converged'] else ', not converged'})"
               + (f"; flip prior {pseudo[0]:g} flips, {pseudo[1]:g} keeps per annotator" if any(pseudo) else ""))
    quantiles = report["flip_rate_quantiles"]
    click.echo(f"flip rate: mean {report['mean_flip_rate']:.3f} (weighted by judgments), 10%/50%/90% quantiles "
               f"{quantiles['0.1']:.3f} / {quantiles['0.5']:.3f} / {quantiles['0.9']:.3f}")
    click.echo(f"agreement: Fleiss' kappa {fmt(agreement['fleiss_kappa'])} (pairs judged by 2+ annotators: "
               f"{agreement['units_with_two_or_more']}), mean Cohen's kappa {fmt(agreement['mean_cohen_kappa'])} "
               f"over {agreement['cohen_rater_pairs']} annotator pairs sharing >= {min_overlap} pairs, "
               f"Krippendorff's alpha (ordinal ranks) {fmt(agreement['krippendorff_alpha_ordinal'])}")
    shown = rows if top == 0 else rows[:top]
    table = Table(title=f"annotators by flip rate ({len(shown)} of {len(rows)} shown)")
    for column in ("annotator", "n", "flip rate", "se", "weight", "agrees with ratings"):
        table.add_column(column, justify="left" if column == "annotator" else "right")
    for row in shown:
        se = row["flip_rate_se"]
        table.add_row(for_terminal(row["annotator"]), f"{row['n']:g}", f"{row['flip_rate']:.3f}",
                      "-" if not math.isfinite(se) else f"{se:.3f}", f"{row['weight']:.3f}", f"{row['agreement']:.3f}")
    Console().print(table)
    if read_report.n_skipped:
        click.echo(f"skipped {read_report.n_skipped} invalid rows: {dict(read_report.skipped)}", err=True)
