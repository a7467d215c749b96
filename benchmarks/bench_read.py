"""Reading speed of the data layer on a million records (issue 2, "Large files stream").

Cases, each run in its own child process so that its peak memory is its own:

* ``jsonl_stream``: a 1,000,000-line JSONL file in the ``pairs`` layout (explicit prompt, chosen, rejected;
  about 250 MB), validated by :func:`rankalign.data.iter_records` -- every line parsed and turned into a
  validated ``RankedList`` -- while only counting the records, as ``rankalign data inspect`` streams them.
  The file is never held in memory, so peak memory should stay flat in the number of lines.
* ``csv_comparisons``: a 1,000,000-row CSV in the ``winner_loser`` layout (1,000 items, with a count
  column), read by :func:`rankalign.data.read_comparisons` into arrays for the statistics layer.

Figures: records per second (wall time of the read only, file generation excluded) and the child's peak
resident memory (``ru_maxrss``), next to the resident memory of a child that only imports rankalign.data.
There is no peer implementation for reading these layouts, so ``"peer"`` and ``"ratio"`` are null.

Run: ``.venv/bin/python benchmarks/bench_read.py [--rows 1000000] [--keep DIR]``. Ends with one
``RESULT {...}`` line per case.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate_jsonl(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    words = "the a model answer question helpful harmless short long kind clear wrong right".split()
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            prompt = f"Question {i}: " + " ".join(rng.choices(words, k=8))
            chosen = " ".join(rng.choices(words, k=12))
            rejected = chosen + " " + " ".join(rng.choices(words, k=3))
            handle.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def generate_csv(path: Path, rows: int, items: int = 1000, seed: int = 0) -> None:
    rng = random.Random(seed)
    names = [f"item{i:04d}" for i in range(items)]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("winner,loser,count\n")
        for _ in range(rows):
            a, b = rng.sample(names, 2)
            handle.write(f"{a},{b},{rng.randint(1, 3)}\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_case(case: str, path: str) -> dict:
    """Runs inside the child process."""
    from rankalign.data import iter_records, read_comparisons

    start = time.perf_counter()
    if case == "baseline":
        n = 0
    elif case == "jsonl_stream":
        stream = iter_records(path)
        n = sum(1 for _ in stream)
        assert stream.report.n_skipped == 0
    elif case == "csv_comparisons":
        n = len(read_comparisons(path))
    else:
        raise ValueError(case)
    seconds = time.perf_counter() - start
    return {"case": case, "records": n, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def child(case: str, path: str) -> dict:
    output = subprocess.run([sys.executable, __file__, "--child", case, path], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="write the generated files here and keep them")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_case(*args.child)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        jsonl, csv_path = folder / "pairs.jsonl", folder / "winner_loser.csv"
        start = time.perf_counter()
        generate_jsonl(jsonl, args.rows)
        generate_csv(csv_path, args.rows)
        print(f"generated {args.rows:,} rows each in {time.perf_counter() - start:.1f} s: "
              f"{jsonl.stat().st_size / 1e6:.0f} MB JSONL, {csv_path.stat().st_size / 1e6:.0f} MB CSV")
        baseline = child("baseline", str(jsonl))
        results = [child("jsonl_stream", str(jsonl)), child("csv_comparisons", str(csv_path))]
    print(f"{'case':<18}{'records':>12}{'seconds':>10}{'records/s':>14}{'peak RSS MB':>14}{'(import only)':>15}")
    for r in results:
        print(f"{r['case']:<18}{r['records']:>12,}{r['seconds']:>10.2f}{r['records'] / r['seconds']:>14,.0f}"
              f"{r['peak_rss_mb']:>14.0f}{baseline['peak_rss_mb']:>15.0f}")
    for r in results:
        print("RESULT " + json.dumps({
            "case": f"{r['case']}_{args.rows}", "peer": None, "ours": round(r["records"] / r["seconds"]),
            "unit": "records/s", "ratio": None, "seconds": round(r["seconds"], 3),
            "peak_rss_mb": round(r["peak_rss_mb"], 1), "import_only_rss_mb": round(baseline["peak_rss_mb"], 1),
            "note": "no peer reader exists for these layouts"}))


if __name__ == "__main__":
    main()
