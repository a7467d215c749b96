"""Bad input to the online loop: judge specs and judges that fail, sampling settings out of range, damaged
state files, a rerun with other settings in the same folder, and `rankalign demo --seed` out of range."""

import json
import math
import os
import shutil

import pytest
import yaml
from click.testing import CliRunner

from online_helpers import one_thread  # noqa: F401  (autouse fixture)
from rankalign.cli import main
from rankalign.data import RankedList, write
from rankalign.errors import RankalignError
from rankalign.online import STATE_FILE, group_rewards, judged_lists, run_online, run_policy_gradient
from rankalign.online.loop import JudgeError, check_online
from rankalign.online.run import load_judge
from rankalign.sim.text_world import build_text_tokenizer, gold_judge, grammar_ranked_lists
from rankalign.train import ConfigError, OnlineConfig
from rankalign.train.checkpoints import ResumeError
from test_online_loop import _setup

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------ judge specs
@pytest.fixture
def judge_modules(tmp_path, monkeypatch):
    (tmp_path / "myjudges.py").write_text(
        "from rankalign.data import RankedList\n"
        "NOT_A_JUDGE = 3\n"
        "def raising(**options):\n    raise ValueError('bad options')\n"
        "def factory(scale):\n    return Plain()\n"
        "class Plain:\n    id = 'plain'\n"
        "    def rank(self, prompt, candidates):\n"
        "        return RankedList(prompt=prompt, candidates=list(candidates), ranks=list(range(len(candidates))))\n")
    (tmp_path / "zerodiv_judges.py").write_text("x = 1 / 0\n")
    (tmp_path / "syntax_judges.py").write_text("def (:\n")
    monkeypatch.syspath_prepend(str(tmp_path))


@pytest.mark.parametrize("spec, cause", [
    ("myjudges:NOT_A_JUDGE", "is a int, neither a judge"),
    ("myjudges:raising", "ValueError: bad options"),
    ("myjudges:factory", "missing 1 required positional argument: 'scale'"),
    ("zerodiv_judges:x", "ZeroDivisionError: division by zero"),
    ("syntax_judges:x", "SyntaxError"),
    (":x", "expected 'module:attribute'"),
    ("myjudges:", "expected 'module:attribute'"),
    ("rankalign.sim.text_world:GoldJudge", "missing 1 required positional argument: 'world'"),
])
def test_a_judge_spec_that_fails_is_a_config_error_naming_spec_and_cause(judge_modules, spec, cause):
    with pytest.raises(ConfigError, match="online.judge") as caught:
        load_judge(spec)
    assert spec in str(caught.value) and cause in str(caught.value)


def test_a_judge_class_is_a_factory_and_run_online_refuses_a_class(judge_modules, tmp_path):
    judge = load_judge("myjudges:Plain")
    assert not isinstance(judge, type) and judge.id == "plain"
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "class", 1)
    with pytest.raises(TypeError, match="Plain is a class, not a judge"):
        run_online(model, tokenizer, prompts, type(judge), config, settings)


def test_cli_prints_a_failing_judge_spec_as_a_config_error(judge_modules, tmp_path):
    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump({"model": "tiny:llama", "data": "nothing.jsonl", "output_dir": str(tmp_path / "o"),
                                      "online": {"enabled": True, "judge": "myjudges:raising"}}))
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 2
    assert "error: online.judge: calling 'myjudges:raising'" in result.output and "bad options" in result.output
    assert "unexpected" not in result.output


# ------------------------------------------------------------------------------------------ judges that fail
class _Judge:
    id = "odd"

    def __init__(self, answer):
        self.answer = answer

    def rank(self, prompt, candidates):
        return self.answer(prompt, list(candidates))


def _down(prompt, candidates):
    raise RuntimeError("judge service down")


def _judge_once(answer):
    tokenizer = build_text_tokenizer()
    fish, boat = tokenizer.convert_tokens_to_ids(["fish", "boat"])
    return judged_lists(tokenizer, _Judge(answer), ["about sea fish\n"], [[1, 2]], [[[fish], [boat]]], round_index=2)


@pytest.mark.parametrize("answer, message", [
    (_down, r"round 2: judge 'odd' failed in rank\(\): RuntimeError: judge service down"),
    (lambda p, c: list(c), r"round 2: judge 'odd' returned a list \(\['fish', 'boat'\]\) where a RankedList"),
    (lambda p, c: None, r"round 2: judge 'odd' returned a NoneType \(None\) where a RankedList"),
    (lambda p, c: RankedList(prompt=p, candidates=c[::-1], ranks=[0, 1]), "another order"),
])
def test_a_failing_judge_is_a_judge_error_naming_judge_and_round(answer, message):
    with pytest.raises(JudgeError, match=message):
        _judge_once(answer)


def test_rank_many_that_returns_none_is_a_judge_error():
    class Many(_Judge):
        def rank_many(self, prompts, candidate_lists):
            return None

    tokenizer = build_text_tokenizer()
    fish, boat = tokenizer.convert_tokens_to_ids(["fish", "boat"])
    with pytest.raises(JudgeError, match=r"returned a NoneType from rank_many\(\) where a list of 1 RankedLists"):
        judged_lists(tokenizer, Many(None), ["p"], [[1, 2]], [[[fish], [boat]]], round_index=0)


def test_group_rewards_names_the_step_and_ties_a_group_the_judge_ranked_none_of():
    tokenizer = build_text_tokenizer()
    fish, boat = tokenizer.convert_tokens_to_ids(["fish", "boat"])
    with pytest.raises(JudgeError, match=r"step 3: judge 'odd' failed in rank\(\): RuntimeError: judge service down"):
        group_rewards(tokenizer, _Judge(_down), "p", [[fish], [boat]], where="step 3")
    unranked = _Judge(lambda p, c: RankedList(prompt=p, candidates=c, ranks=[None] * len(c)))
    assert group_rewards(tokenizer, unranked, "p", [[fish], [boat], []]) == (None, [0, 0, 0])


def test_a_judge_that_ranks_nothing_is_told_apart_from_identical_completions(tmp_path, monkeypatch):
    unranked = _Judge(lambda p, c: RankedList(prompt=p, candidates=c, ranks=[None] * len(c)))
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "none", 1)
    with pytest.raises(JudgeError, match="judge 'odd' ranked fewer than two candidates in each of the"):
        run_online(model, tokenizer, prompts, unranked, config, settings)

    import rankalign.online.loop as loop

    real = loop.sample_groups

    def same(model, prompt_ids, k, **options):  # every completion of a prompt the same
        groups = real(model, prompt_ids, k, **options)
        groups.completion_ids = [[group[0]] * k for group in groups.completion_ids]
        return groups

    monkeypatch.setattr(loop, "sample_groups", same)
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "same", 1)
    with pytest.raises(RankalignError, match="no prompt had two distinct non-empty completions") as caught:
        run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    assert not isinstance(caught.value, JudgeError)


# ------------------------------------------------------------------------------------------ sampling settings
@pytest.mark.parametrize("key, value, message", [
    ("temperature", math.nan, "online.temperature must be a finite number > 0, got nan"),
    ("temperature", math.inf, "online.temperature must be a finite number > 0, got inf"),
    ("temperature", -1.0, "online.temperature must be a finite number > 0, got -1.0"),
    ("temperature", 0, "online.temperature: 0 is greedy decoding"),
    ("prompts_per_round", -1, "online.prompts_per_round must be a whole number >= 0"),
    ("top_p", 1.5, r"online.top_p must be in \(0, 1\], got 1.5"),
    ("top_p", math.nan, r"online.top_p must be in \(0, 1\], got nan"),
    ("max_new_tokens", 0, "online.max_new_tokens must be a whole number >= 1, got 0"),
])
def test_sampling_settings_out_of_range_name_key_and_value(key, value, message):
    with pytest.raises(ConfigError, match=message):
        check_online(OnlineConfig(enabled=True, **{key: value}))


def test_run_online_and_policy_gradient_check_the_sampling_settings(tmp_path):
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "nan", 1, temperature=math.nan)
    with pytest.raises(ConfigError, match="online.temperature"):
        run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    assert not (tmp_path / "nan" / "round_000").exists()
    with pytest.raises(ConfigError, match="temperature: 0 is greedy"):
        run_policy_gradient(model, tokenizer, prompts, gold_judge(), steps=1, temperature=0)
    with pytest.raises(ConfigError, match=r"prompts_per_step must be a whole number >= 0 \(0: every prompt\), got -1"):
        run_policy_gradient(model, tokenizer, prompts, gold_judge(), steps=1, prompts_per_step=-1)


# ------------------------------------------------------------------------------------------ damaged state
@pytest.fixture(scope="module")
def one_round(tmp_path_factory):
    """A finished 1-round run (copied by each test that damages it)."""
    folder = tmp_path_factory.mktemp("online")
    model, tokenizer, prompts, config, settings = _setup(folder, "run", 1)
    run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    return folder / "run"


def _extend(tmp_path, source, rounds=2, **online):
    shutil.copytree(source, tmp_path / "run")
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "run", rounds, **online)
    return lambda judge=None: run_online(model, tokenizer, prompts, judge or gold_judge(), config, settings)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"completions": "x"}', "not the samples of this round"),
    ('{"completions": [[[1, 2]]]}', "not the samples of this round"),  # fewer groups than the round's prompts
])
@pytest.mark.parametrize("judged", [False, True])
def test_a_damaged_samples_file_is_refused_naming_it(tmp_path, one_round, text, message, judged):
    run = _extend(tmp_path, one_round)
    round_dir = tmp_path / "run" / "round_001"
    round_dir.mkdir()
    (round_dir / "samples.json").write_text(text)
    if judged:  # samples and lists both there: read back, not judged again
        shutil.copy(tmp_path / "run" / "round_000" / "lists.jsonl", round_dir / "lists.jsonl")
    with pytest.raises(ResumeError, match=f"round_001/samples.json: {message}"):
        run()


@pytest.mark.parametrize("state, message", [
    ("[]", "expected a mapping"),
    ("{oops", "not valid JSON"),
    ({"rounds_done": "1"}, "field 'rounds_done' must be a whole number >= 0"),
    ({"rounds_done": 1, "summaries": "x"}, "field 'summaries' must be a list of round summaries"),
    ({"rounds_done": 1, "summaries": [{"round": 0}]}, "field 'summaries' must be a list of round summaries"),
])
def test_a_damaged_state_file_is_refused_before_any_round_runs(tmp_path, one_round, state, message):
    run = _extend(tmp_path, one_round)
    path = tmp_path / "run" / STATE_FILE
    saved = json.loads(path.read_text())
    path.write_text(state if isinstance(state, str) else json.dumps({**saved, **state}))
    with pytest.raises(ResumeError, match=f"{STATE_FILE}: {message}"):
        run()
    assert not (tmp_path / "run" / "round_001").exists()


# ------------------------------------------------------------------------------------------ fingerprint
@pytest.mark.parametrize("online, changed", [
    ({"temperature": 0.7, "top_p": 0.9}, "config: online.temperature, online.top_p changed"),
    ({"curriculum": True}, "config: online.curriculum changed"),
    ({"objective": "dpo"}, "config: objective changed"),
    ({"replay": True}, "config: online.replay changed"),
])
def test_a_rerun_with_other_settings_is_refused_naming_the_changed_keys(tmp_path, one_round, online, changed):
    run = _extend(tmp_path, one_round, **online)
    with pytest.raises(ResumeError, match=f"belongs to a different online run \\({changed}"):
        run()
    assert not (tmp_path / "run" / "round_001").exists()


def test_a_rerun_with_another_judge_prompts_or_model_is_refused(tmp_path, one_round):
    run = _extend(tmp_path, one_round)
    with pytest.raises(ResumeError, match="config: judge_id changed"):
        run(_Judge(None))
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "run", 2)
    with pytest.raises(ResumeError, match="data: 24 records .* then, 23 records"):
        run_online(model, tokenizer, prompts[:-1], gold_judge(), config, settings)
    from rankalign.engine import tiny_causal_lm

    other = tiny_causal_lm(len(tokenizer), hidden_size=16, layers=1, heads=2, seed=5)
    with pytest.raises(ResumeError, match="model:"):
        run_online(other, tokenizer, prompts, gold_judge(), config, settings)
    path = tmp_path / "run" / STATE_FILE  # a state from before fingerprints: nothing shows whose it is
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "fingerprint"}))
    with pytest.raises(ResumeError, match="carries no run fingerprint"):
        run_online(model, tokenizer, prompts, gold_judge(), config, settings)


def test_more_rounds_continue_a_run_killed_mid_round(tmp_path):
    """The config's own online section (as `rankalign train` passes it) may grow `rounds` while a round's
    training has step checkpoints: the round resumes from them."""
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "run", 2)
    config.online = settings
    run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    assert any(p.name.startswith("checkpoint-") for p in (tmp_path / "run" / "round_001" / "train").iterdir())
    shutil.rmtree(tmp_path / "run" / "round_001" / "policy")  # killed in round 1's training
    state = json.loads((tmp_path / "run" / STATE_FILE).read_text())
    (tmp_path / "run" / STATE_FILE).write_text(json.dumps({**state, "rounds_done": 1,
                                                            "summaries": state["summaries"][:1]}))
    model, tokenizer, prompts, config, settings = _setup(tmp_path, "run", 3)
    config.online = settings
    result = run_online(model, tokenizer, prompts, gold_judge(), config, settings)
    assert [s["round"] for s in result.rounds] == [0, 1, 2]


def test_cli_refuses_an_online_rerun_with_other_settings_and_extends_one_with_more_rounds(tmp_path):
    data = tmp_path / "prompts.jsonl"
    write(grammar_ranked_lists(8, k=3, seed=0), str(data))
    config = tmp_path / "online.yaml"
    config.write_text(yaml.safe_dump({
        "model": "tiny:llama", "tiny_model": {"hidden_size": 32, "layers": 1, "heads": 2}, "tokenizer": "train",
        "tokenizer_vocab_size": 120, "data": str(data), "objective": "pl_dpo", "loss_params": {"beta": 0.5},
        "batch_size": 4, "epochs": 1, "lr": 0.01, "seed": 3, "output_dir": str(tmp_path / "out"), "save_steps": 2,
        "report_to": [], "progress": False, "bf16": False,
        "online": {"enabled": True, "rounds": 1, "k": 4, "max_new_tokens": 8, "prompts_per_round": 4,
                   "judge": "rankalign.sim.text_world:gold_judge"}}))
    first = CliRunner().invoke(main, ["train", str(config)])
    assert first.exit_code == 0, first.output + repr(first.exception)
    saved = (tmp_path / "out" / "train_config.yaml").read_text()
    changed = CliRunner().invoke(main, ["train", str(config), "--set", "online.rounds=2", "--set", "online.k=3",
                                        "--set", "online.max_new_tokens=6"])
    assert changed.exit_code == 2
    assert "belongs to a different online run (config: online.k, online.max_new_tokens changed)" in changed.output
    assert (tmp_path / "out" / "train_config.yaml").read_text() == saved  # not written over
    nan = CliRunner().invoke(main, ["train", str(config), "--set", "online.temperature=nan"])
    assert nan.exit_code == 2 and "online.yaml: online.temperature must be a finite number > 0, got nan" in nan.output
    extended = CliRunner().invoke(main, ["train", str(config), "--set", "online.rounds=2"])
    assert extended.exit_code == 0, extended.output + repr(extended.exception)
    assert "round 1:" in extended.output


# ------------------------------------------------------------------------------------------ demo --seed
@pytest.mark.parametrize("seed", ["-1", "100000000000000000000", str(2**32)])
def test_demo_refuses_a_seed_numpy_cannot_take(tmp_path, seed):
    result = CliRunner().invoke(main, ["demo", "--quick", "-o", str(tmp_path / "demo"), "--seed", seed])
    assert result.exit_code == 2 and "--seed" in result.output and "unexpected" not in result.output
    assert not (tmp_path / "demo").exists()
