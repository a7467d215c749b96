"""TrainConfig: YAML loading, unknown-key suggestions, --set type conversion, resolved config saved."""

from __future__ import annotations

import pytest
import yaml

from rankalign.train.config import ConfigError, TrainConfig, apply_override, load_config, save_config


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_values_reach_the_dataclass(tmp_path):
    path = write(tmp_path, "objective: pl_dpo\nlr: 3.0e-4\nbatch_size: 2\nloss_params: {beta: 0.5}\n"
                           "peft: {enabled: true, r: 4}\nmax_prompt_tokens: null\n")
    config = load_config(path)
    assert config.objective == "pl_dpo"
    assert config.lr == 0.0003
    assert config.batch_size == 2
    assert config.loss_params == {"beta": 0.5}
    assert config.peft.enabled is True and config.peft.r == 4
    assert config.peft.alpha == 16.0  # untouched default
    assert config.max_prompt_tokens is None


def test_unknown_key_names_the_file_and_suggests(tmp_path):
    path = write(tmp_path, "objetive: dpo\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "'objetive'" in message and "did you mean 'objective'" in message


def test_unknown_nested_key_and_synonym(tmp_path):
    with pytest.raises(ConfigError, match=r"peft: unknown key 'rank'"):
        load_config(write(tmp_path, "peft: {rank: 4}\n"))
    with pytest.raises(ConfigError, match=r"did you mean 'lr'"):
        load_config(write(tmp_path, "learning_rate: 0.1\n"))


def test_misspelt_synonym_points_at_our_key(tmp_path):
    # a typo of another tool's name means our key, not whichever of ours the typo happens to resemble
    # (``learnig_rate`` used to get "did you mean 'pair_strategy'?")
    for typo, ours in [("learnig_rate", "lr"), ("per_device_batch_size", "batch_size"),
                       ("gradient_accumulation_step", "gradient_accumulation"), ("num_train_epoch", "epochs")]:
        with pytest.raises(ConfigError, match=rf"unknown key '{typo}'; did you mean '{ours}'\?"):
            load_config(write(tmp_path, f"{typo}: 1\n"))


def test_wrong_type_in_yaml_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        load_config(write(tmp_path, "batch_size: two\n"))
    with pytest.raises(ConfigError, match="batch_size: expected an integer"):
        load_config(write(tmp_path, "batch_size: 2.5\n"))


def test_set_overrides_convert_to_the_field_type():
    config = TrainConfig()
    for assignment in ["lr=2e-5", "max_steps=7", "epochs=2", "bf16=false", "progress=no", "peft.r=16",
                       "peft.target_modules=q_proj,k_proj", "loss_params.beta=0.25", "max_tokens_per_row=null",
                       "tokenizer=train", "report_to=[]"]:
        apply_override(config, assignment)
    assert config.lr == 2e-5 and isinstance(config.lr, float)
    assert config.max_steps == 7 and isinstance(config.max_steps, int)
    assert config.epochs == 2.0 and isinstance(config.epochs, float)
    assert config.bf16 is False
    assert config.progress is False
    assert config.peft.r == 16
    assert config.peft.target_modules == ["q_proj", "k_proj"]
    assert config.loss_params == {"beta": 0.25}
    assert config.max_tokens_per_row is None
    assert config.tokenizer == "train"
    assert config.report_to == []


def test_set_errors():
    config = TrainConfig()
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        apply_override(config, "batchsize=3")
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_override(config, "lr")
    with pytest.raises(ConfigError, match="expected true or false"):
        apply_override(config, "resume=maybe")
    with pytest.raises(ConfigError, match="expected a number"):
        apply_override(config, "lr=fast")


def test_validation_after_overrides(tmp_path):
    path = write(tmp_path, "layout: shared\n")
    with pytest.raises(ConfigError, match="layout must be one of"):
        load_config(path, ["layout=padded"])


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, "objective: lipo_lambda\nseed: 3\n"), ["loss_params.beta=0.3"])
    saved = save_config(config, tmp_path / "out")
    data = yaml.safe_load(saved.read_text())
    assert data["objective"] == "lipo_lambda" and data["seed"] == 3 and data["loss_params"] == {"beta": 0.3}
    assert load_config(saved) == config
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_wrapping_in_lora_does_not_pass_on_peft_s_deprecation_warning():
    import warnings

    pytest.importorskip("peft")
    from rankalign.engine import tiny_causal_lm
    from rankalign.train.config import PeftConfig

    options = PeftConfig(enabled=True, r=2, target_modules=["q_proj", "v_proj"], top_layers=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = options.wrap(tiny_causal_lm(32, layers=2), task_type="CAUSAL_LM")
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
    adapted = sorted({name.split(".layers.")[1].split(".")[0] for name, p in model.named_parameters()
                      if p.requires_grad})
    assert adapted == ["1"]  # top_layers=1 of 2: only the last block carries the adapter


@pytest.mark.parametrize("assignment, message", [
    ("seed=-1", r"seed must be in \[0, 2\*\*32\), got -1"),
    ("seed=4294967296", r"seed must be in \[0, 2\*\*32\)"),
    ("lr=nan", "lr must be > 0, got nan"),
    ("weight_decay=-0.1", "weight_decay must be >= 0"),
    ("max_grad_norm=-1", "max_grad_norm must be >= 0"),
    ("max_records=-4", "max_records must be >= 0, got -4"),
    ("save_steps=-1", "save_steps must be >= 0"),
    ("max_tokens_per_row=0", "max_tokens_per_row must be >= 1 or null, got 0"),
    ("data_options.skip_invlid=true", "data_options: unknown option.s. skip_invlid; known: layout"),
    ("peft.top_layers=0", "peft.top_layers must be >= 1 or null, got 0"),
    ("peft.r=0", "peft.r must be >= 1, got 0"),
    ("peft.target_modules=[]", "peft.target_modules must name at least one module"),
])
def test_shared_settings_are_checked_for_policy_and_reward_configs(tmp_path, assignment, message):
    # before this round the reward config took the optimisation settings and failed later inside torch
    # (or not at all: a negative max_grad_norm trained without clipping)
    from rankalign.train.reward import RewardTrainConfig

    path = write(tmp_path, "data: x.jsonl\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path, [assignment])
    with pytest.raises(ConfigError, match=message):
        load_config(path, [assignment], cls=RewardTrainConfig)


@pytest.mark.parametrize("assignment, message", [
    ("lr_scheduler=cosine_with_restart", "lr_scheduler: 'cosine_with_restart' is not one of"),
    # transformers knows these, but they need an eval loop or arguments a config cannot pass
    ("lr_scheduler=reduce_lr_on_plateau", "lr_scheduler: 'reduce_lr_on_plateau' is not one of"),
    ("lr_scheduler=warmup_stable_decay", "lr_scheduler: 'warmup_stable_decay' is not one of"),
    ("optimizer=adamw", "optimizer: 'adamw' is not one of"),
    ("max_steps=-3", "max_steps must be > 0, or -1"),
    ("epochs=-1", "epochs must be >= 0"),
    ("eval_split_seed=-2", r"eval_split_seed must be in \[0, 2\*\*32\)"),
])
def test_policy_schedule_and_optimiser_names_are_checked_before_training(tmp_path, assignment, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(write(tmp_path, "data: x.jsonl\nmax_steps: 4\n"), [assignment])
    if "cosine_with_restart" in assignment:
        assert caught.value.hint == "did you mean 'cosine_with_restarts'?"
    for good in ("lr_scheduler=inverse_sqrt", "optimizer=adamw_torch_fused", "max_steps=-1", "seed=4294967295"):
        load_config(write(tmp_path, "data: x.jsonl\nmax_steps: 4\n"), [good])


def test_a_bitsandbytes_optimizer_needs_the_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    with pytest.raises(ConfigError, match="needs the bitsandbytes package"):
        load_config(write(tmp_path, "data: x.jsonl\n"), ["optimizer=adamw_8bit"])


def test_reward_loss_params_are_checked_against_the_objective(tmp_path):
    from rankalign.train.reward import RewardTrainConfig

    with pytest.raises(ConfigError, match="objective 'bt_reward' has no parameter 'nope'"):
        load_config(write(tmp_path, "data: x.jsonl\n"), ["loss_params.nope=1"], cls=RewardTrainConfig)


def test_a_model_inside_the_output_dir_is_refused(tmp_path):
    # training into the folder the model came from would replace the reference with the policy
    from rankalign.train.reward import RewardTrainConfig

    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    config = write(tmp_path, "data: x.jsonl\n")
    run = str(tmp_path / "run")
    for cls, key in ((TrainConfig, "model"), (TrainConfig, "reference_model"), (RewardTrainConfig, "backbone")):
        with pytest.raises(ConfigError, match=f"{key} .* lies inside output_dir"):
            load_config(config, [f"{key}={run}/final", f"output_dir={run}"], cls=cls)
        load_config(config, [f"{key}={tmp_path}/elsewhere", f"output_dir={run}"], cls=cls)  # fine


def test_tiny_model_keys_are_checked_in_both_configs(tmp_path):
    from rankalign.train.reward import RewardTrainConfig

    config = write(tmp_path, "data: x.jsonl\n")
    for cls in (TrainConfig, RewardTrainConfig):
        with pytest.raises(ConfigError, match="tiny_model.hiden_size") as caught:
            load_config(config, ["tiny_model.hiden_size=64"], cls=cls)
        assert "did you mean 'hidden_size'" in str(caught.value.hint)
        load_config(config, ["tiny_model.hidden_size=64", "tiny_model.intermediate_size=96"], cls=cls)  # fine
