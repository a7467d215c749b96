"""Bean variety triads (best and worst of three, plus comparisons with a local check) as ranked lists.

Data: ``beans.csv`` from the R package PlackettLuce (van Etten et al., "Crop variety management for
climate adaptation supported by citizen science", PNAS 2019; GPL-3; see examples/README.md). In each
on-farm trial a farmer grew three varieties (``variety_a``, ``variety_b``, ``variety_c``), named the best
and the worst (letters ``A``/``B``/``C``), and said for each variety whether it was ``Better`` or ``Worse``
than the local variety they usually grow (``var_a``, ``var_b``, ``var_c``).

Each trial becomes, in rankalign's record model:

* one ranked list of the three varieties, best first: ``RankedList(prompt=None, candidates=[best,
  middle, worst], ranks=[0, 1, 2])`` -- the variety named neither best nor worst is the middle one;
* three pairs against an item named ``"Local"``: ``candidates=[variety, "Local"]`` with ``ranks=[0, 1]``
  when the variety was better and ``[1, 0]`` when worse.

All four records of a trial carry ``annotator="trial-NNN"`` (its row in the file) and the trial's
covariates (season, year, maxTN, lon, lat, planting_date) in ``meta``. This is the shape Plackett-Luce
models with a shared reference item take (Turner et al., "Modelling rankings in R: the PlackettLuce
package", Computational Statistics 2020, whose documentation builds rankings from this data set in the
same way).

Run::

    python examples/beans_triads.py --out beans.jsonl
    rankalign data inspect beans.jsonl
    rankalign rate beans.jsonl --model pl
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from rankalign.data import RankedList, write

# shared/data beside the repository (as in CI and a developer checkout)
DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "beans-triads" / "beans.csv"
LOCAL = "Local"
LETTERS = {"A": "variety_a", "B": "variety_b", "C": "variety_c"}
VERSUS_LOCAL = {"variety_a": "var_a", "variety_b": "var_b", "variety_c": "var_c"}


def _covariates(row: dict) -> dict:
    meta = {"season": row["season"], "planting_date": row["planting_date"]}
    meta["year"] = int(row["year"])
    for name in ("maxTN", "lon", "lat"):
        meta[name] = float(row[name])
    return meta


def trial_records(row: dict, trial: int) -> list[RankedList]:
    """The ranked list of three and the three pairs against ``"Local"`` for one row of beans.csv."""
    best, worst = LETTERS[row["best"]], LETTERS[row["worst"]]
    if best == worst:
        raise ValueError(f"trial {trial}: the same variety is named best and worst")
    (middle,) = set(LETTERS.values()) - {best, worst}
    annotator = f"trial-{trial:03d}"
    meta = _covariates(row)
    records = [RankedList(prompt=None, candidates=[row[best], row[middle], row[worst]], ranks=[0, 1, 2],
                          annotator=annotator, meta=meta)]
    for column, verdict_column in VERSUS_LOCAL.items():
        verdict = row[verdict_column]
        if verdict not in ("Better", "Worse"):
            raise ValueError(f"trial {trial}: {verdict_column} is {verdict!r}, expected Better or Worse")
        records.append(RankedList(prompt=None, candidates=[row[column], LOCAL],
                                  ranks=[0, 1] if verdict == "Better" else [1, 0], annotator=annotator, meta=meta))
    return records


def beans_records(path=DEFAULT_INPUT) -> list[RankedList]:
    """All records of beans.csv: per trial (row) the triad first, then its three comparisons with Local."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    records = []
    for trial, row in enumerate(rows, 1):
        records.extend(trial_records(row, trial))
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="beans.csv")
    parser.add_argument("-o", "--output", "--out", dest="out", type=Path, default=Path("runs/beans.jsonl"),
                        help="output JSONL (written atomically; --out is the old spelling)")
    args = parser.parse_args(argv)
    records = beans_records(args.input)
    written = write(records, args.out)
    triads = sum(1 for r in records if r.k == 3)
    print(f"{args.out}: {written} records ({triads} triads, {written - triads} comparisons with {LOCAL})")


if __name__ == "__main__":
    main()
