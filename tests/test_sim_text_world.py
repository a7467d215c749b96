"""Text world (rankalign.sim.text_world) and the demo pipeline (rankalign.sim.demo)."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from rankalign.sim.text_world import (
    TOPICS,
    build_text_tokenizer,
    gold_reward,
    make_text_world,
    prompt_topic,
    response_logps,
    reward_components,
    sample_reference_response,
    sample_responses,
    train_reference_policy,
    vocabulary,
)


def test_reward_components_and_gold_reward_by_hand():
    prompt = "about sea fish\n"
    # nouns boat, boat, fish (all sea): 2 distinct on-topic, 0 off-topic, 1 repeat; 9 words
    # (the boat is big . boat and fish .); gold = 2 - 0 - 0.5 * 1 + 0.05 * 9 = 1.95
    response = "the boat is big . boat and fish ."
    np.testing.assert_array_equal(reward_components(prompt, response), [2, 0, 1, 9])
    assert gold_reward(prompt, response) == pytest.approx(1.95)
    # moon (sky) and bread (food) are off-topic for sea: 0 on, 2 off, 0 repeats, 4 words: -2 + 0.2
    assert gold_reward(prompt, "moon and bread .") == pytest.approx(-1.8)
    assert prompt_topic("about city lamp\n") == "city"
    with pytest.raises(ValueError, match="not a prompt"):
        prompt_topic("hello there")


def test_world_prompts_and_reference_samples_follow_the_grammar():
    world = make_text_world()
    assert len(world.prompts) == 24 and len(set(world.prompts)) == 24
    rng = np.random.default_rng(0)
    words = set(vocabulary())
    for prompt in world.prompts:
        response = sample_reference_response(prompt, rng)
        sentences = response.split(" . ")
        assert 1 <= len(sentences) <= 4 and response.endswith(" .")
        assert set(response.split()) <= words
    assert sum(len(n) for n in TOPICS.values()) == 24


def test_tokenizer_encodes_every_word_without_unknowns():
    tokenizer = build_text_tokenizer()
    ids = tokenizer(" ".join(vocabulary()), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(vocabulary()) and tokenizer.unk_token_id not in ids


def test_sampling_and_response_logps_match_a_direct_forward_pass():
    import torch

    torch.set_num_threads(1)
    world = make_text_world()
    tokenizer = build_text_tokenizer()
    model = train_reference_policy(world, tokenizer, steps=3, batch_size=4, seed=0)
    prompts = list(world.prompts[:2])
    first = sample_responses(model, tokenizer, prompts, 3, seed=7)
    again = sample_responses(model, tokenizer, prompts, 3, seed=7)
    assert first == again  # seeded
    assert all(len(group) == len(set(group)) for group in first)
    logps = response_logps(model, tokenizer, prompts, first)
    # brute force: full-vocabulary log-softmax over the concatenated sequence, summed at response tokens
    for prompt, group, got in zip(prompts, first, logps):
        for response, value in zip(group, got):
            prompt_ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
            response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt_ids + response_ids])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(input_ids=ids).logits.double(), -1)[0]
            expected = sum(float(log_probs[len(prompt_ids) - 1 + t, token]) for t, token in enumerate(response_ids))
            assert value == pytest.approx(expected, abs=1e-4)


def test_demo_smoke_runs_end_to_end_and_writes_outputs(tmp_path):
    from rich.console import Console

    from rankalign.sim.demo import DemoSettings, run_demo

    settings = DemoSettings(seed=1, sft_steps=3, rounds=1, eval_samples=2, epochs=1.0, num_prompts=4,
                            batch_size=4)
    console = Console(file=open(tmp_path / "console.txt", "w"), width=160)
    results = run_demo(str(tmp_path / "out"), settings=settings, console=console, progress=False)
    rows = results["table"]["rows"]
    assert [r["method"] for r in rows] == ["reference", "dpo (pairs)", "pl_dpo (lists)", "lipo_lambda (lists)",
                                           "online pl_dpo (3 rounds)", "online dpo (6 rounds, replay)", "grpo",
                                           "rloo"]
    for row in rows:  # estimates are written as {"value": v, "se": s}
        win, se = row["gold win rate"]["value"], row["gold win rate"]["se"]
        assert 0.0 <= win <= 1.0 and math.isfinite(se)
        assert 0.0 <= row["rank acc"] <= 1.0
    # the reference policy against itself: KL exactly 0 (same log-probs), BT rating 0 by the gauge
    assert rows[0]["KL"]["value"] == 0.0 and rows[0]["BT rating"] == 0.0
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["table"]["rows"][1]["method"] == "dpo (pairs)"
    for name in ("results_table.txt", "gold_reward_vs_kl.png", "accuracy_curves.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp leftovers


@pytest.mark.slow
def test_demo_quick_is_deterministic_for_a_seed(tmp_path):
    from rich.console import Console

    from rankalign.sim.demo import DemoSettings, run_demo

    tables = []
    for run in range(2):
        console = Console(file=open(tmp_path / f"console{run}.txt", "w"), width=160)
        results = run_demo(str(tmp_path / f"out{run}"), settings=DemoSettings.quick(seed=3), console=console,
                           progress=False)
        tables.append([{k: v for k, v in row.items() if k != "train s"} for row in results["table"]["rows"]])
    assert tables[0] == tables[1]


@pytest.mark.slow
def test_cli_demo_quick(tmp_path):
    from click.testing import CliRunner

    from rankalign.cli import main

    result = CliRunner().invoke(main, ["demo", "--quick", "-o", str(tmp_path / "demo"), "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "results.json").exists()


@pytest.mark.slow
def test_full_demo_aligned_policies_beat_the_reference(tmp_path):
    from rich.console import Console

    from rankalign.sim.demo import DemoSettings, run_demo

    console = Console(file=open(tmp_path / "console.txt", "w"), width=160)
    results = run_demo(str(tmp_path / "out"), settings=DemoSettings(seed=0), console=console, progress=False)
    rows = {r["method"]: r for r in results["table"]["rows"]}
    reference = rows.pop("reference")
    # against itself the reference wins half its battles up to sampling noise
    assert abs(reference["gold win rate"]["value"] - 0.5) < 3 * reference["gold win rate"]["se"]
    for row in rows.values():  # every aligned policy beats the reference on the gold reward
        win = row["gold win rate"]
        assert win["value"] - 3 * win["se"] > 0.5
        assert row["KL"]["value"] > 0


def test_online_k_keeps_the_judged_sample_budget(tmp_path, monkeypatch):
    """``online_k`` judges groups of that size, and as many samples as the offline rows' lists x k."""
    import io
    import types

    from rich.console import Console

    from rankalign import online
    from rankalign.engine import tiny_causal_lm
    from rankalign.sim import demo

    seen = []

    def fake_run_online(policy, tokenizer, prompts, judge, config, settings, ref_model=None, callback=None):
        seen.append((settings.k, settings.prompts_per_round, settings.rounds))
        callback(0, policy, {})
        return types.SimpleNamespace(rounds=[])

    monkeypatch.setattr(online, "run_online", fake_run_online)
    world = make_text_world()
    model = tiny_causal_lm(40, hidden_size=16, layers=1, heads=2)

    def evaluate(policy, name, wall):
        return {"gold win rate": (0.5, 0.1)}, np.zeros(2)

    for online_k, expected in ((None, (4, 64, 3)), (8, (8, 32, 3)), (6, (6, 42, 3))):
        settings = demo.DemoSettings(k=4, online_k=online_k, online_rounds=3)
        demo.online_stage(model, None, world, demo.annotator_population(world, 1.0), [], 192, settings, evaluate,
                          str(tmp_path), Console(file=io.StringIO()), False, methods=(("online pl_dpo", "pl_dpo"),))
        assert seen[-1] == expected  # 192 lists x 4 = 768 judged samples: 3 x 64 x 4, 3 x 32 x 8, 3 x 42 x 6 (756)


def test_reward_model_judge_learns_the_annotators_ranking_and_judges_online_rows(tmp_path, monkeypatch):
    """``online_judge="reward_model"``: a reward model fitted on the annotated lists ranks held-out lists
    by gold reward better than chance (its labels come only from the annotators), and the online rows are
    judged by it (records carry its id and its scores)."""
    import io
    import types

    import torch
    from rich.console import Console

    from rankalign import online
    from rankalign.reward import pairwise_accuracy
    from rankalign.sim import demo

    world = make_text_world()
    tokenizer = build_text_tokenizer()
    prompts = list(world.prompts)
    reference = train_reference_policy(world, tokenizer, steps=300, seed=0)
    population = demo.annotator_population(world, 1.0)
    rng = np.random.default_rng(0)
    train_prompts = prompts * 8  # the demo's 192 annotated lists
    lists = demo.annotate_lists(world, population, train_prompts,
                                sample_responses(reference, tokenizer, train_prompts, 4, seed=1), rng)
    judge = demo.fit_reward_judge(reference, tokenizer, lists, demo.DemoSettings())
    held_out = sample_responses(reference, tokenizer, prompts * 2, 4, seed=2)
    scores, gold_ranked = [], []
    for prompt, group in zip(prompts * 2, held_out):
        record = judge.rank(prompt, group)
        assert record.annotator == "rm:annotated_lists" and len(record.scores) == len(group)
        scores.append(np.asarray(record.scores, dtype=float))
        gold = world.gold_rewards(prompt, group)
        order = np.argsort(-gold, kind="stable")
        ranks = np.empty(len(group), dtype=int)
        ranks[order] = np.arange(len(group))
        gold_ranked.append(types.SimpleNamespace(dense_ranks=lambda ranks=ranks: list(ranks)))
    accuracy = pairwise_accuracy([torch.as_tensor(s) for s in scores], gold_ranked)
    assert accuracy > 0.6, accuracy  # an unfitted head orders pairs at chance (0.5)

    seen = []

    def fake_run_online(policy, tokenizer_, prompts_, judge_, config, online_settings, ref_model=None, callback=None):
        seen.append(judge_)
        callback(0, policy, {})
        return types.SimpleNamespace(rounds=[])

    def evaluate(policy, name, wall):
        return {"gold win rate": (0.5, 0.1)}, np.zeros(2)

    monkeypatch.setattr(online, "run_online", fake_run_online)
    rm_settings = demo.DemoSettings(online_judge="reward_model", rm_epochs=1)
    stage = dict(methods=(("online pl_dpo", "pl_dpo"),))
    demo.online_stage(reference, tokenizer, world, population, prompts, 16, rm_settings, evaluate, str(tmp_path),
                      Console(file=io.StringIO()), False, judge_lists=lists[:16], **stage)
    assert seen[-1].id == "rm:annotated_lists"
    with pytest.raises(ValueError, match="judge_lists"):
        demo.online_stage(reference, tokenizer, world, population, prompts, 16, rm_settings, evaluate, str(tmp_path),
                          Console(file=io.StringIO()), False, **stage)


def test_online_versus_offline_by_hand():
    """The demo's on-policy comparison: the difference against offline PL-DPO in combined SE (the rows'
    SEs as given) and paired by prompt (outcomes worked out by hand), and the KL check against DPO (pairs)."""
    from rankalign.sim import demo

    state = demo.DemoState(out_dir="", settings=demo.DemoSettings(), console=None)
    state.rows = [{"method": "dpo (pairs)", "gold win rate": (0.6, 0.1), "KL": (2.0, 0.1)},
                  {"method": "pl_dpo (lists)", "gold win rate": (1 / 3, 0.1), "KL": (1.5, 0.1)},
                  {"method": "online a", "gold win rate": (5 / 6, 0.2), "KL": (3.0, 0.1)},
                  {"method": "online b", "gold win rate": (1 / 3, 0.1), "KL": (1.0, 0.1)}]
    state.online_names = ["online a", "online b"]
    state.reference_rewards = np.zeros((3, 1))
    state.all_rewards = {"pl_dpo (lists)": np.array([[1.0], [-1.0], [-1.0]]),   # outcomes 1, 0, 0
                         "online a": np.array([[1.0], [1.0], [0.0]]),           # 1, 1, 1/2 (a tie)
                         "online b": np.array([[1.0], [-1.0], [-1.0]])}
    a, b = demo.online_versus_offline(state)
    difference, combined = a["vs pl_dpo (lists)"]
    assert difference == pytest.approx(0.5) and combined == pytest.approx(math.sqrt(0.1**2 + 0.2**2))
    assert a["in combined SE"] == pytest.approx(0.5 / math.sqrt(0.05))
    # per-prompt differences 0, 1, 1/2: mean 1/2, sample SD 1/2, SE 1/(2 sqrt 3)
    assert a["paired"][0] == pytest.approx(0.5) and a["paired"][1] == pytest.approx(0.5 / math.sqrt(3))
    assert a["in paired SE"] == pytest.approx(math.sqrt(3))
    assert a["KL <= dpo (pairs)"] is False and b["KL <= dpo (pairs)"] is True
    assert b["paired"] == (0.0, 0.0) and math.isnan(b["in paired SE"])
    state.rows = state.rows[1:]  # no DPO (pairs) row: nothing to compare against
    assert demo.online_versus_offline(state) == []


def test_cli_demo_json_carries_the_online_comparison(tmp_path, monkeypatch):
    """`rankalign demo --json` prints the on-policy comparison beside the tables, as strict JSON."""
    from click.testing import CliRunner

    from rankalign.cli import main
    from rankalign.sim import demo

    def fake_run_demo(out_dir, settings=None, console=None, progress=True):
        os.makedirs(out_dir, exist_ok=True)
        for name in ("results.json", "results_table.txt", "gold_reward_vs_kl.png", "accuracy_curves.png"):
            (Path(out_dir) / name).write_text("x")
        versus = {"title": "t", "rows": [{"method": "online dpo (6 rounds, replay)", "in paired SE": None}]}
        return {"table": {"rows": []}, "ratings": {"rows": []}, "online_vs_offline": versus, "seconds": 1.0}

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    result = CliRunner().invoke(main, ["demo", "--json", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout.splitlines()[0])
    assert printed["online_vs_offline"]["rows"][0]["method"] == "online dpo (6 rounds, replay)"
