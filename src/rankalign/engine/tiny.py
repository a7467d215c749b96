"""Tiny tokenizers and causal language models, built locally (no model hub), for tests, demos and benches.

* :func:`build_tokenizer` trains a byte-level BPE (or a whitespace word-level) tokenizer on the given
  texts with the `tokenizers` library and wraps it as a ``PreTrainedTokenizerFast`` with ``<bos>``,
  ``<eos>``, ``<pad>`` and a small chat template.
* :func:`tiny_causal_lm` builds a randomly initialised Llama-style or GPT-2-style causal LM from a config,
  in float32, with dropout off (so that two forward passes over the same tokens agree exactly).
"""

from __future__ import annotations

from collections.abc import Iterable

# The chat template: every turn is ``<|role|>\n`` + content; a user/system turn ends with a newline, an
# assistant turn ends with ``<eos>`` (so a response's token ids end with EOS, as plain-text responses do).
# With ``add_generation_prompt`` the prompt ends with ``<|assistant|>\n``: the response starts right after.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' + '\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]


def build_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, kind: str = "bpe"):
    """Train a small tokenizer on ``texts`` and return it as a ``PreTrainedTokenizerFast``.

    Parameters
    ----------
    texts : iterable of str
        Training corpus (prompts and responses).
    vocab_size : int
        Target vocabulary size including the special tokens (BPE stops earlier on a small corpus).
    kind : {"bpe", "word"}
        ``"bpe"``: byte-level BPE (GPT-2 style; every string is encodable). ``"word"``: one token per
        whitespace-separated word, ``<unk>`` for unseen words.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        With ``pad_token="<pad>"`` (id 0), ``bos_token="<bos>"`` (1), ``eos_token="<eos>"`` (2),
        ``unk_token="<unk>"`` (3), role tokens ``<|system|>``, ``<|user|>``, ``<|assistant|>`` and
        :data:`CHAT_TEMPLATE`. No post-processor: callers add BOS/EOS explicitly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str (render chat messages to text first)")
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    elif kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                            show_progress=False)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'bpe' or 'word'")
    tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"],
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.padding_side = "right"
    return wrapped


def tiny_model_options() -> tuple[str, ...]:
    """Every keyword :func:`tiny_causal_lm` takes besides ``vocab_size`` (its own and the fields of the
    Llama and GPT-2 configs), for checking a config's ``tiny_model`` section before anything is built."""
    from transformers import GPT2Config, LlamaConfig

    own = ("arch", "hidden_size", "layers", "heads", "seed", "attn_implementation")
    fields = set(LlamaConfig().to_dict()) | set(GPT2Config().to_dict())
    return tuple(sorted(set(own) | {name for name in fields if not name.startswith("_")}))


def tiny_causal_lm(vocab_size: int, *, arch: str = "llama", hidden_size: int = 64, layers: int = 2,
                   heads: int = 4, seed: int = 0, **overrides):
    """A randomly initialised causal LM built from a config, float32, dropout off.

    Parameters
    ----------
    vocab_size : int
        Vocabulary size (``len(tokenizer)``).
    arch : {"llama", "gpt2"}
        Llama-style (RMSNorm, rotary positions, SwiGLU, untied head) or GPT-2-style (LayerNorm, learned
        absolute positions, GELU MLP, head tied to the token embedding).
    hidden_size, layers, heads : int
        Width, depth and number of attention heads.
    seed : int
        Seed for the initial weights (the global RNG state is left unchanged).
    **overrides
        Further config fields (``intermediate_size``, ``max_position_embeddings``, ``bos_token_id``, ...)
        and ``attn_implementation`` (``"sdpa"`` by default, or ``"eager"``).

    Returns
    -------
    transformers.PreTrainedModel
        ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` in float32, in eval mode.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    attn_implementation = overrides.pop("attn_implementation", "sdpa")
    if arch == "llama":
        fields = dict(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=2048, tie_word_embeddings=False, attention_dropout=0.0,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
        fields.update(overrides)
        config, model_class = LlamaConfig(**fields), LlamaForCausalLM
    elif arch == "gpt2":
        fields = dict(vocab_size=vocab_size, n_embd=hidden_size, n_layer=layers, n_head=heads, n_positions=1024,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0)
        fields.update(overrides)
        config, model_class = GPT2Config(**fields), GPT2LMHeadModel
    else:
        raise ValueError(f"unknown arch {arch!r}; choose 'llama' or 'gpt2'")
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.to(torch.float32).eval()
