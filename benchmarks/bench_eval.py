"""``rankalign eval``'s scoring against a plain transformers forward, on a real model (issue 9).

Both sides score the same pairs, in the same batches of pairs, with the same model:

* peer: how TRL's DPOTrainer (``concatenated_forward``) and RewardBench score a DPO model: one forward over
  prompt+chosen and prompt+rejected rows (right-padded), the full ``[rows, T, vocab]`` logits, then the
  summed log-probs of the response tokens (gather minus logsumexp, TRL's ``selective_log_softmax``);
* rankalign: :func:`rankalign.engine.score_lists`, the engine's one list-scoring function that
  ``rankalign eval`` calls (prefix-shared layout when the engine's probe accepts the model, the output
  head only at response positions).

Texts are built from words that are one token each in the model's tokenizer (prompt 256 tokens,
responses 64 with EOS), as in ``bench_train_vs_trl.py``. Reported: pairs/s per side (best of
``--repeats`` passes over all pairs, after one warm-up batch), the largest difference between the two
sides' log-probs (they must agree to float32 rounding), and ``RESULT`` with case ``eval_<model>``.
Target (issue 9): rankalign >= 1.5x the plain forward on SmolLM2-135M-Instruct. Both sides run in one
process and so on the same matrix kernels (rankalign is imported before torch, as the ``rankalign`` command
does: on an AMD CPU both get oneMKL's AVX2 kernels; the header says which).

Run: ``python benchmarks/bench_eval.py --model smollm2-135m`` (after ``rankalign models fetch smollm2-135m``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_vs_trl import check_lengths, make_lists, single_token_words  # noqa: E402


def plain_forward_logps(model, batch_pairs, pad_token_id: int):
    """``[B, 2]`` summed response log-probs of (chosen, rejected) from one padded forward over 2B rows."""
    import torch

    rows, masks = [], []
    for prompt_ids, chosen_ids, rejected_ids in batch_pairs:
        for response in (chosen_ids, rejected_ids):
            rows.append(prompt_ids + response)
            masks.append([0] * len(prompt_ids) + [1] * len(response))
    width = max(len(r) for r in rows)
    device = next(model.parameters()).device
    input_ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows], device=device)
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    loss_mask = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device)[:, 1:].bool()
    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    sums = (token_logps * loss_mask).sum(-1)
    return sums.view(-1, 2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a model spec (rankalign.engine.resolve_model)")
    parser.add_argument("--tag", help="case suffix (default: the spec's first word, smollm2)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8, help="pairs per forward, both sides")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 16)))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (GPU)")
    args = parser.parse_args(argv)

    # before torch, as the rankalign command does: on an AMD CPU oneMKL's AVX2 kernels (rankalign/_mkl_avx2.py);
    # both sides run in this process, so they share whichever kernels oneMKL picked
    import rankalign  # noqa: I001  (first: it must come before torch)
    import numpy as np
    import torch

    from rankalign.engine import TokenizedList, choose_layout, score_lists
    from rankalign.engine.sources import load_causal_lm, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    model = load_causal_lm(source).to(args.device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    texts = make_lists(args.pairs, 2, seed=1, vocabulary=single_token_words(tokenizer))
    check_lengths(tokenizer, texts)
    lists, pairs = [], []
    for index, (prompt, responses) in enumerate(texts):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                        for r in responses]
        lists.append(TokenizedList(prompt_ids=prompt_ids, response_ids=response_ids, ranks=[0, 1], index=index))
        pairs.append((prompt_ids, *response_ids))
    autocast = torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.bf16)

    def sync():
        if args.device != "cpu":
            torch.cuda.synchronize()

    def run_peer():
        out = []
        with torch.inference_mode(), autocast:
            for start in range(0, len(pairs), args.batch):
                out.append(plain_forward_logps(model, pairs[start:start + args.batch], pad))
        sync()
        return torch.cat(out).double().cpu().numpy()

    precision = "bf16" if args.bf16 else "fp32"

    def run_ours(subset=lists):
        out, _ = score_lists(model, subset, batch_size=args.batch, pad_token_id=pad, precision=precision,
                             progress=False, announce=False).padded()
        sync()
        return out.numpy()

    layout = choose_layout(model, "auto")  # says on stderr which layout and why
    with torch.inference_mode(), autocast:  # warm-up: one batch each
        plain_forward_logps(model, pairs[:args.batch], pad)
    run_ours(lists[:args.batch])
    seconds = {"peer": float("inf"), "ours": float("inf")}
    results = {}
    for _ in range(args.repeats):
        for side, run in (("peer", run_peer), ("ours", run_ours)):
            started = time.perf_counter()
            results[side] = run()
            seconds[side] = min(seconds[side], time.perf_counter() - started)
    peer, ours = results["peer"], results["ours"]
    difference = np.abs(peer - ours)
    relative = float((difference / np.abs(peer)).max())
    rate = {side: len(pairs) / seconds[side] for side in seconds}
    precision = "bf16 autocast" if args.bf16 else "float32"
    tag = args.tag or "".join(ch for ch in args.model.split("-")[0].lower() if ch.isalnum())
    print(f"model {args.model} ({source.path}); device {args.device}, {precision}, {args.threads} threads; "
          f"{len(pairs)} pairs, {args.batch} per batch; prompt 256 tokens, responses 64; rankalign layout {layout}")
    if args.device == "cpu":
        print(f"matrix kernels, both sides: {rankalign._mkl_avx2.describe()}")
    print(f"{'side':<28} {'pairs/s':>9} {'seconds':>9}")
    print(f"{'plain forward (TRL-style)':<28} {rate['peer']:>9.2f} {seconds['peer']:>9.2f}")
    print(f"{'rankalign eval scoring':<28} {rate['ours']:>9.2f} {seconds['ours']:>9.2f}")
    print(f"agreement: max |Δ log π| = {difference.max():.2e} (max relative {relative:.2e}); "
          f"mean log π(chosen) = {peer[:, 0].mean():.2f}")
    if relative > (2e-2 if args.bf16 else 1e-4):
        print("WARNING: the two sides disagree by more than rounding")
    print("RESULT " + json.dumps({"case": f"eval_{tag}", "peer": round(rate["peer"], 4), "ours": round(rate["ours"], 4),
                                  "unit": "pairs/s", "ratio": round(rate["ours"] / rate["peer"], 3),
                                  "max_abs_diff": float(f"{difference.max():.3g}"),
                                  "max_rel_diff": float(f"{relative:.3g}"), "layout": layout,
                                  "device": args.device, "precision": precision}))


if __name__ == "__main__":
    main()
