"""`rankalign eval` end to end on a tiny model saved to a temporary directory.

Expected values are recomputed here independently of the engine's packing: every (prompt, response) is
run through the model as one plain sequence, and the metrics are written out with their formulas.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
engine = pytest.importorskip("rankalign.engine")
if not hasattr(engine, "tiny_causal_lm"):
    pytest.skip("rankalign.engine.tiny_causal_lm is not available", allow_module_level=True)

from click.testing import CliRunner  # noqa: E402

from rankalign.data.records import RankedList  # noqa: E402
from rankalign.eval.cli import eval_command  # noqa: E402

WORDS = "the cat dog sat ran on a mat log big small red blue".split()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_world")
    rng = np.random.default_rng(0)
    pairs = []
    while len(pairs) < 10:
        prompt = " ".join(rng.choice(WORDS, 3))
        chosen, rejected = (" ".join(rng.choice(WORDS, int(n))) for n in rng.integers(2, 5, size=2))
        if chosen != rejected:
            pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                          "rate": float(np.round(rng.uniform(0.55, 0.95), 2)),
                          "annotator": "ann_a" if len(pairs) % 3 else "ann_b"})
    pairs_path = root / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    lists = [{"prompt": "the cat", "candidates": ["sat on a mat", "ran", "big red dog"], "ranks": [0, 1, 1]},
             {"prompt": "a dog", "candidates": ["ran on a log", "sat"], "ranks": [1, 0], "weight": 3.0}]
    lists_path = root / "lists.jsonl"
    lists_path.write_text("".join(json.dumps(x) + "\n" for x in lists))

    texts = [" ".join(WORDS)] + [f"{p['prompt']} {p['chosen']} {p['rejected']}" for p in pairs]
    tokenizer = engine.build_tokenizer(texts, vocab_size=300)
    policy = engine.tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=0)
    reference = engine.tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=1)
    policy.save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    reference.save_pretrained(root / "reference")
    return {"root": root, "pairs": pairs, "pairs_path": pairs_path, "lists": lists, "lists_path": lists_path,
            "tokenizer": tokenizer, "policy": policy, "reference": reference}


def _plain_logp(model, prompt_ids, response_ids) -> float:
    """log pi(response | prompt) from one ordinary forward pass over prompt + response."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    token_logps = logprobs[torch.arange(len(targets)), targets]
    return float(token_logps[len(prompt_ids) - 1:].sum())


def _run(args):
    result = CliRunner().invoke(eval_command, [str(a) for a in args], catch_exceptions=False)
    return result


def test_eval_json_matches_independent_computation(world):
    root, pairs = world["root"], world["pairs"]
    records = [RankedList(prompt=p["prompt"], candidates=[p["chosen"], p["rejected"]], ranks=[0, 1]) for p in pairs]
    lists, _ = engine.tokenize_records(world["tokenizer"], records)
    pw = np.array([_plain_logp(world["policy"], t.prompt_ids, t.response_ids[0]) for t in lists])
    pl = np.array([_plain_logp(world["policy"], t.prompt_ids, t.response_ids[1]) for t in lists])
    rw = np.array([_plain_logp(world["reference"], t.prompt_ids, t.response_ids[0]) for t in lists])
    rl = np.array([_plain_logp(world["reference"], t.prompt_ids, t.response_ids[1]) for t in lists])
    alpha = np.array([p["rate"] for p in pairs])
    beta = 0.5

    result = _run(["--policy", root / "policy", "--reference", root / "reference", "--data", world["pairs_path"],
                   "--beta", beta, "--alpha-field", "rate", "--json", "--batch-size", 3, "--group-by", "annotator"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    n = len(pairs)
    assert out["pairs"] == n and out["pairs_with_alpha"] == n and out["records_read"] == n

    def share_and_se(indicator):
        indicator = indicator.astype(float)
        return indicator.mean(), indicator.std(ddof=1) / math.sqrt(n)

    # float32 model vs float64 recomputation: compare values, and pick strict inequalities far from ties
    ra, ra_se = share_and_se(pw > pl)
    length_w = np.array([len(t.response_ids[0]) for t in lists])
    length_l = np.array([len(t.response_ids[1]) for t in lists])
    assert out["length_normalised_ranking_accuracy"]["value"] == pytest.approx(np.mean(pw / length_w > pl / length_l))
    assert out["ranking_accuracy"]["value"] == pytest.approx(ra)
    if ra_se > 0:
        assert out["ranking_accuracy"]["se"] == pytest.approx(ra_se)
    assert out["reference_ranking_accuracy"]["value"] == pytest.approx(np.mean(rw > rl))
    h = (pw - rw) - (pl - rl)
    assert out["reward_accuracy"]["value"] == pytest.approx(np.mean(h > 0))
    assert out["margin"]["value"] == pytest.approx(beta * h.mean(), abs=1e-4)
    assert out["margin"]["se"] == pytest.approx(beta * h.std(ddof=1) / math.sqrt(n), abs=1e-4)
    # idealised (Chen et al. 2024): log pi_ref(w) - log pi_ref(l) + (1/beta) log(alpha / (1 - alpha)) > 0
    ideal = (rw - rl) + np.log(alpha / (1 - alpha)) / beta > 0
    assert out["idealised_ranking_accuracy"]["value"] == pytest.approx(ideal.mean())
    assert out["alignment_gap"]["value"] == pytest.approx(ideal.mean() - ra)
    # per-annotator ranking accuracy and the worst group
    annotators = np.array([p["annotator"] for p in pairs])
    grouped = out["groups"]["ranking_accuracy"]
    by_group = {g: np.mean((pw > pl)[annotators == g]) for g in ("ann_a", "ann_b")}
    for g, value in by_group.items():
        assert grouped["groups"][g]["mean"] == pytest.approx(value)
        assert grouped["groups"][g]["n"] == int((annotators == g).sum())
    assert grouped["worst_value"] == pytest.approx(min(by_group.values()))
    # likelihood displacement of the chosen responses, reference -> policy
    chosen = out["likelihood_displacement"]["chosen"]
    assert chosen["mean_change"] == pytest.approx((pw - rw).mean(), abs=1e-4)
    assert chosen["share_decreased"] == pytest.approx(np.mean(pw < rw))
    # ECE of sigma(beta h) against alpha, both orientations, 10 equal-width bins
    p = 1 / (1 + np.exp(-beta * h))
    probs, labels = np.concatenate([p, 1 - p]), np.concatenate([alpha, 1 - alpha])
    bins = np.minimum((probs * 10).astype(int), 9)
    ece = sum(abs(labels[bins == b].mean() - probs[bins == b].mean()) * (bins == b).sum()
              for b in np.unique(bins)) / probs.size
    assert out["ece"] == pytest.approx(ece, abs=1e-5)


def test_eval_ranked_lists_table_and_plot(world):
    root = world["root"]
    plot = root / "reliability.png"
    result = _run(["--policy", root / "policy", "--reference", root / "reference", "--data", world["lists_path"],
                   "--alpha", "0.8", "--plot", plot])
    assert result.exit_code == 0, result.output
    assert "ranking accuracy" in result.stdout and "idealised ranking accuracy" in result.stdout
    # 2 ordered pairs in list 1 (the tie is left out), 1 in list 2
    assert "3 ordered pairs from 2 lists" in " ".join(result.stdout.split())
    assert "1 records carry a weight other than 1" in " ".join(result.stdout.split())
    result = _run(["--policy", root / "policy", "--reference", root / "reference", "--data", world["pairs_path"],
                   "--group-by", "annotator"])
    assert result.exit_code == 0, result.output
    assert "annotator=ann_b" in result.stdout and "worst group" in result.stdout
    assert "alignment gap" not in result.stdout and "needs true preference rates" in result.stdout
    assert plot.read_bytes()[:4] == b"\x89PNG"

    result = _run(["--model", root / "policy", "--data", world["lists_path"], "--json", "--max-records", "1"])
    out = json.loads(result.stdout)
    assert out["pairs"] == 2 and out["records_read"] == 1 and "reward_accuracy" not in out
    assert "--model is deprecated, use --policy" in result.stderr  # the old spelling still works

    # the reference log-probs through the engine's cache give the same numbers, and a second run reuses it
    args = ["--policy", root / "policy", "--reference", root / "reference", "--data", world["lists_path"], "--json"]
    plain = json.loads(_run(args).stdout)
    cache = root / "cache"
    first = json.loads(_run(args + ["--cache-dir", cache, "--output", root / "out.json"]).stdout)
    assert any(cache.iterdir())
    second = json.loads(_run(args + ["--cache-dir", cache]).stdout)
    for name in ("reference_ranking_accuracy", "reward_accuracy", "margin"):
        assert first[name]["value"] == pytest.approx(plain[name]["value"], abs=1e-5)
        assert second[name] == first[name]
    assert json.loads((root / "out.json").read_text())["margin"] == first["margin"]


def test_eval_errors_name_the_problem(world, tmp_path):
    from rankalign.cli import main  # the CLI boundary: one line on stderr, exit 1 (data) or 2 (usage)

    root = world["root"]
    result = CliRunner().invoke(main, ["eval", "--policy", str(root / "policy"), "--data", str(world["pairs_path"]),
                                       "--alpha", "0.7"])
    assert result.exit_code != 0 and "--reference" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n" + "{not json\n")
    result = CliRunner().invoke(main, ["eval", "--policy", str(root / "policy"), "--data", str(bad)])
    assert result.exit_code == 1 and "bad.jsonl:2" in result.output
    # a directory without safetensors weights is refused (no pickle loading)
    no_weights = tmp_path / "model"
    no_weights.mkdir()
    world["tokenizer"].save_pretrained(no_weights)
    world["policy"].config.save_pretrained(no_weights)
    result = CliRunner().invoke(main, ["eval", "--policy", str(no_weights), "--data", str(world["pairs_path"])])
    assert result.exit_code == 1 and "safetensors" in result.output
