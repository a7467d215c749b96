"""Write ranked lists from the simulation lab's text world, for `examples/train_sim_lists.yaml`.

Responses are drawn from the text world's reference grammar and ranked by its documented gold reward
(rankalign.sim.text_world.gold_reward), which is also stored as each candidate's score (the grade).

    python examples/make_sim_lists.py                      # writes examples/data/sim_lists.jsonl
    rankalign train examples/train_sim_lists.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rankalign.data import write
from rankalign.sim.text_world import grammar_ranked_lists

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "data" / "sim_lists.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", "--out", dest="out", type=Path, default=DEFAULT_OUTPUT,
                        help="output JSONL (--out is the old spelling)")
    parser.add_argument("--lists", type=int, default=128)
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = grammar_ranked_lists(args.lists, k=args.k, seed=args.seed)
    write(records, args.out)
    print(f"{args.out}: {len(records)} ranked lists of K = {args.k}")


if __name__ == "__main__":
    main()
