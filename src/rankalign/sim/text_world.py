"""The text world: a tiny synthetic language, a gold reward computed from the text, and a tiny causal LM.

The language
    Four topics, each with six nouns (``TOPICS``). A prompt names a topic and one of its nouns,
    ``"about sea fish"``. A response is one to four sentences from a tiny grammar::

        the <noun> is <adjective> .   |   a <adjective> <noun> .   |   <noun> and <noun> .

    The reference distribution (what the reference policy is trained on by plain next-token SFT) draws
    each noun from the prompt's topic with a per-response probability q ~ U(0.2, 0.9), otherwise from
    another topic, with replacement, so responses mix on- and off-topic nouns and repeat some.

The gold reward (documented, linear in four *utility components* of the text)
    ``r*(x, y) = 1.0 * on_topic - 1.0 * off_topic - 0.5 * repeats + 0.05 * words`` where

    * ``on_topic``: the number of *distinct* nouns of the prompt's topic in the response;
    * ``off_topic``: occurrences of nouns of other topics;
    * ``repeats``: noun occurrences beyond the first of each noun (repetition);
    * ``words``: the response's tokens, words and ``.`` alike (the length component: a small
      per-token bonus, so that a policy can gain gold reward by being longer, and an annotator group
      that weighs length more can be exploited by growing responses).

    A response is read as its tokens (:func:`response_tokens`): whitespace-separated, with ``.`` a token of
    its own even when attached to a word, so ``"a red wave."`` (how a tokenizer's ``decode`` joins a word
    and the full stop after it) counts as ``"a red wave ."`` does.

    The components are what simulated annotators see (:mod:`rankalign.sim.annotators`): an annotator's
    utility is its own weights on them, the gold weights by default.

The model
    A word-level tokenizer (:func:`rankalign.engine.build_tokenizer`, ``kind="word"``) over the whole
    vocabulary and a Llama-style :func:`rankalign.engine.tiny_causal_lm` trained from scratch with the
    next-token loss on the response tokens (:func:`train_reference_policy`).
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.records import RankedList
from ..errors import UsageError

TOPICS: dict[str, tuple[str, ...]] = {
    "food": ("apple", "bread", "cheese", "soup", "rice", "honey"),
    "sea": ("boat", "wave", "fish", "shell", "sand", "tide"),
    "sky": ("star", "moon", "cloud", "rain", "wind", "sun"),
    "city": ("road", "tower", "train", "bridge", "market", "lamp"),
}
ADJECTIVES = ("big", "small", "old", "new", "red", "blue")
FUNCTION_WORDS = ("about", "the", "is", "a", "and", ".")
COMPONENTS = ("on_topic", "off_topic", "repeats", "words")
GOLD_WEIGHTS = np.array([1.0, -1.0, -0.5, 0.05])

_TOPIC_OF_NOUN = {noun: topic for topic, nouns in TOPICS.items() for noun in nouns}


@dataclass(frozen=True)
class TextWorld:
    """The prompts of the text world and its gold weights (over :data:`COMPONENTS`)."""

    prompts: tuple[str, ...]
    gold_weights: np.ndarray

    def __post_init__(self):
        if isinstance(self.prompts, (str, bytes)) or not isinstance(self.prompts, Sequence) or not self.prompts:
            raise UsageError(f"prompts must be a non-empty sequence of text-world prompts, got {self.prompts!r}")
        for prompt in self.prompts:
            prompt_topic(prompt)  # 'about <topic> <noun>', or a UsageError naming the prompt
        weights = np.asarray(self.gold_weights, dtype=np.float64)
        if weights.shape != (len(COMPONENTS),) or not np.all(np.isfinite(weights)):
            raise UsageError(f"gold_weights must be {len(COMPONENTS)} finite numbers, one per component "
                             f"({', '.join(COMPONENTS)}), got {self.gold_weights!r}")

    def components(self, prompt: str, responses: Sequence[str]) -> np.ndarray:
        """Utility components, shape (len(responses), 4)."""
        _check_texts("responses", responses)
        if not responses:
            prompt_topic(prompt)
            return np.zeros((0, len(COMPONENTS)))
        return np.stack([reward_components(prompt, r) for r in responses])

    def gold_rewards(self, prompt: str, responses: Sequence[str]) -> np.ndarray:
        """``r*(x, y)`` for each response, shape (len(responses),)."""
        return self.components(prompt, responses) @ self.gold_weights


def make_text_world() -> TextWorld:
    """All 24 prompts ``"about <topic> <noun>\n"`` and the gold weights ``(1, -1, -0.5, 0.05)``."""
    prompts = tuple(f"about {topic} {noun}\n" for topic, nouns in TOPICS.items() for noun in nouns)
    return TextWorld(prompts=prompts, gold_weights=GOLD_WEIGHTS.copy())


def vocabulary() -> list[str]:
    """Every word of the language (topics, nouns, adjectives, function words)."""
    words = list(FUNCTION_WORDS) + list(TOPICS) + [n for nouns in TOPICS.values() for n in nouns] + list(ADJECTIVES)
    return list(dict.fromkeys(words))


def _check_texts(name: str, texts) -> None:
    """``texts`` is a sequence of strings (one string would be read as its characters), or a UsageError."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise UsageError(f"{name} must be a list of strings, got {type(texts).__name__}"
                         + (" (one string: wrap it in a list)" if isinstance(texts, str) else ""))
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UsageError(f"{name}[{i}] must be a string, got {type(text).__name__}")


def prompt_topic(prompt: str) -> str:
    """The topic a prompt asks about (its second word)."""
    if not isinstance(prompt, str):
        raise UsageError(f"a text-world prompt is a string 'about <topic> <noun>', got {type(prompt).__name__}")
    words = prompt.split()
    if len(words) < 2 or words[0] != "about" or words[1] not in TOPICS:
        raise UsageError(f"not a prompt of the text world: {prompt!r} (expected 'about <topic> <noun>')")
    return words[1]


_TOKEN = re.compile(r"\.|[^\s.]+")


def response_tokens(response: str) -> list[str]:
    """The tokens of a response: whitespace-separated words, with ``.`` always a token of its own
    (``"big."`` is ``["big", "."]``, as the word-level tokenizer reads it)."""
    return _TOKEN.findall(response)


def reward_components(prompt: str, response: str) -> np.ndarray:
    """``(on_topic, off_topic, repeats, words)`` of a response (module docstring)."""
    topic = prompt_topic(prompt)
    if not isinstance(response, str):
        raise UsageError(f"a response is a string, got {type(response).__name__}")
    words = response_tokens(response)
    nouns = [w for w in words if w in _TOPIC_OF_NOUN]
    counts = Counter(nouns)
    on_topic = sum(1 for n in counts if _TOPIC_OF_NOUN[n] == topic)
    off_topic = sum(c for n, c in counts.items() if _TOPIC_OF_NOUN[n] != topic)
    repeats = sum(c - 1 for c in counts.values())
    return np.array([on_topic, off_topic, repeats, len(words)], dtype=np.float64)


def gold_reward(prompt: str, response: str, weights: np.ndarray = GOLD_WEIGHTS) -> float:
    """``r*(x, y)``: the gold weights on :func:`reward_components`."""
    return float(reward_components(prompt, response) @ weights)


def sample_reference_response(prompt: str, rng: np.random.Generator) -> str:
    """One response from the reference distribution the reference policy imitates (module docstring)."""
    topic = prompt_topic(prompt)
    others = [t for t in TOPICS if t != topic]
    q = rng.uniform(0.2, 0.9)

    def noun() -> str:
        source = topic if rng.random() < q else others[rng.integers(len(others))]
        return TOPICS[source][rng.integers(6)]

    sentences = []
    for _ in range(int(rng.integers(1, 5))):
        form = rng.integers(3)
        adjective = ADJECTIVES[rng.integers(len(ADJECTIVES))]
        if form == 0:
            sentences.append(f"the {noun()} is {adjective} .")
        elif form == 1:
            sentences.append(f"a {adjective} {noun()} .")
        else:
            sentences.append(f"{noun()} and {noun()} .")
    return " ".join(sentences)


def grammar_ranked_lists(num_lists: int = 256, *, k: int = 4, seed: int = 0,
                         tie_tolerance: float = 1e-9) -> list[RankedList]:
    """Ranked lists of the text world without a model: K distinct responses per prompt drawn from the
    world's reference grammar (:func:`sample_reference_response`), ranked by :func:`gold_reward`.

    The gold rewards are stored as the candidates' scores, so graded objectives (LiPO-lambda, PRO) see
    them as grades. Rewards within ``tie_tolerance`` tie (the default only absorbs float rounding of
    rewards that are equal in exact arithmetic). Prompts cycle through the world's prompts; deterministic
    for a seed.
    """
    _check_count("num_lists", num_lists, 0)
    _check_count("k", k, 1)
    world = make_text_world()
    rng = np.random.default_rng(seed)
    records = []
    for i in range(num_lists):
        prompt = world.prompts[i % len(world.prompts)]
        responses: list[str] = []
        while len(responses) < k:  # distinct candidates (a RankedList has no duplicates)
            response = sample_reference_response(prompt, rng)
            if response not in responses:
                responses.append(response)
        rewards = world.gold_rewards(prompt, responses)
        records.append(RankedList.from_scores([float(r) for r in rewards], candidates=responses, prompt=prompt,
                                              tie_tolerance=tie_tolerance,
                                              meta={"source": "rankalign.sim.text_world", "index": i}))
    return records


@dataclass(frozen=True)
class GoldJudge:
    """The text world's gold reward as a judge (``rank(prompt, candidates) -> RankedList``, an ``id``).

    Ranks by :func:`gold_reward` (higher is better; rewards within ``tie_tolerance`` tie) and keeps the
    rewards as scores, so scoring objectives (GRPO, RLOO, SPPO's soft labels) see them. The annotator is
    ``id``. What the online loop (:mod:`rankalign.online`) is tested against: the judge knows the truth.
    """

    world: TextWorld
    id: str = "text_world_gold"
    tie_tolerance: float = 1e-9

    def __post_init__(self):
        if isinstance(self.tie_tolerance, bool) or not isinstance(self.tie_tolerance, numbers.Real) or not (
                math.isfinite(self.tie_tolerance) and self.tie_tolerance >= 0):
            raise UsageError(f"tie_tolerance must be a finite number >= 0, got {self.tie_tolerance!r}")

    def rank(self, prompt: str, candidates: Sequence[str]) -> RankedList:
        _check_texts("candidates", candidates)
        if not candidates:
            raise UsageError("a judge needs at least one candidate")
        rewards = self.world.gold_rewards(prompt, list(candidates))
        return RankedList.from_scores([float(r) for r in rewards], candidates=list(candidates), prompt=prompt,
                                      tie_tolerance=self.tie_tolerance, annotator=self.id)


def gold_judge(**options) -> GoldJudge:
    """A :class:`GoldJudge` over :func:`make_text_world` (``options`` go to GoldJudge: ``id``, ``tie_tolerance``)."""
    return GoldJudge(world=make_text_world(), **options)


def build_text_tokenizer():
    """A word-level tokenizer over the whole vocabulary (every text of the world encodes without <unk>)."""
    from ..engine import build_tokenizer

    return build_tokenizer([" ".join(vocabulary())], vocab_size=len(vocabulary()) + 16, kind="word")


def _encode(tokenizer, prompt: str, response: str | None = None) -> tuple[list[int], list[int]]:
    prompt_ids = [tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    response_ids = [] if response is None else tokenizer(response, add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id]
    return prompt_ids, response_ids


def train_reference_policy(world: TextWorld, tokenizer, *, steps: int = 300, batch_size: int = 32,
                           learning_rate: float = 3e-3, hidden_size: int = 64, layers: int = 2, seed: int = 0,
                           progress: Callable[[int, int, float], None] | None = None):
    """Train a tiny Llama-style LM from scratch by next-token SFT on reference-distribution samples.

    Every step draws ``batch_size`` fresh (prompt, response) pairs (prompt uniform over ``world.prompts``,
    response from :func:`sample_reference_response`) and minimises the mean next-token cross-entropy on
    the response tokens (EOS included; the prompt is context only), AdamW with a linear decay.
    Deterministic for ``seed`` (on one CPU thread count). Returns the model in eval mode.
    """
    import torch

    from ..engine import tiny_causal_lm

    if not isinstance(world, TextWorld):
        raise UsageError(f"world must be a TextWorld (make_text_world()), got {type(world).__name__}")
    _check_count("steps", steps, 1)
    _check_count("batch_size", batch_size, 1)
    rng = np.random.default_rng([seed, 17])
    model = tiny_causal_lm(len(tokenizer), hidden_size=hidden_size, layers=layers, heads=4, seed=seed,
                           max_position_embeddings=128)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / max(steps, 1))
    pad = tokenizer.pad_token_id
    for step in range(steps):
        rows, labels = [], []
        for _ in range(batch_size):
            prompt = world.prompts[int(rng.integers(len(world.prompts)))]
            prompt_ids, response_ids = _encode(tokenizer, prompt, sample_reference_response(prompt, rng))
            rows.append(prompt_ids + response_ids)
            labels.append([-100] * len(prompt_ids) + response_ids)
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
        attention = (torch.arange(width)[None, :] < torch.tensor([len(r) for r in rows])[:, None]).long()
        loss = model(input_ids=input_ids, attention_mask=attention, labels=target).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, steps, loss.item())
    return model.eval()


def sample_responses(model, tokenizer, prompts: Sequence[str], k: int, *, seed: int = 0, max_new_tokens: int = 40,
                     distinct: bool = True, max_tries: int = 4) -> list[list[str]]:
    """K sampled responses per prompt (temperature 1, no top-k/top-p), seeded.

    With ``distinct`` the K responses of a prompt are distinct and non-empty (as a ranked list needs):
    extra samples are drawn, up to ``max_tries`` rounds; a prompt that still has fewer gets fewer.
    Without it the K samples are returned as drawn (an empty response is ``""``, i.e. EOS at once).
    """
    import torch

    _check_texts("prompts", prompts)
    _check_count("k", k, 1)
    _check_count("max_new_tokens", max_new_tokens, 1)
    _check_count("max_tries", max_tries, 1)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        out: list[list[str]] = [[] for _ in prompts]
        for _ in range(max_tries):
            need = [i for i in range(len(prompts)) if len(out[i]) < k]
            if not need:
                break
            batch_prompts = [prompts[i] for i in need for _ in range(k)]
            texts = _generate(model, tokenizer, batch_prompts, max_new_tokens)
            for position, i in enumerate(need):
                for text in texts[position * k:(position + 1) * k]:
                    if len(out[i]) < k and (not distinct or (text.strip() and text not in out[i])):
                        out[i].append(text)
        return out
    finally:
        torch.random.set_rng_state(generator_state)


def _generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    import torch

    encoded = [_encode(tokenizer, p)[0] for p in prompts]
    texts: list[str] = []
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    result: dict[int, str] = {}
    for _, members in sorted(by_length.items()):  # equal-length prompts need no padding
        input_ids = torch.tensor([encoded[i] for i in members])
        with torch.no_grad():
            generated = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                                       max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id)
        for row, i in enumerate(members):
            new = generated[row, input_ids.shape[1]:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id)]
            result[i] = " ".join(tokenizer.convert_ids_to_tokens([t for t in new if t != tokenizer.pad_token_id]))
    texts = [result[i] for i in range(len(prompts))]
    return texts


def response_logps(model, tokenizer, prompts: Sequence[str], responses: Sequence[Sequence[str]], *,
                   batch_size: int = 16):
    """``log pi(y | x)`` of each response (EOS included) through the engine, as a list of (K,) arrays.

    Scored by :func:`rankalign.engine.score_lists` (in the model's own precision, no progress bar).
    """
    from ..engine import TokenizedList, score_lists

    _check_texts("prompts", prompts)
    if isinstance(responses, (str, bytes)) or not isinstance(responses, Sequence) or len(responses) != len(prompts):
        raise UsageError(f"responses must be a list of response lists, one per prompt: {len(prompts)} prompts, "
                         f"got {len(responses) if isinstance(responses, Sequence) else type(responses).__name__}")
    for i, group in enumerate(responses):
        _check_texts(f"responses[{i}]", group)
    lists = []
    for index, (prompt, group) in enumerate(zip(prompts, responses)):
        prompt_ids, _ = _encode(tokenizer, prompt)
        lists.append(TokenizedList(prompt_ids=prompt_ids, response_ids=[_encode(tokenizer, prompt, r)[1] for r in group],
                                   ranks=list(range(len(group))), index=index))
    scores = score_lists(model, lists, batch_size=batch_size, pad_token_id=tokenizer.pad_token_id, precision=None,
                         progress=False, announce=False)
    return [values.double().numpy() for values in scores.logps]


def _check_count(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise UsageError(f"{name} must be a whole number >= {minimum}, got {value!r}")


class Timer:
    """Wall time of a block (``with Timer() as t: ...; t.seconds``)."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


__all__ = [
    "TOPICS", "ADJECTIVES", "COMPONENTS", "GOLD_WEIGHTS", "TextWorld", "make_text_world", "vocabulary",
    "prompt_topic", "response_tokens", "reward_components", "gold_reward", "sample_reference_response",
    "grammar_ranked_lists",
    "GoldJudge", "gold_judge",
    "build_text_tokenizer",
    "train_reference_policy", "sample_responses", "response_logps", "Timer",
]
