"""`rankalign rate FILE`: a leaderboard with confidence intervals from comparisons or rankings.

Reads every comparison layout of :mod:`rankalign.data` (winner/loser[/count], item_a/item_b/outcome,
arena battles) with the columnar :func:`rankalign.data.read_comparisons`, and rankings (ranked lists,
PrefLib .soc/.soi/.toc/.toi) with :func:`rankalign.data.read`. Pairwise models applied to rankings use
every pair a ranking implies (a ranking of K gives K(K-1)/2 pairs, each with the ranking's weight);
Plackett-Luce applied to pairs reads each pair as a ranking of two.
"""

from __future__ import annotations

import csv
import io
import math
import sys
from pathlib import Path

import click
import numpy as np

from rankalign._atomic import atomic_write
from rankalign._cli import (
    FiniteFloat,
    deprecated_option,
    json_option,
    layout_option,
    map_option,
    outcomes_option,
    rank_by_option,
    refuse_overwriting_inputs,
    resolve_deprecated,
    skip_invalid_option,
    wrote,
)
from rankalign._escape import for_csv, for_terminal
from rankalign.data.errors import DataError
from rankalign.errors import require

# a prior this strong already pins every rating to 0 (variance 5e-7); larger values overflow the Hessian
MAX_PRIOR = 1e6
MAX_ANCHOR = 1e9  # ratings keep about 7 significant digits of their differences below this
# layouts whose candidates are responses to a prompt, not item ids (rating them would rate answer texts)
TEXT_LAYOUTS = ("pairs", "ranked_responses", "ratings", "unpaired")
MODEL_NAMES = {"bt": "bradley-terry", "thurstone": "thurstone", "davidson": "davidson",
               "rao-kupper": "rao-kupper", "pl": "plackett-luce"}


# ------------------------------------------------------------------------------------------- reading
def _load(path, layout, mapping, outcomes, skip_invalid, covariates=(), rank_by=None):
    """Return ("pairs", Comparisons) or ("rankings", (items, rankings, weights, report))."""
    from rankalign.data import detect_format, read, read_comparisons
    from rankalign.data.summary import rank_by as rank_records

    fmt = detect_format(path)
    if fmt != "preflib" and rank_by is None:
        try:
            pairs = read_comparisons(path, layout=layout, mapping=mapping, outcomes=outcomes,
                                     skip_invalid=skip_invalid, keep=tuple(covariates))
        except DataError as error:
            if error.reason not in ("unknown_layout", "not_a_pair"):  # rankings: read them as records
                raise
        else:
            # --skip-invalid makes the columnar reader skip (as "not_a_pair") the records it cannot hold:
            # lists of three or more, pairs judged on a prompt. They are valid rankings, so a file that has
            # any is read as rankings, as it is without --skip-invalid (skipping them would drop data)
            if not pairs.report.skipped.get("not_a_pair"):
                return "pairs", pairs
    if covariates:
        raise click.UsageError("--covariate needs two-item comparisons (one row per comparison)")
    result = read(path, layout=layout, mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid)
    if rank_by is not None:
        result.records = list(rank_records(result.records, rank_by))
    return "rankings", _records_to_rankings(result, path, skip_invalid)


def _records_to_rankings(result, path, skip_invalid=False):
    from rankalign.data import RankedList

    names = set()
    lists = []
    for number, record in enumerate(result.records, start=1):
        if skip_invalid and result.report.layout not in TEXT_LAYOUTS and not isinstance(record, RankedList):
            result.report.skip(DataError("rating needs comparisons or rankings, not unpaired judgments", path=path,
                                         line=number, reason="bad_layout"))
            continue
        if result.report.layout in TEXT_LAYOUTS:
            raise DataError(f"this file has no item ids: it holds prompts and responses (layout "
                            f"{result.report.layout}), and rating compares items", path=path, line=number,
                            field="prompt", reason="no_item_ids",
                            hint="use --map to name the item columns, e.g. --map item_a=model_a,item_b=model_b,"
                                 "outcome=winner")
        if not isinstance(record, RankedList):
            raise DataError("rating needs comparisons or rankings, not unpaired judgments", path=path,
                            line=number, reason="bad_layout")
        ranked = [(rank, str(c)) for rank, c in zip(record.ranks, record.candidates)
                  if rank is not None and isinstance(c, str)]
        if len(ranked) != sum(r is not None for r in record.ranks):
            raise DataError("candidates must be item ids (strings) to be rated", path=path, line=number,
                            field="candidates", reason="bad_type")
        lists.append((ranked, record.weight, number))
        names.update(name for _, name in ranked)
    items = sorted(names)
    index = {name: i for i, name in enumerate(items)}
    rankings, weights, lines = [], [], []
    for ranked, weight, number in lists:
        levels: dict[int, list[int]] = {}
        for rank, name in ranked:
            levels.setdefault(rank, []).append(index[name])
        ordered = [levels[r] if len(levels[r]) > 1 else levels[r][0] for r in sorted(levels)]
        rankings.append(ordered)
        weights.append(weight)
        lines.append(number)
    return items, rankings, np.asarray(weights, dtype=np.float64), lines, result.report


def _rankings_to_pairs(rankings, weights):
    first, second, outcome, count = [], [], [], []
    for ranking, weight in zip(rankings, weights):
        levels = [level if isinstance(level, list) else [level] for level in ranking]
        for a in range(len(levels)):
            for x in range(len(levels[a])):  # ties within a level
                for y in range(x + 1, len(levels[a])):
                    first.append(levels[a][x])
                    second.append(levels[a][y])
                    outcome.append(0.5)
                    count.append(weight)
            for b in range(a + 1, len(levels)):
                for i in levels[a]:
                    for j in levels[b]:
                        first.append(i)
                        second.append(j)
                        outcome.append(1.0)
                        count.append(weight)
    return (np.asarray(first, np.int64), np.asarray(second, np.int64), np.asarray(outcome),
            np.asarray(count))


# ------------------------------------------------------------------------------------------- fitting
def _line_of_row(path, index):
    """File line of data row ``index`` (CSV: the header is line 1; JSONL: one record per line)."""
    return index + 2 if str(path).lower().endswith(".csv") else index + 1


def _is_number(text: str) -> bool:
    """Whether a covariate cell reads as a number (an empty cell is a missing value, reported later)."""
    if text in ("", "True", "False"):
        return text == ""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _covariate_matrix(data, covariates, path):
    columns = []
    for name in covariates:
        column = data.extra[name]
        if column.dtype.kind not in "fiu":
            row = next(i for i, value in enumerate(column.tolist()) if not _is_number(value))
            raise DataError(f"covariate column {name!r} must be numeric, got {str(column[row])!r}", path=path,
                            line=_line_of_row(path, row), field=name, reason="bad_type")
        bad = np.flatnonzero(~np.isfinite(column))
        if bad.size:
            raise DataError("covariate must be a finite number", path=path, line=_line_of_row(path, int(bad[0])),
                            field=name, reason="non_finite")
        columns.append(column.astype(np.float64))
    return np.stack(columns, axis=1)


def _fit(kind, data, model, reference, prior, npseudo, home_advantage, path, ties="top-k", covariates=()):
    from ._sufficient import pair_counts
    from .davidson_luce import fit_davidson_luce
    from .pairwise import fit_pairwise
    from .plackett_luce import fit_plackett_luce

    if kind == "pairs":
        items = data.items
        if len(items) < 2:
            raise DataError(f"need at least two items to rate, found {len(items)} ({', '.join(items)})",
                            path=path, reason="single_item")
        if model == "plackett-luce":
            if home_advantage or covariates:
                raise click.UsageError(f"{'--home-advantage' if home_advantage else '--covariate'} applies to "
                                       "the pairwise models, not pl")
            tied = np.flatnonzero(data.outcome == 0.5)
            if ties == "davidson-luce":
                rankings = [[a, b] if o == 1.0 else ([b, a] if o == 0.0 else [[a, b]])
                            for a, b, o in zip(data.first.tolist(), data.second.tolist(), data.outcome.tolist())]
                return fit_davidson_luce(rankings, data.count, items=items, reference=reference, prior=prior,
                                         npseudo=npseudo)
            if tied.size:
                raise DataError("a tie cannot be read as a ranking of two under Plackett-Luce without "
                                "--ties davidson-luce; or use --model davidson or bt",
                                path=path, line=_line_of_row(path, int(tied[0])), field="outcome",
                                reason="tie_in_ranking")
            win = data.outcome == 1.0
            rankings = np.stack([np.where(win, data.first, data.second), np.where(win, data.second, data.first)],
                                axis=1)
            return fit_plackett_luce(rankings, data.count, items=items, reference=reference, prior=prior,
                                     npseudo=npseudo)
        counts = pair_counts(data.first, data.second, data.outcome, data.count, n_items=len(items),
                             home=np.ones(len(data.first)) if home_advantage else None,
                             features=_covariate_matrix(data, covariates, path) if covariates else None)
        return fit_pairwise(model, counts, items=items, home=home_advantage, prior=prior, reference=reference)
    items, rankings, weights, lines, _ = data
    if len(items) < 2:
        raise DataError(f"need at least two items to rate, found {len(items)}", path=path, reason="single_item")
    if not any(sum(len(level) if isinstance(level, list) else 1 for level in ranking) >= 2 for ranking in rankings):
        raise DataError("no comparisons: every list ranks fewer than two candidates", path=path, reason="empty",
                        hint="rating needs lists (or pairs) of two or more items")
    if model == "plackett-luce":
        fit = fit_davidson_luce if ties == "davidson-luce" else fit_plackett_luce
        try:
            return fit(rankings, weights, items=items, reference=reference, prior=prior, npseudo=npseudo)
        except DataError as error:  # point at the file's line, not the ranking's position
            line = lines[error.line - 1] if error.line is not None and error.line <= len(lines) else error.line
            raise error.at(path, line) from None
    if home_advantage:
        raise click.UsageError("--home-advantage needs two-item comparisons (the first item is at home)")
    first, second, outcome, count = _rankings_to_pairs(rankings, weights)
    counts = pair_counts(first, second, outcome, count, n_items=len(items))
    return fit_pairwise(model, counts, items=items, prior=prior, reference=reference)


def fit_file(file, *, model="bt", reference=None, prior=0.0, npseudo=0.0, home_advantage=False, ties="top-k",
             level=0.95, layout=None, mapping=None, outcomes=None, skip_invalid=False, covariates=(),
             weight_by_reliability=False, rank_by=None):
    """Read FILE and fit the rating model exactly as ``rankalign rate`` does (Wald intervals at ``level``).

    ``model`` is a ``--model`` choice (bt, thurstone, davidson, rao-kupper, pl); ``rank_by`` re-ranks
    rated lists (:func:`rankalign.data.summary.rank_by`). Returns
    ``(RatingResult, ReadReport)``; raises :class:`DataError` or ValueError on bad data. The arena's
    leaderboard calls this on its export so that both print the same numbers.
    """
    model_name = MODEL_NAMES[model]
    if weight_by_reliability:
        from . import annotators_cli

        kind, data = "rankings", annotators_cli.reliability_weighted_rankings(
            file, layout, mapping, outcomes, skip_invalid,
            "plackett-luce" if model_name == "plackett-luce" else "bradley-terry")
    else:
        kind, data = _load(file, layout, mapping, outcomes, skip_invalid, covariates, rank_by)
    report = data.report if kind == "pairs" else data[4]
    try:
        result = _fit(kind, data, model_name, reference, prior, npseudo, home_advantage, file, ties, covariates)
    except DataError as error:
        located = error if error.path is not None else error.at(file)
        if report.n_skipped:  # say how much --skip-invalid dropped: it is usually why too little is left
            located = DataError(f"{located.message} (after skipping {report.n_skipped} invalid rows: "
                                f"{dict(report.skipped)})", path=located.path, line=located.line,
                                field=located.field, reason=located.reason, hint=located.hint)
        raise located from None
    if level != result.ci_level:
        from scipy.special import ndtri

        z = ndtri(0.5 + level / 2.0)
        result.ci_low, result.ci_high = result.ratings - z * result.se, result.ratings + z * result.se
        result.ci_level = level
    return result, report


# ------------------------------------------------------------------------------------------- output
def _atomic_write_bytes(path, write):
    return atomic_write(path, write, binary=True)


def _parse_anchor(text):
    if text is None:
        return None
    item, sep, value = text.rpartition("=")
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not sep or not item or not math.isfinite(number):
        raise click.BadParameter(f"expected ITEM=VALUE with a finite number, got {text!r}", param_hint="--anchor")
    if abs(number) > MAX_ANCHOR:  # beyond float precision the ratings collapse onto the anchor
        raise click.BadParameter(f"an anchor value must be within +-{MAX_ANCHOR:g}, got {number:g}",
                                 param_hint="--anchor")
    return item, number


def write_matrices(result, kind, data, path):
    """Observed win rates (ties count 1/2), predicted win rates on neutral ground and battle counts
    between every two items, rows and columns in leaderboard order, as one JSON file (atomic; NaN -> null).

    The predicted rate counts a predicted tie as half a win too (P(win) + P(tie) / 2), so that under the
    tie models it is comparable with the observed rate (P(win) alone would leave out a share of every game)."""
    from rankalign._atomic import atomic_write_json

    from .uncertainty import battle_count_matrix, win_rate_matrix

    if kind == "pairs":
        first, second, outcome, count = data.first, data.second, data.outcome, data.count
    else:
        first, second, outcome, count = _rankings_to_pairs(data[1], data[2])
    n = len(result.items)
    order = result.order()
    observed = win_rate_matrix(first, second, outcome, count, n_items=n)[np.ix_(order, order)]
    battles = battle_count_matrix(first, second, count, n_items=n)[np.ix_(order, order)]
    predicted = result.win_matrix(tie_credit=0.5)[np.ix_(order, order)]

    def plain(matrix):
        return [[None if not math.isfinite(v) else float(v) for v in row] for row in matrix]

    atomic_write_json(path, {"items": [str(result.items[i]) for i in order], "model": result.model,
                             "observed_win_rate": plain(observed), "predicted_win_rate": plain(predicted),
                             "battles": plain(battles),
                             "note": "row item vs column item; observed: ties count 1/2; predicted: "
                                     "P(win) + P(tie)/2, no order effect"})


def write_csv(result, path):
    """Write the leaderboard as CSV (best first), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "rank_ub", "item", "rating", "se", "ci_low", "ci_high", "n"])
    ranks, upper = result.ranks(), result.rank_upper_bounds()
    for i in result.order():
        writer.writerow([int(ranks[i]), int(upper[i]), for_csv(str(result.items[i])), repr(float(result.ratings[i])),
                         repr(float(result.se[i])), repr(float(result.ci_low[i])), repr(float(result.ci_high[i])),
                         int(result.n[i])])
    _atomic_write_bytes(path, lambda stream: stream.write(buffer.getvalue().encode("utf-8")))


def write_plot(result, path, title=None):
    """Ratings with their confidence intervals as horizontal bars, best at the top (PNG, Agg, atomic)."""
    matplotlib = require("matplotlib", "plot", "--plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = result.order()[::-1]
    n = len(order)
    figure, axes = plt.subplots(figsize=(7.0, max(2.5, 0.28 * n + 1.2)))
    y = np.arange(n)
    ratings = result.ratings[order]
    low = np.where(np.isfinite(result.ci_low[order]), result.ci_low[order], ratings)
    high = np.where(np.isfinite(result.ci_high[order]), result.ci_high[order], ratings)
    axes.errorbar(ratings, y, xerr=[ratings - low, high - ratings], fmt="o", color="tab:blue", ecolor="0.4",
                  capsize=3, markersize=4)
    axes.set_yticks(y)
    axes.set_yticklabels([result.items[i] for i in order], fontsize=8)
    axes.set_xlabel(f"rating ({result.scale} scale, {result.gauge()}; {ci_label(result)})")
    axes.set_title(title or f"{result.model} ratings")
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    _atomic_write_bytes(path, lambda stream: figure.savefig(stream, format="png", dpi=120))
    plt.close(figure)


def _params_line(result):
    parts = [f"model {result.model}", f"log-likelihood {result.log_likelihood:.4f}"]
    p = result.params
    if "home" in p:
        parts.append(f"home effect {p['home']:.4f} (se {p['home_se']:.4f})")
    if "nu" in p:
        parts.append(f"nu {p['nu']:.4f} (log nu {p['log_nu']:.4f}, se {p['log_nu_se']:.4f})")
    for k in range(2, int(p.get("max_tie", 1)) + 1):
        parts.append(f"log delta{k} {p[f'tie{k}']:.4f} (se {p[f'tie{k}_se']:.4f})")
    if "weights" in p:
        weights = ", ".join(f"{w:.4f} (se {e:.4f})" for w, e in zip(p["weights"], p["weights_se"]))
        parts.append(f"covariate weights {weights}")
    if "theta" in p:
        parts.append(f"theta {p['theta']:.4f} (se {p['theta_se']:.4f})")
    if result.prior:
        parts.append(f"prior alpha {result.prior:g}")
    if p.get("npseudo"):
        parts.append(f"npseudo {p['npseudo']:g}")
    return ", ".join(parts)


def ci_label(result) -> str:
    """E.g. "95% Wald CI" or "95% bootstrap CI": the level and how the interval was made."""
    return f"{int(round(result.ci_level * 100))}% {'Wald' if result.ci_method == 'wald' else result.ci_method} CI"


def _print_table(result, report_notes):
    from rich.console import Console
    from rich.table import Table

    title = f"{result.model} ratings ({result.scale} scale, {result.gauge()})"
    table = Table(title=for_terminal(title), caption=_params_line(result))
    for column in ("rank", "rank (UB)", "item", "rating", "se", ci_label(result), "n"):
        table.add_column(column, justify="left" if column == "item" else "right")
    digits = 1 if result.scale == "elo" else 3
    ranks, upper = result.ranks(), result.rank_upper_bounds()
    for i in result.order():
        se = result.se[i]
        table.add_row(str(ranks[i]), str(upper[i]), for_terminal(result.items[i]), f"{result.ratings[i]:.{digits}f}",
                      "-" if not math.isfinite(se) else f"{se:.{digits}f}",
                      for_terminal(f"[{result.ci_low[i]:.{digits}f}, {result.ci_high[i]:.{digits}f}]"),
                      str(int(result.n[i])))
    Console().print(table)
    _print_notes(report_notes)


def _print_notes(notes):
    from rich.console import Console

    for note in notes:
        Console(stderr=True, soft_wrap=True).print(for_terminal(note), highlight=False)


# ------------------------------------------------------------------------------------------- command
@click.command("rate")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Choice(sorted(MODEL_NAMES)), default="bt", show_default=True,
              help="bt: Bradley-Terry (ties = half a win each); thurstone: probit (ties = half); davidson and "
                   "rao-kupper: ties modelled; pl: Plackett-Luce for rankings.")
@click.option("--reference-item", default=None, metavar="ITEM",
              help="Gauge: fix ITEM at 0 on the logit scale (default: mean rating 0).")
@deprecated_option("--reference", "legacy_reference", "--reference-item", metavar="ITEM")
@click.option("--anchor", default=None, metavar="ITEM=VALUE",
              help="Shift the reported ratings so that ITEM is rated VALUE on the chosen scale (as LMSYS "
                   "anchors one model at a fixed Elo); differences and interval widths do not change.")
@click.option("--matrices", "matrices_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a JSON file with the observed win rates, the model's predicted win rates (a tie "
                   "counts 1/2 in both) and the battle counts between every two items (rows and columns in "
                   "leaderboard order).")
@click.option("--bootstrap", "n_boot", type=click.IntRange(min=0), default=0, show_default=True,
              help="Bootstrap replicates for percentile CIs (0: Wald CIs from the observed information).")
@click.option("--scale", type=click.Choice(["logit", "elo"]), default="logit", show_default=True,
              help="logit: the model's own scale (probit for thurstone); elo = 400/ln(10) * rating + 1000 "
                   "(logistic models only).")
@json_option
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the table as CSV.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Also write a PNG of the ratings with CI bars.")
@click.option("--home-advantage", is_flag=True,
              help="Fit an order effect h for the first item (home team, position A): logit = theta_a - theta_b + h.")
@click.option("--covariate", "covariates", multiple=True, metavar="COLUMN",
              help="A numeric column holding x_first - x_second for each comparison (repeatable): contextual "
                   "Bradley-Terry, logit = theta_a - theta_b + w^T x, as arena style control; w is reported.")
@click.option("--prior", type=FiniteFloat(min=0.0, max=MAX_PRIOR), default=0.0, show_default=True,
              help="MAP with penalty ALPHA * sum(theta^2) (Gaussian prior with variance 1/(2 ALPHA)).")
@click.option("--npseudo", type=FiniteFloat(min=0.0), default=0.0, show_default=True,
              help="pl only: pseudo wins and losses against a hypothetical item at 0 (R PlackettLuce's default is 0.5).")
@click.option("--ties", type=click.Choice(["top-k", "davidson-luce"]), default="top-k", show_default=True,
              help="pl only: top-k reads a bottom group of several items as unordered (a best-of-K choice) and "
                   "rejects other ties; davidson-luce reads every group as a tie (R PlackettLuce's model).")
@click.option("--level", type=FiniteFloat(0.5, 0.999), default=0.95, show_default=True,
              help="Confidence level of the intervals.")
@layout_option
@map_option
@outcomes_option
@skip_invalid_option
@rank_by_option
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the bootstrap (and of --by-annotator's EM restarts).")
@click.option("--jobs", type=click.IntRange(min=-1), default=1, show_default=True,
              help="Processes for the bootstrap (-1: all cores).")
@click.option("--by-annotator", is_flag=True,
              help="Fit an EM mixture of bt/pl models over annotators: one leaderboard per group and each "
                   "annotator's group (see rankalign.stats.annotators).")
@click.option("--groups", default="auto", show_default=True, metavar="auto|N",
              help="--by-annotator: the number of groups, or auto (1-4 groups, lowest BIC).")
@click.option("--restarts", type=click.IntRange(min=1), default=4, show_default=True,
              help="--by-annotator: EM restarts per number of groups.")
@click.option("--weight-by-reliability", is_flag=True,
              help="Weight each judgment by its annotator's reliability (1 - 2 flip rate)^2, the flip rates "
                   "estimated first (rankalign annotators FILE shows them).")
def rate(file, model, reference_item, legacy_reference, anchor, matrices_path, n_boot, scale, as_json, csv_path,
         plot_path, home_advantage, covariates, prior, npseudo, ties, level, layout, mapping, outcomes, skip_invalid,
         rank_by, seed, jobs, by_annotator=False, groups="auto", restarts=4, weight_by_reliability=False):
    """Fit ratings to the comparisons or rankings in FILE and print a leaderboard with confidence intervals.

    The table and --json list each item's rank and its rank upper bound "rank (UB)": 1 + the number of
    items whose interval lies entirely above this item's (as LMSYS's leaderboard shows it)."""
    from .uncertainty import bootstrap

    refuse_overwriting_inputs(file, csv_path, plot_path, matrices_path)
    if jobs == 0:
        raise click.BadParameter("0 processes; give 1 or more, or -1 for all cores", param_hint="--jobs")
    reference = resolve_deprecated(reference_item, legacy_reference, new="--reference-item", old="--reference")
    anchor = _parse_anchor(anchor)
    model_name = MODEL_NAMES[model]
    if by_annotator or weight_by_reliability:
        from . import annotators_cli

        if home_advantage or covariates or n_boot or (by_annotator and weight_by_reliability):
            raise click.UsageError("--by-annotator and --weight-by-reliability do not combine with each other, "
                                   "--home-advantage, --covariate or --bootstrap")
        if groups != "auto" and not (groups.isdigit() and int(groups) >= 1):
            raise click.BadParameter(f"expected auto or a positive integer, got {groups!r}", param_hint="--groups")
        if by_annotator:
            return annotators_cli.rate_by_annotator(
                file, model=model_name, groups=groups, restarts=restarts, reference=reference, prior=prior,
                scale=scale, as_json=as_json, csv_path=csv_path, plot_path=plot_path, level=level, layout=layout,
                mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid, seed=seed)
    if npseudo and model_name != "plackett-luce":
        raise click.UsageError("--npseudo applies to --model pl only (use --prior for the pairwise models)")
    if n_boot == 1:
        raise click.UsageError("--bootstrap needs at least 2 replicates (0: Wald intervals)")
    result, report = fit_file(file, model=model, reference=reference, prior=prior, npseudo=npseudo,
                              home_advantage=home_advantage, ties=ties, level=level, layout=layout,
                              mapping=mapping, outcomes=outcomes, skip_invalid=skip_invalid,
                              covariates=covariates, weight_by_reliability=weight_by_reliability,
                              rank_by=rank_by)
    if n_boot:
        if "x" not in result.state:
            raise click.UsageError(f"--bootstrap is not available for the {result.model} model; use the Wald "
                                   "intervals (default)")
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("bootstrap", total=n_boot)
            result = bootstrap(result, n_boot, seed=seed, n_jobs=jobs,
                               progress=lambda done: bar.advance(task, done))
    if scale == "elo" and result.scale == "probit":
        raise click.BadParameter("the Elo scale rescales the logit scale of the logistic models; thurstone "
                                 "ratings are on the probit scale (use --scale logit)", param_hint="--scale")
    result = result.to_scale("natural" if scale == "logit" else scale)
    if anchor is not None:
        try:
            result = result.anchored(*anchor)
        except KeyError:
            raise click.BadParameter(f"{anchor[0]!r} is not an item of {file}", param_hint="--anchor") from None
    notes = [f"skipped {report.n_skipped} invalid rows: {dict(report.skipped)}"] if report.n_skipped else []
    from ._newton import DENSE_LIMIT

    if len(result.items) > DENSE_LIMIT and not np.isfinite(result.se).any() and result.ci_method == "wald":
        notes.append(f"note: no standard errors or intervals: with {len(result.items)} items (more than "
                     f"{DENSE_LIMIT}) the information matrix is too large to invert; --bootstrap N gives "
                     "percentile intervals")
    failed = result.state.get("bootstrap_failed", 0)
    if failed:
        notes.append(f"warning: {failed} of {n_boot} bootstrap replicates have no maximum-likelihood estimate "
                     "(separation: an item never wins or never loses in the resample) and were left out of the "
                     "intervals; --prior ALPHA keeps every replicate")
    if csv_path:
        write_csv(result, csv_path)
        wrote(csv_path, "leaderboard CSV")
    if plot_path:
        write_plot(result, plot_path, title=f"{Path(file).name}: {result.model}")
        wrote(plot_path, "ratings plot")
    if matrices_path:
        kind, data = _load(file, layout, mapping, outcomes, skip_invalid, covariates, rank_by)
        write_matrices(result, kind, data, matrices_path)
        wrote(matrices_path, "observed/predicted win rates and battle counts")
    if as_json:
        sys.stdout.write(result.to_json() + "\n")
        _print_notes(notes)
    else:
        _print_table(result, notes)
