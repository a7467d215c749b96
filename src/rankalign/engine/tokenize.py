"""Records to token lists: chat templates, a token-level prompt/response boundary, explicit truncation.

A :class:`~rankalign.data.RankedList` (or a :class:`~rankalign.data.Judgment`, as a list of one) becomes a
:class:`TokenizedList`: the prompt's token ids once and each ranked response's token ids.

* Plain text: ``prompt_ids = [BOS] + encode(prompt)``, ``response_ids = encode(response) + [EOS]``
  (each part encoded on its own, without the tokenizer's own special tokens; a prompt whose text already
  starts with the BOS token, or a response whose text already ends with EOS, is not given a second one).
  A response whose tokens would merge with the prompt's when the two strings are encoded together is
  counted in the report (``boundary_merges``); the separately encoded tokens are used, so every response
  of a list shares the same prompt tokens.
* Chat messages (a message-list prompt or candidate): the conversation is rendered with the tokenizer's
  chat template, the prompt with ``add_generation_prompt=True``; the response's ids are the full
  conversation's ids after the prompt's. The boundary is checked on tokens: the full conversation must
  start with exactly the prompt's ids, otherwise a :class:`~rankalign.data.DataError` names the record
  and candidate.
* Truncation: the prompt is cut from the left (a leading BOS is kept), responses from the right; with
  ``max_length`` a response gets what the (truncated) prompt leaves. A response left with no tokens is an
  error (``on_empty="error"``) or drops its whole list (``on_empty="drop"``); either way it is counted.
"""

from __future__ import annotations

import numbers
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ..data.errors import DataError
from ..data.records import Judgment, RankedList, check_flag
from ..errors import UsageError


@dataclass(frozen=True)
class TokenizedList:
    """One ranked list (or a Judgment as K = 1) in token ids.

    Attributes
    ----------
    prompt_ids : list of int
        The prompt's tokens (at least one: BOS, or the chat template's opening).
    response_ids : list of list of int
        K responses, each non-empty and ending with EOS when the tokenizer has one and it was not cut.
    ranks : list of int
        0 best, equal = tie (dense); unranked candidates were dropped.
    grades : list of float, optional
        A numeric score per response (the record's scores; the mean over attributes for mappings).
    weight : float
        The record's weight.
    label : bool or float, optional
        A Judgment's label.
    index : int
        Position of the record in the source data (for caches and reports).
    """

    prompt_ids: list[int]
    response_ids: list[list[int]]
    ranks: list[int]
    grades: list[float] | None = None
    weight: float = 1.0
    label: bool | float | None = None
    index: int = -1

    @property
    def k(self) -> int:
        """Number of responses."""
        return len(self.response_ids)

    @property
    def shared_length(self) -> int:
        """Tokens in the prefix-shared layout: prompt once plus every response."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)

    @property
    def duplicated_length(self) -> int:
        """Tokens in the duplicated layout: the prompt repeated with every response."""
        return self.k * len(self.prompt_ids) + sum(len(r) for r in self.response_ids)


@dataclass
class TruncationReport:
    """What :func:`tokenize_records` cut or dropped, so that nothing is lost silently.

    Attributes
    ----------
    rows_seen, rows_kept : int
        Records read and lists returned.
    prompts_truncated, responses_truncated : int
        Prompts (records) and responses (candidates) that lost tokens.
    prompt_tokens_cut, response_tokens_cut : int
        Tokens removed.
    candidates_unranked : int
        Candidates left out because their rank was None.
    boundary_merges : int
        Plain-text responses whose first token would merge with the prompt when encoded together.
    rows_dropped : Counter
        Dropped records by reason (``"empty_response"``, ``"no_ranked_candidates"``).
    unordered_lists : Counter
        Lists kept although no two of their ranked candidates are strictly ordered (``"one_candidate"``,
        ``"all_tied"``). They are trained on (they still cost a forward pass), but objectives built on strictly
        ordered pairs (``dpo`` and the pairwise family, ``pl_dpo``, ``lipo_lambda``) give them zero loss; tie-
        and score-aware ones (``listnet``, ``sppo``, ``pro``, ``davidson_reward``) do learn from tied lists.
    """

    rows_seen: int = 0
    rows_kept: int = 0
    prompts_truncated: int = 0
    responses_truncated: int = 0
    prompt_tokens_cut: int = 0
    response_tokens_cut: int = 0
    candidates_unranked: int = 0
    boundary_merges: int = 0
    rows_dropped: Counter = field(default_factory=Counter)
    unordered_lists: Counter = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        """Total records dropped."""
        return sum(self.rows_dropped.values())

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("rows_seen", "rows_kept", "prompts_truncated",
                                             "responses_truncated", "prompt_tokens_cut", "response_tokens_cut",
                                             "candidates_unranked", "boundary_merges")}
        out["rows_dropped"] = dict(self.rows_dropped)
        out["unordered_lists"] = dict(self.unordered_lists)
        return out

    def __str__(self) -> str:
        lines = [f"tokenized {self.rows_kept} of {self.rows_seen} records"]
        if self.prompts_truncated:
            lines.append(f"  {self.prompts_truncated} prompts truncated on the left "
                         f"({self.prompt_tokens_cut} tokens cut)")
        if self.responses_truncated:
            lines.append(f"  {self.responses_truncated} responses truncated on the right "
                         f"({self.response_tokens_cut} tokens cut)")
        for reason, count in sorted(self.rows_dropped.items()):
            lines.append(f"  {count} records dropped: {reason}")
        if self.candidates_unranked:
            lines.append(f"  {self.candidates_unranked} unranked candidates left out")
        if self.unordered_lists:
            parts = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in sorted(self.unordered_lists.items()))
            lines.append(f"  {sum(self.unordered_lists.values())} lists hold no strictly ordered pair ({parts}): "
                         "pair-based objectives such as dpo and pl_dpo give them zero loss")
        if self.boundary_merges:
            lines.append(f"  {self.boundary_merges} responses would merge with the prompt at the boundary "
                         "(encoded separately)")
        if len(lines) == 1:
            lines.append("  nothing truncated or dropped")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- helpers
def _is_messages(value) -> bool:
    return not isinstance(value, str) and value is not None


def _as_messages(value, role: str) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [dict(m) for m in value]


def _grade(score) -> float | None:
    if score is None:
        return None
    if isinstance(score, Mapping):
        return sum(score.values()) / len(score) if score else None
    return float(score)


def _as_record(record, index: int):
    if isinstance(record, (RankedList, Judgment)):
        return record
    if isinstance(record, Mapping):
        try:
            return Judgment.from_dict(record) if "response" in record else RankedList.from_dict(record)
        except DataError as error:
            raise error.at(line=index) from None
    raise TypeError(f"record {index}: expected a RankedList, a Judgment or a mapping, got {type(record).__name__}")


def _render_chat(tokenizer, messages, *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


class _Encoder:
    """Collects strings, then encodes them all in one batched tokenizer call (fast tokenizers run it in
    parallel), without the tokenizer's own special tokens; identical strings are encoded once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.slot: dict[str, int] = {}
        self.ids: list[list[int]] = []

    def add(self, text: str) -> int:
        if text not in self.slot:
            self.slot[text] = len(self.slot)
        return self.slot[text]

    def run(self) -> None:
        texts = list(self.slot)
        self.ids = [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def __getitem__(self, slot: int) -> list[int]:
        return self.ids[slot]


def _plan_record(tokenizer, record, index: int, candidates, names, encoder: _Encoder, check_boundary: bool):
    """Render a record's strings and queue them for encoding; returns how to assemble the ids."""
    conversational = _is_messages(record.prompt) or any(_is_messages(c) for c in candidates)
    if conversational:
        if getattr(tokenizer, "chat_template", None) is None:
            field = "prompt" if _is_messages(record.prompt) else \
                next(name for name, c in zip(names, candidates) if _is_messages(c))
            raise DataError("chat messages need a tokenizer with a chat template (this one has none); give one "
                            "(tokenizer.chat_template = ...) or plain-text prompts and responses", line=index,
                            field=field, reason="no_chat_template")
        prompt_messages = _as_messages(record.prompt, "user")
        prompt_slot = encoder.add(_render_chat(tokenizer, prompt_messages, generation_prompt=True))
        fulls = [encoder.add(_render_chat(tokenizer, prompt_messages + _as_messages(c, "assistant"),
                                          generation_prompt=False)) for c in candidates]
        return ("chat", prompt_slot, fulls)
    prompt_slot = None if record.prompt is None else encoder.add(record.prompt)
    responses = [encoder.add(c) for c in candidates]
    joints = None
    if check_boundary and record.prompt is not None:
        joints = [encoder.add(record.prompt + c) for c in candidates]
    return ("text", prompt_slot, responses, joints)


def _assemble(tokenizer, plan, encoder: _Encoder, index: int, names, report: TruncationReport):
    """(prompt_ids, [response_ids]) from a plan, the prompt/response boundary checked on tokens."""
    if plan[0] == "chat":
        _, prompt_slot, fulls = plan
        prompt_ids = encoder[prompt_slot]
        responses = []
        for slot, name in zip(fulls, names):
            full_ids = encoder[slot]
            if full_ids[:len(prompt_ids)] != prompt_ids:
                where = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b),
                             min(len(prompt_ids), len(full_ids)))
                raise DataError("the chat template renders the prompt differently inside the full conversation "
                                f"(tokens differ from position {where}); cannot split prompt and response on "
                                "tokens", line=index, field=name, reason="template_boundary")
            responses.append(full_ids[len(prompt_ids):])
        return list(prompt_ids), responses
    _, prompt_slot, response_slots, joint_slots = plan
    prompt_ids = [] if prompt_slot is None else list(encoder[prompt_slot])
    responses = [list(encoder[slot]) for slot in response_slots]
    if joint_slots is not None:
        for joint, response in zip(joint_slots, responses):
            if encoder[joint] != prompt_ids + response:
                report.boundary_merges += 1
    # text that already carries them (a prompt rendered with a chat template, "<s>...", "...</s>") keeps one
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and prompt_ids[:1] != [bos]:
        prompt_ids = [bos] + prompt_ids
    if eos is not None:
        responses = [r if r[-1:] == [eos] else r + [eos] for r in responses]
    return prompt_ids, responses


def _truncate_prompt(prompt_ids: list[int], limit: int | None, bos_id) -> list[int]:
    if limit is None or len(prompt_ids) <= limit:
        return prompt_ids
    if limit < 1:
        raise ValueError(f"max_prompt_tokens must be >= 1, got {limit}")
    if bos_id is not None and prompt_ids[0] == bos_id and limit >= 2:
        return prompt_ids[:1] + prompt_ids[len(prompt_ids) - (limit - 1):]
    return prompt_ids[len(prompt_ids) - limit:]


# ---------------------------------------------------------------------------------------------- public
def tokenize_records(tokenizer, records: Iterable, *, max_prompt_tokens: int | None = None,
                     max_response_tokens: int | None = None, max_length: int | None = None,
                     on_empty: str = "error", check_boundary: bool = True,
                     ) -> tuple[list[TokenizedList], TruncationReport]:
    """Tokenize ranked lists (and judgments) for the engine; truncation is explicit and reported.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        With a chat template if any record is conversational.
    records : iterable of RankedList, Judgment, or their ``to_dict`` mappings
    max_prompt_tokens : int, optional
        Keep at most this many prompt tokens, cutting from the left (a leading BOS is kept).
    max_response_tokens : int, optional
        Keep at most this many tokens of each response, cutting from the right.
    max_length : int, optional
        Cap on prompt + response tokens (after the prompt is cut): a response gets
        ``max_length - len(prompt_ids)`` tokens at most.
    on_empty : {"error", "drop"}
        A response left with no tokens raises a DataError (naming the record and candidate) or drops the
        record, counted under ``rows_dropped["empty_response"]``.
    check_boundary : bool
        Plain text: also encode prompt + response together to count boundary merges (about doubles
        the tokenizer's work). Chat boundaries are always checked.

    All strings are encoded in one batched tokenizer call.

    Returns
    -------
    lists : list of TokenizedList
    report : TruncationReport
    """
    if on_empty not in ("error", "drop"):
        raise UsageError(f"on_empty must be 'error' or 'drop', got {on_empty!r}")
    check_boundary = check_flag(check_boundary, "check_boundary")
    for name, value in (("max_prompt_tokens", max_prompt_tokens), ("max_response_tokens", max_response_tokens),
                        ("max_length", max_length)):
        # a token count: 2.0, "3" or True would fail deep inside (slicing) or be read as 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise UsageError(f"{name} must be a whole number >= 1 (or None), got {value!r}")
    report = TruncationReport()
    out: list[TokenizedList] = []
    bos_id = tokenizer.bos_token_id
    encoder = _Encoder(tokenizer)
    pending = []   # (index, record, names, ranks, scores, label, plan), encoded in one batch below
    for index, raw in enumerate(records):
        report.rows_seen += 1
        record = _as_record(raw, index)
        if isinstance(record, Judgment):
            candidates: Sequence = [record.response]
            ranks = [0]
            scores = None
            label = record.label
            names = ["response"]
        else:
            keep = [i for i, r in enumerate(record.ranks) if r is not None]
            report.candidates_unranked += record.k - len(keep)
            if not keep:
                report.rows_dropped["no_ranked_candidates"] += 1
                continue
            dense = record.dense_ranks()
            candidates = [record.candidates[i] for i in keep]
            ranks = [dense[i] for i in keep]
            scores = None if record.scores is None else [_grade(record.scores[i]) for i in keep]
            label = None
            names = [f"candidates[{i}]" for i in keep]
        plan = _plan_record(tokenizer, record, index, candidates, names, encoder, check_boundary)
        pending.append((index, record, names, ranks, scores, label, plan))
    encoder.run()

    for index, record, names, ranks, scores, label, plan in pending:
        prompt_ids, responses = _assemble(tokenizer, plan, encoder, index, names, report)
        if not prompt_ids:
            raise DataError("the prompt has no tokens and the tokenizer has no BOS token to start it",
                            line=index, field="prompt", reason="empty_prompt")

        cut_prompt = _truncate_prompt(prompt_ids, max_prompt_tokens, bos_id)
        budget = max_response_tokens
        if max_length is not None:
            left = max_length - len(cut_prompt)
            budget = left if budget is None else min(budget, left)
        cut_responses, empty_field = [], None
        truncated = tokens_cut = 0
        for r_ids, name in zip(responses, names):
            kept = r_ids if budget is None else r_ids[:max(budget, 0)]
            if len(kept) < len(r_ids):
                truncated += 1
                tokens_cut += len(r_ids) - len(kept)
            if not kept and empty_field is None:
                empty_field = name
            cut_responses.append(kept)
        if empty_field is not None:
            if on_empty == "error":
                if budget is None:  # nothing was cut: an empty response and no EOS token to stand for it
                    raise DataError("the response is empty and the tokenizer has no EOS token to end it; give the "
                                    "tokenizer an eos_token or pass on_empty='drop'", line=index, field=empty_field,
                                    reason="empty_response")
                raise DataError(f"the response has no tokens left (prompt {len(cut_prompt)} tokens, response "
                                f"budget {max(budget, 0)}); raise the limits or pass on_empty='drop'",
                                line=index, field=empty_field, reason="empty_response")
            report.rows_dropped["empty_response"] += 1
            continue
        if len(cut_prompt) < len(prompt_ids):
            report.prompts_truncated += 1
            report.prompt_tokens_cut += len(prompt_ids) - len(cut_prompt)
        report.responses_truncated += truncated
        report.response_tokens_cut += tokens_cut
        if isinstance(record, RankedList) and len(set(ranks)) < 2:  # counted once kept (the docstring's "kept")
            report.unordered_lists["one_candidate" if len(ranks) == 1 else "all_tied"] += 1
        grades = scores if scores is not None and all(s is not None for s in scores) else None
        out.append(TokenizedList(prompt_ids=cut_prompt, response_ids=cut_responses, ranks=ranks, grades=grades,
                                 weight=float(record.weight), label=label, index=index))
        report.rows_kept += 1
    return out, report
