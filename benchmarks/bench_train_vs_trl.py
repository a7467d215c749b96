"""rankalign's PreferenceTrainer against TRL's DPOTrainer, side by side (issue 5, "Performance").

Cases (same tiny Llama-style model built from a config, same data, float32 on the CPU, prompt P = 256
tokens, responses R = 64 tokens, a word-level tokenizer so that every word is exactly one token):

* ``pairs``: DPO on pairs. TRL runs 2(P+R) tokens per pair; rankalign's shared layout P+2R.
  Figure: pairs/s. Target: rankalign >= 1.5x TRL, peak RSS <= TRL's.
* ``lists_k4``: lists of K = 4 responses. rankalign trains Plackett-Luce DPO on the whole list (P+4R
  tokens); TRL trains DPO on the same lists expanded to best-vs-rest pairs (3 pairs, 6(P+R) tokens).
  Figure: lists/s. Target: rankalign >= 3x TRL.

Both sides get the same batch in pairs (``pairs``: 4 pairs; ``lists_k4``: 2 lists = 6 best-vs-rest
pairs for TRL), the same optimiser settings, no bf16, no gradient checkpointing, and a reference that is
computed once before training (TRL ``precompute_ref_log_probs=True``; rankalign's reference cache,
empty at the start so its cost is in the end-to-end time). Each side runs in its own subprocess so that
its peak RSS (``ru_maxrss``) is its own. Each side runs as it ships: on the CPU rankalign's trainer tells
glibc to keep freed memory (:mod:`rankalign.engine.cpu_memory`, no page faults per step) and TRL does not;
``--peer-retain-memory`` gives TRL the same setting, ``RANKALIGN_CPU_MALLOC=default`` takes it from
rankalign.

Reported per side: steady-state samples/s (the steps after ``--warmup``), end-to-end time (trainer
construction, reference pass and training), tokens/s (tokens the model actually runs, steady state),
peak RSS, and the compute efficiency: achieved FLOP/s = 6 * params * tokens / step time, as a share of
this machine's float32 matmul FLOP/s (measured with torch.matmul). ``params`` is the full parameter
count (the issue's definition), so for rankalign, which applies the output head only at the positions
that predict response tokens, this figure overstates the work done and can exceed 100%. The
``useful`` column counts the same work for both sides: 6 x (parameters other than the embedding and
the head) x tokens + 6 x head parameters x predicted response tokens (the embedding is a lookup).

Real model: ``--model smollm2-135m`` (any :func:`rankalign.engine.resolve_model` spec; fetch it first with
``rankalign models fetch smollm2-135m``) runs the cases ``pairs_smollm2`` and ``lists_k4_smollm2`` on that
model and its tokenizer instead: the texts are built from words that are exactly one token each in that
tokenizer, so the token lengths are the same (prompt 256, responses 64 with EOS). Targets on SmolLM2
(issue 9): pairs >= 3.0x, lists_k4 >= 6.5x, useful share >= 60%, peak memory <= 60% of TRL's. The
RESULT lines then also carry each side's useful share, peak memory and the layout rankalign used.

``--device cuda --bf16`` runs both sides on a GPU in bf16 autocast (peak memory: ``torch.cuda`` peak
allocated; FLOP/s share against a bf16 matmul); see ``benchmarks/gpu_bench.sh``.

Run: ``.venv/bin/python benchmarks/bench_train_vs_trl.py``. Default: 1 warm-up step, then at least 4 timed
steps per run, more (over the same lists again, at most 32) until the timed steps span 60 s
(``--min-seconds``), so that the faster side's mean is not taken over a few seconds while the other's spans
minutes; 2 rounds (``--rounds``): each side runs twice in turn, TRL, rankalign, rankalign, TRL, and the runs
are pooled, since this machine's speed drifts by 20-30% over minutes and the two sides do not feel it alike.
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

PROMPT_TOKENS = 256
RESPONSE_TOKENS = 64  # 63 words + EOS
VOCAB_WORDS = 8000
MODEL = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
             num_key_value_heads=6)
CASES = ("pairs", "lists_k4")


# ------------------------------------------------------------------------------------------ fixtures
def build_word_tokenizer():
    """One token per whitespace-separated word ``w0 .. w{VOCAB_WORDS-1}`` plus <pad>, <bos>, <eos>, <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for i in range(VOCAB_WORDS):
        vocab[f"w{i}"] = len(vocab)
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def build_model(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=1024, tie_word_embeddings=False,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, attention_dropout=0.0, **MODEL)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def single_token_words(tokenizer, limit: int = VOCAB_WORDS) -> list[str]:
    """Up to ``limit`` alphabetic words that ``tokenizer`` encodes as exactly one token after a space, so
    that a text of n space-separated words is n tokens (checked on a sample by :func:`check_lengths`)."""
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        word = tokenizer.convert_tokens_to_string([token])
        if word.startswith(" ") and word[1:].isalpha() and word[1:].isascii() and len(word) > 2:
            if len(tokenizer(word, add_special_tokens=False)["input_ids"]) == 1:
                words.append(word[1:])
                if len(words) == limit:
                    break
    return words


def make_lists(n_lists: int, k: int, seed: int = 0, vocabulary: list[str] | None = None):
    """``n_lists`` prompts of PROMPT_TOKENS words with ``k`` responses of RESPONSE_TOKENS - 1 words each
    (every word one token; the words ``w0 ..`` of the word-level tokenizer unless ``vocabulary`` is given)."""
    import random

    rng = random.Random(seed)
    vocabulary = vocabulary or [f"w{i}" for i in range(VOCAB_WORDS)]

    def words(n):
        return " ".join(rng.choice(vocabulary) for _ in range(n))

    prompt_lead = " " if vocabulary[0] != "w0" else ""  # a real BPE tokenizer: every word after a space
    return [(prompt_lead + words(PROMPT_TOKENS), [" " + words(RESPONSE_TOKENS - 1) for _ in range(k)])
            for _ in range(n_lists)]


def check_lengths(tokenizer, lists) -> None:
    """Every prompt is PROMPT_TOKENS tokens and every response RESPONSE_TOKENS - 1 (before EOS)."""
    prompt, responses = lists[0]
    got = (len(tokenizer(prompt, add_special_tokens=False)["input_ids"]),
           [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses])
    if got != (PROMPT_TOKENS, [RESPONSE_TOKENS - 1] * len(responses)):
        raise RuntimeError(f"token lengths {got}, expected {PROMPT_TOKENS} and {RESPONSE_TOKENS - 1}")


def vocabulary_for(args, tokenizer) -> list[str] | None:
    return single_token_words(tokenizer) if args.model else None


def case_shape(case: str, args) -> dict:
    """Lists, responses per list, rankalign batch (lists), TRL batch (pairs), pairs per list for TRL."""
    steps = args.warmup + args.steps
    if case.startswith("pairs"):
        return dict(k=2, ours_batch=args.pairs_batch, trl_batch=args.pairs_batch, trl_pairs_per_list=1,
                    n_lists=steps * args.pairs_batch)
    lists_per_step = args.lists_batch
    return dict(k=4, ours_batch=lists_per_step, trl_batch=3 * lists_per_step, trl_pairs_per_list=3,
                n_lists=steps * lists_per_step)


class StepTimer:
    """A TrainerCallback recording the wall time at the end of every optimiser step.

    It stops training once ``steps`` timed steps (after ``warmup``) have run **and** they span at least
    ``min_seconds``: a side whose step is short keeps stepping (over the same lists again; the trainer's
    ``max_steps`` is only the cap) until its timed window is as long as that, so that its mean is not
    taken over a few seconds of this machine's drifting speed while the other side's spans minutes."""

    def __init__(self, warmup: int = 0, steps: int = 0, min_seconds: float = 0.0):
        import transformers

        outer = self

        class _Callback(transformers.TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.begin = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                outer.ends.append(time.perf_counter())
                if outer.enough():
                    control.should_training_stop = True

        self.callback = _Callback()
        self.ends: list[float] = []
        self.begin = None
        self.warmup, self.steps, self.min_seconds = warmup, steps, min_seconds

    def _window_start(self, warmup: int) -> float:
        return self.ends[warmup - 1] if warmup else self.begin

    def enough(self) -> bool:
        """Whether the timed steps are at least ``steps`` and span at least ``min_seconds``."""
        timed = len(self.ends) - self.warmup
        return timed >= max(self.steps, 1) and self.ends[-1] - self._window_start(self.warmup) >= self.min_seconds

    def steady_seconds_per_step(self, warmup: int) -> float:
        ends = self.ends
        if len(ends) <= warmup:
            raise RuntimeError(f"only {len(ends)} steps ran, need more than warmup={warmup}")
        return (ends[-1] - self._window_start(warmup)) / (len(ends) - warmup)

    def step_seconds(self) -> list[float]:
        """Wall time of every step, warm-up included (the first from the start of training)."""
        marks = [self.begin] + self.ends
        return [round(b - a, 2) for a, b in zip(marks, marks[1:])]


def common_training_arguments(output_dir: str, args, batch: int) -> dict:
    return dict(output_dir=output_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
                learning_rate=1e-5, max_steps=args.warmup + max(args.steps, args.max_timed_steps),
                lr_scheduler_type="constant",
                warmup_steps=0, logging_steps=1000, save_strategy="no", report_to="none", bf16=bool(args.bf16),
                fp16=False, gradient_checkpointing=False, disable_tqdm=True, dataloader_num_workers=0,
                seed=0, use_cpu=args.device == "cpu", remove_unused_columns=False)


def load_benchmark_model(model_dir: str):
    """The benchmark's model in float32 (bf16 runs use autocast), sdpa attention where available."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", attn_implementation="sdpa")


# --------------------------------------------------------------------------------------------- workers
def run_trl(case: str, args, model_dir: str, workdir: str) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    shape = case_shape(case, args)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    lists = make_lists(shape["n_lists"], shape["k"], vocabulary=vocabulary_for(args, tokenizer))
    check_lengths(tokenizer, lists)
    for prompt, responses in lists:
        for loser in responses[1:]:  # best (column 0) vs each of the rest
            rows.append({"prompt": prompt, "chosen": responses[0], "rejected": loser})
    dataset = Dataset.from_list(rows)
    started = time.perf_counter()
    model = load_benchmark_model(model_dir)
    config = DPOConfig(**common_training_arguments(workdir, args, shape["trl_batch"]), beta=0.1,
                       loss_type=["sigmoid"], precompute_ref_log_probs=True, max_length=None,
                       precompute_ref_batch_size=shape["trl_batch"])
    timer = StepTimer(args.warmup, args.steps, args.min_seconds)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=[timer.callback])
    first = trainer.train_dataset[0]
    tokens_per_pair = 2 * len(first["prompt_ids"]) + len(first["chosen_ids"]) + len(first["rejected_ids"])
    trainer.train()
    end_to_end = time.perf_counter() - started
    step = timer.steady_seconds_per_step(args.warmup)
    lists_per_step = shape["trl_batch"] / shape["trl_pairs_per_list"]
    return dict(side="trl", case=case, seconds_per_step=step, samples_per_s=lists_per_step / step,
                tokens_per_step=tokens_per_pair * shape["trl_batch"],
                tokens_per_s=tokens_per_pair * shape["trl_batch"] / step, end_to_end_s=end_to_end,
                params=sum(p.numel() for p in model.parameters()), steps=len(timer.ends), warmup=args.warmup,
                response_tokens_per_step=(len(first["chosen_ids"]) + len(first["rejected_ids"])) * shape["trl_batch"],
                batch=f"{shape['trl_batch']} pairs", tokens_per_pair=tokens_per_pair,
                gradient_checkpointing=bool(getattr(trainer.model, "is_gradient_checkpointing", False)),
                step_seconds=timer.step_seconds())


def run_ours(case: str, args, model_dir: str, workdir: str) -> dict:
    import transformers
    from transformers import AutoTokenizer

    from rankalign.engine import TokenizedList
    from rankalign.train.trainer import PreferenceTrainer

    shape = case_shape(case, args)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lists = []
    texts = make_lists(shape["n_lists"], shape["k"], vocabulary=vocabulary_for(args, tokenizer))
    check_lengths(tokenizer, texts)
    for index, (prompt, responses) in enumerate(texts):
        prompt_ids = tokenizer(prompt)["input_ids"]
        response_ids = [tokenizer(r)["input_ids"] + [tokenizer.eos_token_id] for r in responses]
        lists.append(TokenizedList(prompt_ids=prompt_ids, response_ids=response_ids,
                                   ranks=list(range(shape["k"])), index=index))
    tokens_per_list = len(lists[0].prompt_ids) + sum(len(r) for r in lists[0].response_ids)
    started = time.perf_counter()
    model = load_benchmark_model(model_dir)
    if args.declare_shared:  # diagnosis only: the engine's documented declaration, skipping its probe
        model.rankalign_shared_layout = True
    training_args = transformers.TrainingArguments(**common_training_arguments(workdir, args, shape["ours_batch"]))
    timer = StepTimer(args.warmup, args.steps, args.min_seconds)
    objective = "dpo" if case.startswith("pairs") else "pl_dpo"
    trainer = PreferenceTrainer(model, training_args, lists, objective=objective, loss_params={"beta": 0.1},
                                layout="shared", reference_cache_dir=str(Path(workdir) / "ref_cache"),
                                reference_batch_size=shape["ours_batch"], pad_token_id=tokenizer.pad_token_id,
                                callbacks=[timer.callback])
    trainer.train()
    end_to_end = time.perf_counter() - started
    step = timer.steady_seconds_per_step(args.warmup)
    return dict(side="rankalign", case=case, seconds_per_step=step, samples_per_s=shape["ours_batch"] / step,
                tokens_per_step=tokens_per_list * shape["ours_batch"],
                tokens_per_s=tokens_per_list * shape["ours_batch"] / step, end_to_end_s=end_to_end,
                params=sum(p.numel() for p in model.parameters()), steps=len(timer.ends), warmup=args.warmup,
                response_tokens_per_step=sum(len(r) for r in lists[0].response_ids) * shape["ours_batch"],
                batch=f"{shape['ours_batch']} lists", tokens_per_list=tokens_per_list, layout=trainer.layout,
                step_seconds=timer.step_seconds())


def worker_main(args) -> None:
    if args.worker == "ours" or args.peer_mkl_avx2:
        # before torch, as `rankalign train` does: on an AMD CPU, oneMKL's AVX2 kernels (rankalign/_mkl_avx2.py)
        import rankalign  # noqa: F401
    import torch

    from rankalign import _mkl_avx2
    from rankalign.engine import cpu_memory

    torch.set_num_threads(args.threads)
    if args.worker == "trl" and args.peer_retain_memory:
        cpu_memory.retain_freed_memory()  # what rankalign's trainer does by itself on the CPU
    with tempfile.TemporaryDirectory(prefix=f"bench_{args.worker}_") as workdir:
        run = run_trl if args.worker == "trl" else run_ours
        result = run(args.case, args, args.model_dir, workdir)
    result["retains_memory"] = bool(cpu_memory._applied)
    result["mkl_avx2"] = _mkl_avx2.describe().startswith("oneMKL's AVX2")
    if args.device == "cpu":
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    else:  # the GPU's memory is the one that limits: peak allocated by torch
        result["peak_rss_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result_file).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------- driver
def matmul_flops(threads: int, n: int = 1024, repeats: int = 20, device: str = "cpu", bf16: bool = False) -> float:
    """Matmul throughput of this machine (FLOP/s; float32, or bf16 on a GPU), best of three timed blocks."""
    import torch

    torch.set_num_threads(threads)
    if device != "cpu":
        n, repeats = 8192, 50
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best


def spawn(side: str, case: str, args, model_dir: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_file = handle.name
    command = [sys.executable, __file__, "--worker", side, "--case", case, "--model-dir", model_dir,
               "--result-file", result_file, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--min-seconds", str(args.min_seconds), "--max-timed-steps", str(args.max_timed_steps),
               "--pairs-batch", str(args.pairs_batch), "--lists-batch", str(args.lists_batch),
               "--threads", str(args.threads), "--device", args.device]
    if args.model:
        command += ["--model", args.model]
    if args.bf16:
        command.append("--bf16")
    if args.declare_shared:
        command.append("--declare-shared")
    if args.peer_retain_memory:
        command.append("--peer-retain-memory")
    if args.peer_mkl_avx2:
        command.append("--peer-mkl-avx2")
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-8000:])
        raise RuntimeError(f"{side} worker for case {case} failed (exit {completed.returncode})")
    result = json.loads(Path(result_file).read_text())
    os.unlink(result_file)
    return result


def pooled(runs: list[dict]) -> dict:
    """One side's figures over its runs: the mean of the runs' seconds per step (each run's over its own
    timed window) and end-to-end times, the largest peak memory, every run's step times."""
    row = dict(runs[0])
    row["run_timed_steps"] = [r["steps"] - r["warmup"] for r in runs]
    if len(runs) == 1:
        return row
    samples_per_step = runs[0]["samples_per_s"] * runs[0]["seconds_per_step"]  # the same in every run
    row["seconds_per_step"] = sum(r["seconds_per_step"] for r in runs) / len(runs)
    row["samples_per_s"] = samples_per_step / row["seconds_per_step"]
    row["tokens_per_s"] = row["tokens_per_step"] / row["seconds_per_step"]
    row["end_to_end_s"] = sum(r["end_to_end_s"] for r in runs) / len(runs)
    row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    row["step_seconds"] = [s for r in runs for s in r["step_seconds"]]
    row["run_samples_per_s"] = [round(r["samples_per_s"], 4) for r in runs]
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--steps", type=int, default=4, help="timed optimiser steps per side and case")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--min-seconds", type=float, default=60.0,
                        help="a side keeps stepping (over the same lists again) until its timed steps span at "
                             "least this long, up to --max-timed-steps; 0: exactly --steps")
    parser.add_argument("--max-timed-steps", type=int, default=32, help="cap on the timed steps of one run")
    parser.add_argument("--rounds", type=int, default=2,
                        help="runs per side and case, in turn (TRL, rankalign, rankalign, TRL, ...), pooled, so "
                             "that a change in the machine's speed reaches both sides alike")
    parser.add_argument("--pairs-batch", type=int, default=4, help="pairs per step in the pairs case")
    parser.add_argument("--lists-batch", type=int, default=2, help="lists of 4 per step in lists_k4 (TRL: x3 pairs)")
    parser.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 16)))
    parser.add_argument("--model", help="a real model spec (e.g. smollm2-135m) instead of the built-in tiny Llama")
    parser.add_argument("--tag", help="case suffix for --model (default: the spec's first word, smollm2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (GPU)")
    parser.add_argument("--declare-shared", action="store_true",
                        help="diagnosis only: declare the shared layout (model.rankalign_shared_layout) instead "
                             "of letting the engine's probe decide; the reported ratios are without it")
    parser.add_argument("--peer-retain-memory", action="store_true",
                        help="TRL's worker also keeps freed memory (rankalign.engine.retain_freed_memory), as "
                             "rankalign's trainer does by itself on the CPU")
    parser.add_argument("--peer-mkl-avx2", action="store_true",
                        help="TRL's worker also imports rankalign before torch, so that on an AMD CPU oneMKL runs "
                             "its AVX2 kernels (rankalign/_mkl_avx2.py), as rankalign's side does")
    parser.add_argument("--worker", choices=("trl", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    if args.steps < 1 or args.max_timed_steps < 1 or args.min_seconds < 0:
        parser.error("--steps and --max-timed-steps must be >= 1 and --min-seconds >= 0")
    if args.worker:
        worker_main(args)
        return
    # the matmul probe below measures this machine's matrix speed with oneMKL's best kernels: on an AMD CPU
    # that takes rankalign's import before torch's (rankalign/_mkl_avx2.py), as rankalign's worker has it
    import rankalign  # noqa: F401

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in cases:
        if case not in CASES:
            parser.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    peak_flops = matmul_flops(args.threads, device=args.device, bf16=args.bf16)
    precision = "bf16" if args.bf16 else "float32"
    print(f"machine: {os.cpu_count()} CPUs, {args.threads} torch threads, device {args.device}; {precision} "
          f"matmul {peak_flops / 1e9:.1f} GFLOP/s (torch.matmul; {rankalign._mkl_avx2.describe()})")
    print(f"steps per side and case: {args.warmup} warm-up + {args.steps} timed or more, until the timed steps span "
          f"{args.min_seconds:g} s (at most {max(args.steps, args.max_timed_steps)}); {args.rounds} round(s); "
          f"prompt {PROMPT_TOKENS} tokens, "
          f"responses {RESPONSE_TOKENS} tokens")
    results = []
    tag = ""
    with tempfile.TemporaryDirectory(prefix="bench_model_") as scratch:
        if args.model:
            from rankalign.engine.sources import load_causal_lm, resolve_model

            source = resolve_model(args.model)
            model_dir = source.path
            model = load_causal_lm(source)
            tag = "_" + (args.tag or "".join(ch for ch in args.model.split("-")[0].lower() if ch.isalnum()))
            description = f"{args.model} ({model_dir})"
        else:
            model_dir = scratch
            tokenizer = build_word_tokenizer()
            model = build_model(len(tokenizer))
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            description = f"Llama-style {MODEL}, vocab {len(tokenizer)}"
        params = sum(p.numel() for p in model.parameters())  # a tied head is counted once
        head_params = model.get_output_embeddings().weight.numel()
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        del model
        print(f"model: {description}, {params / 1e6:.1f} M parameters{', tied head' if tied else ''}, float32")
        for case in cases:
            runs = {"trl": [], "ours": []}
            for number in range(args.rounds):  # in turn: TRL, rankalign, rankalign, TRL, ...
                for side in (("trl", "ours"), ("ours", "trl"))[number % 2]:
                    runs[side].append(spawn(side, case, args, model_dir))
            results.append((case + tag, pooled(runs["trl"]), pooled(runs["ours"])))

    unit = {"pairs": "pairs/s", "lists_k4": "lists/s"}
    header = (f"{'case':<17} {'side':<10} {'batch':<9} {'samples/s':>10} {'s/step':>8} {'end-to-end s':>13} "
              f"{'tokens/s':>9} {'peak mem MB':>12} {'FLOP/s share':>13} {'useful':>7}")
    print()
    print(header)
    print("-" * len(header))
    for case, peer, ours in results:
        for row in (peer, ours):
            achieved = 6 * row["params"] * row["tokens_per_step"] / row["seconds_per_step"]
            row["compute_efficiency"] = achieved / peak_flops
            # the embedding is a lookup: untied, embedding and head have the same size; tied, one matrix
            body = row["params"] - (1 if tied else 2) * head_params
            useful = 6 * body * row["tokens_per_step"] + 6 * head_params * row["response_tokens_per_step"]
            row["useful_efficiency"] = useful / row["seconds_per_step"] / peak_flops
            print(f"{case:<17} {row['side']:<10} {row['batch']:<9} {row['samples_per_s']:>10.3f} "
                  f"{row['seconds_per_step']:>8.2f} {row['end_to_end_s']:>13.1f} {row['tokens_per_s']:>9.0f} "
                  f"{row['peak_rss_mb']:>12.0f} {row['compute_efficiency']:>12.1%} {row['useful_efficiency']:>7.1%}")
    print()
    for case, peer, ours in results:
        print(f"{case}: glibc malloc keeps freed memory: TRL {'yes' if peer['retains_memory'] else 'no'}, "
              f"rankalign {'yes' if ours['retains_memory'] else 'no'} (rankalign.engine.cpu_memory; "
              f"RANKALIGN_CPU_MALLOC=default turns it off, --peer-retain-memory turns it on for TRL)")
        print(f"{case}: oneMKL's AVX2 kernels on an AMD CPU: TRL {'yes' if peer['mkl_avx2'] else 'no'}, "
              f"rankalign {'yes' if ours['mkl_avx2'] else 'no'} (rankalign/_mkl_avx2.py; RANKALIGN_MKL_AVX2=off "
              f"turns it off, --peer-mkl-avx2 turns it on for TRL)")
    print(f"seconds per step, the first {args.warmup} of each run untimed:")
    for case, peer, ours in results:
        for row in (peer, ours):
            print(f"  {case:<17} {row['side']:<10} " + " ".join(f"{s:.2f}" for s in row["step_seconds"]))
    print("timed steps per run (in turn):")
    for case, peer, ours in results:
        print(f"  {case:<17} TRL {peer['run_timed_steps']}, rankalign {ours['run_timed_steps']}")
    if args.rounds > 1:
        print("samples/s per run (in turn):")
        for case, peer, ours in results:
            print(f"  {case:<17} TRL {peer['run_samples_per_s']}, rankalign {ours['run_samples_per_s']}")
    print()
    for case, peer, ours in results:
        ratio = ours["samples_per_s"] / peer["samples_per_s"]
        memory = peer["peak_rss_mb"] / ours["peak_rss_mb"]
        print(f"{case}: rankalign/TRL samples/s = {ratio:.2f}x; TRL/rankalign peak RSS = {memory:.2f}x; "
              f"end-to-end TRL {peer['end_to_end_s']:.1f}s vs rankalign {ours['end_to_end_s']:.1f}s")
    for case, peer, ours in results:
        line = {"case": case, "peer": round(peer["samples_per_s"], 4), "ours": round(ours["samples_per_s"], 4),
                "unit": unit[case.removesuffix(tag) if tag else case],
                "ratio": round(ours["samples_per_s"] / peer["samples_per_s"], 3)}
        if tag:
            line.update(peer_useful_share=round(peer["useful_efficiency"], 3),
                        ours_useful_share=round(ours["useful_efficiency"], 3),
                        peer_peak_mb=round(peer["peak_rss_mb"]), ours_peak_mb=round(ours["peak_rss_mb"]),
                        memory_share=round(ours["peak_rss_mb"] / peer["peak_rss_mb"], 3),
                        layout=ours.get("layout"), declared_shared=bool(args.declare_shared), rounds=args.rounds,
                        peer_retains_memory=peer["retains_memory"], ours_retains_memory=ours["retains_memory"],
                        peer_mkl_avx2=peer["mkl_avx2"], ours_mkl_avx2=ours["mkl_avx2"],
                        device=args.device, precision=precision)
        print("RESULT " + json.dumps(line))


if __name__ == "__main__":
    main()
