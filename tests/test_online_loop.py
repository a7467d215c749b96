"""The online loop: judged rounds saved as readable data, SPPO soft labels, curriculum order, resume."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from online_helpers import one_thread  # noqa: F401  (autouse fixture)
from rankalign.data import RankedList, read, write
from rankalign.engine import TokenizedList, tiny_causal_lm
from rankalign.online import STATE_FILE, curriculum_pairs, judged_lists, run_online, win_probabilities
from rankalign.sim.text_world import build_text_tokenizer, gold_judge, grammar_ranked_lists, make_text_world
from rankalign.train import OnlineConfig, TrainConfig


def test_win_probabilities_by_hand():
    scored = RankedList(prompt="p", candidates=["a", "b", "c"], ranks=[0, 1, 1], scores=[1.0, 0.0, 0.0])
    s = 1 / (1 + math.exp(-1.0))  # sigma(1)
    # SPPO's estimator (the default): the mean over all 3 samples, each against itself at 1/2
    assert win_probabilities(scored) == pytest.approx([(2 * s + 0.5) / 3, (1 - s + 1.0) / 3, (1 - s + 1.0) / 3])
    loo = win_probabilities(scored, "leave_one_out")
    assert loo == pytest.approx([s, (0.5 + (1 - s)) / 2, (0.5 + (1 - s)) / 2])
    ranked = RankedList(prompt="p", candidates=["a", "b", "c"], ranks=[0, 1, 1])
    assert win_probabilities(ranked) == pytest.approx([2.5 / 3, 1 / 3, 1 / 3])
    assert win_probabilities(ranked, "leave_one_out") == pytest.approx([1.0, 0.25, 0.25])


def test_curriculum_orders_pairs_from_easy_to_hard():
    item = TokenizedList(prompt_ids=[1], response_ids=[[5], [6], [7]], ranks=[0, 1, 2], grades=[3.0, 2.5, 0.0])
    pairs = curriculum_pairs([item])
    # gaps: (0,2) 3.0, (1,2) 2.5, (0,1) 0.5
    assert [p.response_ids for p in pairs] == [[[5], [7]], [[6], [7]], [[5], [6]]]
    assert all(p.ranks == [0, 1] for p in pairs)


class _Judge:
    id = "test_judge"

    def rank(self, prompt, candidates):
        return RankedList.from_scores([float(len(c)) for c in candidates], candidates=candidates, prompt=prompt)


def test_judged_lists_keep_sampled_ids_and_drop_duplicates():
    tokenizer = build_text_tokenizer()
    fish, boat = tokenizer.convert_tokens_to_ids(["fish", "boat"])
    eos = tokenizer.eos_token_id
    completions = [[[fish, eos], [fish, eos], [fish, boat, eos], [boat]]]
    records, lists = judged_lists(tokenizer, _Judge(), ["about sea fish\n"], [[1, 2]], completions, round_index=4)
    assert list(records[0].candidates) == ["fish", "fish boat", "boat"]
    assert records[0].annotator == "test_judge" and records[0].meta["round"] == 4
    assert lists[0].response_ids == [[fish, eos], [fish, boat, eos], [boat]]
    # the judge scores by length: "fish" and "boat" tie (4 characters), "fish boat" (9) is best
    assert lists[0].ranks == [1, 0, 1] and lists[0].grades == [4.0, 9.0, 4.0]


def _setup(tmp_path, name, rounds, **online):
    world = make_text_world()
    tokenizer = build_text_tokenizer()
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=5)
    config = TrainConfig(model="tiny:llama", objective=online.pop("objective", "pl_dpo"),
                         loss_params={"beta": 0.5}, batch_size=4, epochs=1, lr=0.01, seed=3,
                         output_dir=str(tmp_path / name), save_steps=2, report_to=[], progress=False, bf16=False)
    settings = OnlineConfig(enabled=True, rounds=rounds, k=4, max_new_tokens=8, prompts_per_round=8, **online)
    return model, tokenizer, list(world.prompts), config, settings


def _weights(directory):
    from safetensors.torch import load_file

    return load_file(os.path.join(directory, "model.safetensors"))


def test_rounds_write_readable_lists_and_resume_at_round_boundaries(tmp_path):
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "whole", 2)
    result = run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    assert [s["round"] for s in result.rounds] == [0, 1]
    for r in range(2):
        data = read(str(tmp_path / "whole" / f"round_{r:03d}" / "lists.jsonl"))
        records = list(data.records)
        assert records and all(rec.annotator == "text_world_gold" and rec.meta["round"] == r for rec in records)
        assert all(len(set(rec.candidates)) == rec.k for rec in records)
    # the same run in two invocations (1 round, then 2) ends with the same policy
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "split", 1)
    run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "split", 2)
    run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    whole = _weights(tmp_path / "whole" / "round_001" / "policy")
    split = _weights(tmp_path / "split" / "round_001" / "policy")
    assert whole.keys() == split.keys()
    for key in whole:
        assert torch.equal(whole[key], split[key]), key
    state = json.loads((tmp_path / "split" / STATE_FILE).read_text())
    assert state["rounds_done"] == 2


def test_sppo_curriculum_and_refresh_run(tmp_path):
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "sppo", 2, objective="sppo", curriculum=True,
                                                         curriculum_stages=2, refresh_reference=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    assert len(result.rounds) == 2 and all(math.isfinite(s["last_loss"]) for s in result.rounds)
    assert (tmp_path / "sppo" / "round_001" / "train_stage_1" / "done").exists()
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())


def test_not_a_judge_is_rejected(tmp_path):
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "bad", 1)
    with pytest.raises(TypeError, match="not a judge"):
        run_online(model, tokenizer, prompts, object(), config, settings)


# ------------------------------------------------------------------------------ SIGKILL mid-round
def _write_config(tmp_path, name):
    data = tmp_path / "prompts.jsonl"
    if not data.exists():
        write(grammar_ranked_lists(24, k=3, seed=0), str(data))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "model": "tiny:llama", "tiny_model": {"hidden_size": 32, "layers": 1, "heads": 2},
        "tokenizer": "train", "tokenizer_vocab_size": 120, "data": str(data), "objective": "pl_dpo",
        "loss_params": {"beta": 0.5}, "batch_size": 2, "epochs": 1, "lr": 0.01, "seed": 3,
        "output_dir": str(tmp_path / name), "save_steps": 2, "report_to": [], "progress": False, "bf16": False,
        "online": {"enabled": True, "rounds": 3, "k": 4, "max_new_tokens": 10, "prompts_per_round": 12,
                   "judge": "rankalign.sim.text_world:gold_judge"}}))
    return path


@pytest.mark.slow
def test_sigkill_mid_round_then_resume_matches_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "rankalign.cli", "train"]
    reference = _write_config(tmp_path, "uninterrupted")
    subprocess.run(command + [str(reference)], check=True, env=env, capture_output=True, timeout=900)
    killed = _write_config(tmp_path, "killed")
    process = subprocess.Popen(command + [str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # kill -9 once round 1 has a step checkpoint (mid-round: lists judged, training under way)
    target = tmp_path / "killed" / "round_001" / "train"
    deadline = time.time() + 900
    while time.time() < deadline and process.poll() is None:
        if target.exists() and any(p.name.startswith("checkpoint-") for p in target.iterdir()):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed mid-round"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    state = json.loads((tmp_path / "killed" / STATE_FILE).read_text())
    assert state["rounds_done"] == 1
    subprocess.run(command + [str(killed)], check=True, env=env, capture_output=True, timeout=900)
    a, b = _weights(tmp_path / "uninterrupted" / "final"), _weights(tmp_path / "killed" / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for r in range(3):
        assert (tmp_path / "uninterrupted" / f"round_{r:03d}" / "lists.jsonl").read_text() == \
            (tmp_path / "killed" / f"round_{r:03d}" / "lists.jsonl").read_text()


def test_online_config_section_is_validated(tmp_path):
    from rankalign.online.run import load_judge
    from rankalign.train import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"online": {"enabled": True, "roundz": 2}}))
    with pytest.raises(ConfigError, match="roundz.*rounds"):
        load_config(path)
    path.write_text(yaml.safe_dump({"online": {"enabled": True, "k": 1}}))
    with pytest.raises(ConfigError, match="k >= 2"):
        load_config(path)
    config = load_config(path, ["online.k=4", "online.judge=rankalign.sim.text_world:gold_judge"])
    assert config.online.k == 4 and load_judge(config.online.judge).id == "text_world_gold"
    with pytest.raises(ConfigError, match="module:attribute"):
        load_judge("gold")
    with pytest.raises(ConfigError, match="cannot load"):
        load_judge("rankalign.sim.text_world:no_such_judge")
    with pytest.raises(ConfigError, match="no `id`"):
        load_judge("rankalign.sim.text_world:make_text_world")


class _Stop(Exception):
    pass


def _pg_run(tmp_path, name, objective, stop_after=None, seen=None, **options):
    world = make_text_world()
    tokenizer = build_text_tokenizer()
    model = tiny_causal_lm(len(tokenizer), hidden_size=32, layers=1, heads=2, seed=5)

    def stop(step, policy, metrics):
        if seen is not None:
            seen.append(step)
        if stop_after is not None and step + 1 == stop_after:
            raise _Stop  # a crash during step `stop_after`, before its checkpoint would be written

    settings = dict(objective=objective, steps=4, prompts_per_step=3, k=4, lr=0.05, max_new_tokens=6, seed=2,
                    iterations=2, output_dir=tmp_path / name, callback=stop)
    settings.update(options)
    from rankalign.online import run_policy_gradient

    return model, run_policy_gradient(model, tokenizer, list(world.prompts), gold_judge(), **settings)


@pytest.mark.parametrize("objective", ["grpo", "rloo"])
def test_policy_gradient_run_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_run_ends(tmp_path,
                                                                                                   objective):
    whole, history = _pg_run(tmp_path, "whole", objective)
    assert [row["step"] for row in history] == [0, 1, 2, 3]
    with pytest.raises(_Stop):  # checkpoints every 2 steps: the crash after step 3 loses step 3's work
        _pg_run(tmp_path, "split", objective, stop_after=3, save_steps=2)
    assert sorted(p.name for p in (tmp_path / "split").glob("checkpoint-*")) == ["checkpoint-2"]
    seen = []
    resumed, resumed_history = _pg_run(tmp_path, "split", objective, save_steps=2, seen=seen)
    assert seen == [2, 3]  # the resumed call ran only the steps after checkpoint-2
    assert [row["step"] for row in resumed_history] == [0, 1, 2, 3]
    assert [row["loss"] for row in resumed_history] == pytest.approx([row["loss"] for row in history], abs=1e-6)
    for (name, a), (_, b) in zip(whole.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    from rankalign.train.checkpoints import ResumeError

    with pytest.raises(ResumeError, match="different run"):  # other settings, same folder
        _pg_run(tmp_path, "split", objective, save_steps=2, lr=0.01)
    with pytest.raises(ResumeError, match="different run"):  # the trained model instead of the initial one
        from rankalign.online import run_policy_gradient

        run_policy_gradient(resumed, build_text_tokenizer(), list(make_text_world().prompts), gold_judge(),
                            objective=objective, steps=4, prompts_per_step=3, k=4, lr=0.05, max_new_tokens=6,
                            seed=2, iterations=2, output_dir=tmp_path / "split", save_steps=2)
    seen = []
    _pg_run(tmp_path, "split", objective, save_steps=2, seen=seen, resume=False)  # starts afresh
    assert seen == [0, 1, 2, 3]


def test_replay_trains_each_round_on_every_round_so_far_and_resumes_without_re_judging(tmp_path, monkeypatch):
    import rankalign.train as train

    sizes = []
    original = train.train_preference

    def spy(model, tokenizer, data, config, **kwargs):
        sizes.append((os.path.basename(os.path.dirname(config.output_dir)), len(data)))
        return original(model, tokenizer, data, config, **kwargs)

    monkeypatch.setattr(train, "train_preference", spy)
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "whole", 3, replay=True)
    run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    own = [len(list(read(str(tmp_path / "whole" / f"round_{r:03d}" / "lists.jsonl")).records)) for r in range(3)]
    assert all(n >= 2 for n in own)
    # round r trains on the lists of rounds 0..r (each judged group with two or more ranked candidates)
    assert sizes == [("round_000", own[0]), ("round_001", own[0] + own[1]), ("round_002", sum(own))]

    # killed after round 1 was judged but before it was trained, then resumed with a judge that would rank
    # everything the other way round: round 1 trains on its saved rankings (read back, not re-judged), plus
    # round 0's (replayed), and ends with the policy of the uninterrupted run
    import shutil

    sizes.clear()
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "split", 2, replay=True)
    run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    shutil.rmtree(tmp_path / "split" / "round_001" / "train")
    shutil.rmtree(tmp_path / "split" / "round_001" / "policy")
    state = json.loads((tmp_path / "split" / STATE_FILE).read_text())
    (tmp_path / "split" / STATE_FILE).write_text(json.dumps({"rounds_done": 1, "summaries": state["summaries"][:1],
                                                           "fingerprint": state["fingerprint"]}))

    class Reversed:
        id = "text_world_gold"  # the judge's id is part of the run's fingerprint

        def rank(self, prompt, candidates):
            raise AssertionError("a resumed round must not ask the judge again")

    sizes.clear()
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "split", 2, replay=True)
    run_online(model, tokenizer, prompts, Reversed(), config, settings)
    assert sizes == [("round_001", own[0] + own[1])]
    split_round1 = _weights(tmp_path / "split" / "round_001" / "policy")
    whole_round1 = _weights(tmp_path / "whole" / "round_001" / "policy")
    assert whole_round1.keys() == split_round1.keys()
    for key in whole_round1:
        assert torch.equal(whole_round1[key], split_round1[key]), key
