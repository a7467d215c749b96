"""Layouts: which columns a row of preference data has, and how each row becomes a record.

A *layout* names a way of writing preference feedback down (see :data:`LAYOUTS`). :func:`detect_layout`
recognises it from the column names; :func:`row_to_record` turns one row into a :class:`RankedList` or
:class:`Judgment`. Real files name their columns their own way: ``mapping`` renames them
(``{"item_a": "home", "item_b": "away", "outcome": "result"}``: our name -> the file's column) and
``outcomes`` relabels outcome values (``{"1": "a", "0": "tie", "-1": "b"}``).

Item comparisons (arena, winner/loser, item/outcome) become ``RankedList(prompt=None,
candidates=[item_a, item_b], ranks=[0, 1] | [1, 0] | [0, 0])`` with the order of the file kept
(``candidates[0]`` is item_a / home / model_a / winner, which matters for an order effect such as home
advantage) and the row count in ``weight``. Columns a layout does not use are kept in ``meta``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping

from rankalign.errors import UsageError

from ._sources import _DuplicateKey, _unique_object, duplicate_key_error
from .errors import DataError
from .records import Judgment, RankedList, annotator_id

LAYOUTS = (
    "pairs", "arena", "winner_loser", "item_outcome", "ranked_responses", "item_ranking", "ratings",
    "unpaired", "preflib", "rankedlist", "judgment",
)

#: Columns each layout needs (optional ones in brackets), for detection and error messages.
LAYOUT_COLUMNS = {
    "pairs": "[prompt], chosen, rejected (text or chat messages; without prompt, the shared transcript "
             "prefix is the prompt)",
    "arena": "model_a, model_b, winner (model_a | model_b | tie | tie (bothbad)) [, judge]",
    "winner_loser": "winner, loser [, count]",
    "item_outcome": "item_a, item_b, outcome (1 / 0 / 0.5 or a / b / tie) [, count]",
    "ranked_responses": "prompt, responses, ranking (indices best first, nested lists for ties)",
    "item_ranking": "ranking (items best first, nested lists for ties)",
    "ratings": "[prompt | instruction], completions (each with a response and ratings/scores)",
    "unpaired": "[prompt], completion, label",
    "preflib": "a PrefLib .soc / .soi / .toc / .toi file",
    "rankedlist": "candidates, ranks [, prompt, scores, annotator, weight, meta] (RankedList.to_dict)",
    "judgment": "response, label [, prompt, annotator, weight, meta] (Judgment.to_dict)",
}

# Detection order: the first layout whose required columns are all present wins.
_REQUIRED = (
    ("judgment", {"response", "label"}),
    ("rankedlist", {"candidates", "ranks"}),
    ("unpaired", {"completion", "label"}),
    ("ratings", {"completions"}),
    ("ranked_responses", {"responses", "ranking"}),
    ("item_ranking", {"ranking"}),
    ("arena", {"model_a", "model_b", "winner"}),
    ("winner_loser", {"winner", "loser"}),
    ("item_outcome", {"item_a", "item_b", "outcome"}),
    ("pairs", {"chosen", "rejected"}),
)

#: The layouts :func:`rankalign.data.read_comparisons` accepts (two items, an outcome, a count).
COMPARISON_LAYOUTS = ("winner_loser", "item_outcome", "arena", "rankedlist")

# Outcome labels understood without an ``outcomes`` argument (keys as :func:`label_key` writes them).
DEFAULT_OUTCOMES = {
    "item_outcome": {"1": "a", "a": "a", "0": "b", "b": "b", "0.5": "tie", "tie": "tie", "draw": "tie"},
    "arena": {"model_a": "a", "model_b": "b", "tie": "tie", "tie (bothbad)": "tie"},
}
OUTCOME_VALUE = {"a": 1.0, "b": 0.0, "tie": 0.5}
_OUTCOME_ALIASES = {"a": "a", "b": "b", "tie": "tie", "draw": "tie", "1": "a", "0": "b", "0.5": "tie",
                    "model_a": "a", "model_b": "b", "first": "a", "second": "b"}
_TRUE = {"true", "1", "yes", "y", "good", "desirable", "up"}
_FALSE = {"false", "0", "no", "n", "bad", "undesirable", "down"}

TRANSCRIPT_TURN = "\n\nAssistant:"


# ------------------------------------------------------------------------------------- small helpers
def parse_pairs_option(spec, what: str) -> dict[str, str]:
    """``"a=b,c=d"`` (the CLI's ``--map``/``--outcomes`` form) or a mapping -> ``{"a": "b", "c": "d"}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        out = {}
        for key, value in spec.items():
            for part, name in ((key, "key"), (value, "value")):
                # a None, a list or a dict would be stored as its repr ("None", "['a']") and match nothing
                if not isinstance(part, (str, int, float)) or (isinstance(part, str) and not part.strip()):
                    raise UsageError(f"{what}: the {name} {part!r} (in {key!r}: {value!r}) is not a name or a label",
                                     hint="give text keys and values, e.g. {'item_a': 'home'}")
            out[str(key)] = str(value)
        return out
    if not isinstance(spec, str):
        raise UsageError(f"{what}: expected a dict or a 'key=value,...' string, got {type(spec).__name__}",
                         hint="e.g. {'item_a': 'home'} or 'item_a=home,item_b=away'")
    out = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UsageError(f"{what}: expected key=value pairs separated by commas, got {part!r}",
                             hint="e.g. item_a=home,item_b=away")
        key = key.strip()
        if key in out:  # the last would silently win: "1=a,...,1=b" turns home wins into away wins
            raise UsageError(f"{what}: {key!r} is given twice ({key}={out[key]} and {key}={value.strip()})",
                             hint="give each key once")
        out[key] = value.strip()
    return out


#: Our column names that ``mapping`` / ``--map`` may target (every layout's columns).
MAPPABLE_COLUMNS = (
    "prompt", "chosen", "rejected", "model_a", "model_b", "winner", "judge", "loser", "count", "item_a",
    "item_b", "outcome", "responses", "ranking", "instruction", "completions", "completion", "label",
    "candidates", "ranks", "scores", "annotator", "weight", "meta", "response",
)


def parse_mapping(spec, extra=()) -> dict[str, str]:
    """``--map`` / ``mapping``: our column -> the file's column; a key that is not one of our columns
    (a typo such as ``cont=n``) is a :class:`~rankalign.errors.UsageError` with the close matches,
    never silently ignored. ``extra`` names further accepted keys (columns kept as covariates)."""
    import difflib

    mapping = parse_pairs_option(spec, "--map")
    known = list(MAPPABLE_COLUMNS) + [str(name) for name in extra]
    for ours, theirs in mapping.items():
        if ours not in known:
            close = difflib.get_close_matches(ours, known, n=2, cutoff=0.6)
            suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UsageError(f"--map {ours}={theirs}: {ours!r} is not a column rankalign reads{suggestion}",
                             hint=f"the left side is our name: {', '.join(MAPPABLE_COLUMNS)}")
    return mapping


def check_mapped_columns(mapping: Mapping[str, str], columns, path=None) -> None:
    """Every file column named on the right of ``--map`` must exist (else the mapping does nothing)."""
    columns = set(columns)
    for ours, theirs in mapping.items():
        if theirs not in columns and ours not in columns:
            shown = ", ".join(sorted(map(str, columns))[:20])
            raise UsageError(f"--map {ours}={theirs}: {path or 'the file'} has no column {theirs!r} "
                             f"(columns: {shown})", hint="the right side is the file's column name")


def parse_outcomes(spec) -> dict[str, str]:
    """Outcome relabelling, e.g. ``"1=a,0=tie,-1=b"``: file value -> ``a`` | ``b`` | ``tie`` (keys normalised
    with :func:`label_key`, values checked). For the ``unpaired`` layout the values may be ``true``/``false``
    or a probability. A label given twice (also as ``1`` and ``1.0``) is a
    :class:`~rankalign.errors.UsageError`: the last would otherwise silently win."""
    out = {}
    for raw, target in parse_pairs_option(spec, "--outcomes").items():
        key = label_key(raw)
        if key in out:
            raise UsageError(f"--outcomes: the label {raw!r} is given twice ({key}={out[key]} and {raw}={target})",
                             hint="give each outcome label once")
        out[key] = target.strip().lower()
    return out


def label_key(value) -> str:
    """Normalise an outcome label so that ``1``, ``1.0``, ``"1"`` and ``" 1.0 "`` are one key; text is lower-cased."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value).strip().lower()
        return _number_key(number)
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text.lower()
    return _number_key(number) if math.isfinite(number) else text.lower()


def _number_key(number: float) -> str:
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return repr(number)


def outcome_table(layout: str, outcomes: Mapping[str, str] | None) -> dict[str, str]:
    """Default labels of ``layout`` overlaid with the user's ``outcomes`` (user labels win)."""
    table = dict(DEFAULT_OUTCOMES.get(layout, {}))
    for raw, target in (outcomes or {}).items():
        canonical = _OUTCOME_ALIASES.get(target)
        if canonical is None:
            raise UsageError(f"--outcomes {raw}={target}: the target must be a, b or tie")
        table[label_key(raw)] = canonical
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


# ------------------------------------------------------------------------------------------- detection
def detect_layout(columns, *, path=None) -> str:
    """The layout whose required columns are all in ``columns`` (names after any mapping).

    Raises :class:`DataError` (reason ``unknown_layout``) listing the columns found and the layouts accepted.
    """
    found = set(columns)
    for name, required in _REQUIRED:
        if required <= found:
            return name
    accepted = "; ".join(f"{name}: {LAYOUT_COLUMNS[name]}" for name in LAYOUTS)
    hints = []
    near = [(name, sorted(required - found)) for name, required in _REQUIRED
            if len(required - found) == 1 and len(required) > 1]
    if near:  # one column short of a layout: most likely a typo or a column left out
        hints.append("; ".join(f"layout {name!r} lacks column {missing[0]!r}" for name, missing in near))
    if len(found) == 1:
        (only,) = found
        separator = next((s for s in (";", "\t", "|") if s in only), None)
        if separator is not None:
            hints.append(f"the header is one column {only!r}: is the file separated by {separator!r} rather "
                         "than commas?")
    hint = f" ({'; '.join(hints)})" if hints else ""
    raise DataError(f"unknown layout{hint}: found columns {sorted(found)}; accepted layouts are {accepted}. "
                    "Name your columns with mapping= / --map (e.g. item_a=home,item_b=away,outcome=result) "
                    "or pass layout= / --layout", path=path, reason="unknown_layout")


def check_columns(layout: str, columns, *, path=None, line=None) -> None:
    """Raise :class:`DataError` (reason ``missing_field``) when ``columns`` lack a column that ``layout``
    needs, e.g. ``--layout arena`` on a winner/loser file; names the layout the columns do fit, if any."""
    found = set(columns)
    required = dict(_REQUIRED).get(layout, set())
    missing = sorted(required - found)
    if not missing:
        return
    fits = next((name for name, needed in _REQUIRED if needed <= found), None)
    fit = f"; they fit layout {fits!r}" if fits else ""
    raise DataError(f"no column {missing[0]!r}, which layout {layout!r} needs ({', '.join(sorted(required))}); "
                    f"the columns are {sorted(found)}{fit}", path=path, line=line, field=missing[0],
                    reason="missing_field", hint="pass the layout the file has (or none: it is detected), or "
                    "name the columns with --map")


def check_layout(layout: str):
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def apply_mapping(row: dict, mapping: Mapping[str, str]) -> dict:
    """Rename the file's columns to ours: ``mapping`` is our name -> the file's column."""
    if not mapping:
        return row
    row = dict(row)
    for ours, theirs in mapping.items():
        if theirs in row:
            row[ours] = row.pop(theirs)
    return row


# ---------------------------------------------------------------------------------------- conversion
class RowContext:
    """What a row converter needs besides the row: names for messages, the outcome table, counters."""

    def __init__(self, layout: str, mapping=None, outcomes=None, *, text_cells: bool = True, arrow: bool = False):
        self.layout = layout
        # True for Parquet and a Dataset: Arrow stores a column of dicts as a struct of every key seen, so a
        # key a row does not have comes back as None there (a score attribute that was never given)
        self.arrow = arrow
        # True where an empty cell means "no value": CSV, and the CSV-like Parquet files `write` makes (None
        # as an empty cell); in JSON, JSONL and a Dataset an explicit "" is a value, so an empty prompt is an
        # error there rather than an absent one, and a string is text, never a chat-message list's JSON
        self.text_cells = text_cells
        self.mapping = dict(mapping or {})
        self.outcomes = parse_outcomes(outcomes)
        self.table = outcome_table(layout, self.outcomes) if layout in DEFAULT_OUTCOMES else {}
        if layout in ("unpaired", "judgment"):
            for raw, target in self.outcomes.items():
                _check_label_target(raw, target)
        self.notes: Counter = Counter()

    def name(self, column: str) -> str:
        """The file's name for one of our columns (for error messages)."""
        return self.mapping.get(column, column)


def row_to_record(row: dict, ctx: RowContext):
    """Convert one row (columns already renamed) to a record; raises :class:`DataError` naming the field."""
    try:
        return _CONVERTERS[ctx.layout](row, ctx)
    except RecursionError:  # a value nested thousands deep (hostile input): a counted, skippable row error
        raise DataError("a value is nested too deeply to read", reason="too_deep") from None
    except DataError as error:
        if error.reason not in ("unknown_field", "missing_field"):
            raise
        own = _row_layout(row)
        if own is None or own == ctx.layout:
            raise
        raise DataError(f"{error.message} (this row has the columns of the {own!r} layout, while the file is read "
                        f"as {ctx.layout!r}: a file holds one layout)", field=error.field, reason=error.reason,
                        hint=error.hint) from None


def _row_layout(row: dict) -> str | None:
    """The layout one row's present columns fit on their own, or None."""
    try:
        return detect_layout([key for key, value in row.items() if not _missing(value)])
    except DataError:
        return None


def _require(row, column, ctx, *, text=False):
    value = row.get(column)
    if text and isinstance(value, str):
        return value  # an empty response is data (HH-RLHF has two); training gives it an EOS-only response
    if _missing(value):
        raise DataError("missing" if value is None or column not in row else "empty", field=ctx.name(column),
                        reason="missing_field")
    return value


def _number(value) -> float:
    """``float(value)`` for a number or numeric text; a boolean is not a number here (TypeError)."""
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):  # numpy 1's bool_, numpy 2's bool
        raise TypeError("a boolean is not a number")
    return float(value)


def _optional(row, column):
    value = row.get(column)
    return None if _missing(value) else value


def _weight(row, ctx) -> float:
    """The row's ``count`` (identical votes) or ``weight``, 1.0 when it has neither; both is an error (which
    one is meant, or their product, the row does not say)."""
    given = {column: row.get(column) for column in ("count", "weight")}
    given = {c: v for c, v in given.items() if not (v is None or (isinstance(v, str) and not v.strip()))}
    if len(given) == 2:
        raise DataError(f"both count ({given['count']!r}) and weight ({given['weight']!r}) are given; give one"[:160],
                        field=ctx.name("weight"), reason="count_and_weight",
                        hint="a count is the number of identical votes and becomes the record's weight")
    for column, value in given.items():  # absent ones are left out (an explicit NaN is refused below)
        try:
            number = _number(value)
        except (TypeError, ValueError):
            raise DataError(f"{column} {value!r} is not a number", field=ctx.name(column),
                            reason="bad_count") from None
        except OverflowError:
            raise DataError(f"{column} is out of range", field=ctx.name(column), reason="non_finite") from None
        if not math.isfinite(number):
            raise DataError(f"{column} must be finite, got {value!r}", field=ctx.name(column), reason="non_finite")
        if number < 0:
            raise DataError(f"{column} must be >= 0, got {value!r}", field=ctx.name(column),
                            reason="negative_count")
        return number
    return 1.0


def _item(row, column, ctx) -> str:
    value = _require(row, column, ctx)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (str, int)) or isinstance(value, bool):  # 1.5, a list, a dict, true
        raise DataError(f"an item id must be a string or an integer, got {type(value).__name__} {value!r}"[:120],
                        field=ctx.name(column), reason="bad_type")
    return str(value)


def _annotator(row, *columns):
    for column in columns:
        value = _optional(row, column)
        if value is not None:
            try:
                return annotator_id(value)  # the record model's rule: text, or an integer (7.0 -> "7")
            except DataError as error:
                raise DataError(error.message, field=column, reason=error.reason) from None
    return None


def _meta(row, used) -> dict:
    return {k: v for k, v in row.items() if k not in used}


def _decode_json_field(value, field: str):
    """Nested values arrive as JSON text from CSV (and from our own Parquet files)."""
    if isinstance(value, str):
        try:
            return json.loads(value, object_pairs_hook=_unique_object)
        except _DuplicateKey as error:
            raise duplicate_key_error(error.key, field=field) from None
        except json.JSONDecodeError as error:
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise DataError(f"expected a list (or, in a CSV cell, its JSON text), got the string {shown!r} "
                            f"({error.msg})", field=field, reason="malformed_json") from None
        except RecursionError:
            raise DataError("JSON nested too deeply to read", field=field, reason="too_deep") from None
    return value


def _maybe_messages(value, ctx):
    """A CSV (or Parquet) cell holding a JSON chat-message list becomes that list; other text stays text.
    In JSON, JSONL and a Dataset a string is a string: messages are a list there, and a response that
    happens to be such JSON text (an answer about chat formats) is kept as the text it is."""
    if ctx.text_cells and isinstance(value, str) and value.lstrip().startswith("[{"):
        try:
            decoded = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return value
        if isinstance(decoded, list) and all(isinstance(m, dict) and "role" in m for m in decoded):
            return decoded
    return value


def _rename_candidate_fields(error: DataError, names: list[str]) -> DataError:
    field = error.field or ""
    for i, name in enumerate(names):
        prefix = f"candidates[{i}]"
        if field == prefix or field.startswith(prefix + "[") or field.startswith(prefix + "."):
            return DataError(error.message, field=name + field[len(prefix):], reason=error.reason)
    return error


def _item_comparison(a: str, b: str, code: str, weight: float, ctx, fields, **kwargs) -> RankedList:
    if a == b:
        raise DataError(f"an item compared with itself ({a!r} against {b!r})", field=ctx.name(fields[1]),
                        reason="self_comparison")
    ranks = {"a": (0, 1), "b": (1, 0), "tie": (0, 0)}[code]
    return RankedList(prompt=None, candidates=(a, b), ranks=ranks, weight=weight, **kwargs)


def _outcome_code(value, column, ctx) -> str:
    code = ctx.table.get(label_key(value))
    if code is None:
        raise DataError(f"unknown outcome label {value!r}; known: {', '.join(sorted(ctx.table))} "
                        "(relabel with outcomes= / --outcomes, e.g. 1=a,0=tie,-1=b)", field=ctx.name(column),
                        reason="unknown_outcome")
    return code


# ---------------------------------------------------------------------------------------- converters
def _arena(row, ctx):
    a, b = _item(row, "model_a", ctx), _item(row, "model_b", ctx)
    raw = _require(row, "winner", ctx)
    code = _outcome_code(raw, "winner", ctx)
    meta = _meta(row, {"model_a", "model_b", "winner", "judge", "annotator", "count", "weight"})
    if label_key(raw) == "tie (bothbad)":
        meta["winner"] = "tie (bothbad)"  # both bad is still a tie; keep which kind
        ctx.notes["tie_bothbad"] += 1
    return _item_comparison(a, b, code, _weight(row, ctx), ctx, ("model_a", "model_b"),
                            annotator=_annotator(row, "annotator", "judge"), meta=meta)


def _winner_loser(row, ctx):
    winner, loser = _item(row, "winner", ctx), _item(row, "loser", ctx)
    return _item_comparison(winner, loser, "a", _weight(row, ctx), ctx, ("winner", "loser"),
                            annotator=_annotator(row, "annotator"),
                            meta=_meta(row, {"winner", "loser", "count", "weight", "annotator"}))


def _item_outcome(row, ctx):
    a, b = _item(row, "item_a", ctx), _item(row, "item_b", ctx)
    code = _outcome_code(_require(row, "outcome", ctx), "outcome", ctx)
    return _item_comparison(a, b, code, _weight(row, ctx), ctx, ("item_a", "item_b"),
                            annotator=_annotator(row, "annotator"),
                            meta=_meta(row, {"item_a", "item_b", "outcome", "count", "weight", "annotator"}))


def _common_prefix_length(a: str, b: str) -> int:
    """Length of the longest common prefix, by bisection on slice equality (C-speed comparisons)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def split_transcripts(chosen: str, rejected: str) -> tuple[str, str, str, bool]:
    """Split two HH-RLHF style transcripts into (prompt, chosen response, rejected response, early).

    The split is at the last turn boundary both share: the start of the last ``"\\n\\nAssistant:"`` turn
    that lies wholly inside their common prefix. The prompt keeps that marker, so the responses are what
    the assistant said (``" Sure, ..."``). ``early`` is True when the two differ before their final
    Assistant turn (one has extra turns, or an earlier turn differs): the responses then span several
    turns, starting at the last shared Assistant turn.
    """
    common = _common_prefix_length(chosen, rejected)
    boundary = chosen.rfind(TRANSCRIPT_TURN, 0, common)
    if boundary < 0:
        raise DataError("chosen and rejected share no '\\n\\nAssistant:' turn, so there is no implicit prompt; "
                        "give an explicit prompt column", field="chosen", reason="no_shared_prompt")
    cut = boundary + len(TRANSCRIPT_TURN)
    early = chosen.rfind(TRANSCRIPT_TURN) != boundary or rejected.rfind(TRANSCRIPT_TURN) != boundary
    return chosen[:cut], chosen[cut:], rejected[cut:], early


def split_messages(chosen: list, rejected: list) -> tuple[list, list, list, bool]:
    """Message-list version of :func:`split_transcripts`: the prompt is the messages before the last
    assistant turn both share; ``early`` when that is not the final message of both."""
    def key(m):
        return (m.get("role"), m.get("content")) if isinstance(m, Mapping) else (None, repr(m))

    common = 0
    while common < min(len(chosen), len(rejected)) and key(chosen[common]) == key(rejected[common]):
        common += 1
    split = -1
    for s in range(min(common, len(chosen) - 1, len(rejected) - 1), 0, -1):
        if key(chosen[s])[0] == "assistant" and key(rejected[s])[0] == "assistant":
            split = s
            break
    if split < 1:
        raise DataError("chosen and rejected share no prompt before an assistant turn; give an explicit "
                        "prompt column", field="chosen", reason="no_shared_prompt")
    early = split != len(chosen) - 1 or split != len(rejected) - 1
    return chosen[:split], chosen[split:], rejected[split:], early


def _pairs(row, ctx):
    chosen = _maybe_messages(_require(row, "chosen", ctx, text=True), ctx)
    rejected = _maybe_messages(_require(row, "rejected", ctx, text=True), ctx)
    prompt = _maybe_messages(_optional(row, "prompt"), ctx)
    if prompt is None and not ctx.text_cells and isinstance(row.get("prompt"), str):
        raise DataError("empty text", field=ctx.name("prompt"), reason="empty_text")
    if prompt is None:
        if isinstance(chosen, str) and isinstance(rejected, str):
            prompt, chosen, rejected, early = split_transcripts(chosen, rejected)
        elif isinstance(chosen, list) and isinstance(rejected, list):
            prompt, chosen, rejected, early = split_messages(chosen, rejected)
        else:
            raise DataError("chosen and rejected must both be text or both chat messages", field=ctx.name("rejected"),
                            reason="bad_type")
    else:
        early = None
        repeated = _opens_with_prompt(chosen) and _opens_with_prompt(rejected)
        if repeated:
            prompt, chosen, rejected = _split_repeated_prompt(prompt, chosen, rejected, ctx)
    names = [ctx.name("chosen"), ctx.name("rejected")]
    try:
        record = RankedList(prompt=prompt, candidates=(chosen, rejected), ranks=(0, 1), weight=_weight(row, ctx),
                            annotator=_annotator(row, "annotator"),
                            meta=_meta(row, {"prompt", "chosen", "rejected", "annotator", "count", "weight"}))
    except DataError as error:
        if error.reason == "duplicate_candidate":
            raise DataError("chosen and rejected are identical", field=names[1],
                            reason="identical_chosen_rejected") from None
        raise _rename_candidate_fields(error, names) from None
    if early is not None:  # counted for records actually read
        ctx.notes["implicit_prompt"] += 1
        ctx.notes["implicit_prompt_early_divergence"] += early
    elif repeated:
        ctx.notes["prompt_repeated_in_responses"] += 1
    return record


def _opens_with_prompt(value) -> bool:
    """Whether chosen / rejected is a message list that starts with a prompt turn (user, system) rather than
    with the assistant's answer, i.e. holds the whole conversation."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) \
        and value[0].get("role") != "assistant"


def _split_repeated_prompt(prompt, chosen: list, rejected: list, ctx) -> tuple[list, list, list]:
    """An explicit prompt next to chosen / rejected conversations that repeat it (as in
    HuggingFaceH4/ultrafeedback_binarized: the prompt as text, chosen and rejected from the user turn on).
    The prompt turns are split off the conversations, as for an implicit prompt (TRL does the same), so that
    they are not read as part of each response; the prompt column must be the last of those turns (text:
    the last user message) or all of them, else the row says two things and is an error."""
    try:
        shared, chosen, rejected, _ = split_messages(chosen, rejected)
    except DataError:  # they begin with different prompt turns: neither can be the prompt column
        shared = []
    given = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)

    def key(message):
        return (message.get("role"), message.get("content")) if isinstance(message, Mapping) else repr(message)

    if len(given) > len(shared) or [key(m) for m in shared[len(shared) - len(given):]] != [key(m) for m in given]:
        raise DataError(f"{ctx.name('chosen')} and {ctx.name('rejected')} begin with prompt turns that differ from "
                        f"the prompt column ({len(shared)} shared message(s) before the answers)",
                        field=ctx.name("prompt"), reason="prompt_mismatch",
                        hint="give chosen / rejected as the assistant's answer(s) only, or leave out the prompt "
                        "column to split the conversations")
    return shared, chosen, rejected


def _ranking_levels(ranking, field: str) -> list[list]:
    if not isinstance(ranking, list) or not ranking:
        raise DataError("expected a non-empty list, best first (nested lists for ties)", field=field,
                        reason="bad_type" if not isinstance(ranking, list) else "empty_list")
    return [entry if isinstance(entry, list) else [entry] for entry in ranking]


def _ranked_responses(row, ctx):
    prompt = _maybe_messages(_require(row, "prompt", ctx), ctx)
    responses = _decode_json_field(_require(row, "responses", ctx), ctx.name("responses"))
    if not isinstance(responses, list):
        raise DataError("expected a list of responses", field=ctx.name("responses"), reason="bad_type")
    k = len(responses)
    ranking_field = ctx.name("ranking")
    levels = _ranking_levels(_decode_json_field(_require(row, "ranking", ctx), ranking_field), ranking_field)
    ranks: list[int | None] = [None] * k
    for level, group in enumerate(levels):
        for index in group:
            if isinstance(index, bool) or not isinstance(index, int):
                if isinstance(index, float) and index.is_integer():
                    index = int(index)
                else:
                    raise DataError(f"a ranking entry must be a response index, got {index!r}", field=ranking_field,
                                    reason="bad_type")
            if not 0 <= index < k:
                raise DataError(f"names candidate {index} of {k} (indices 0..{k - 1})", field=ranking_field,
                                reason="rank_out_of_range")
            if ranks[index] is not None:
                raise DataError(f"names candidate {index} twice", field=ranking_field, reason="duplicate_rank")
            ranks[index] = level
    scores = _optional(row, "scores")
    if scores is not None:
        scores = _decode_json_field(scores, ctx.name("scores"))
    names = [f"{ctx.name('responses')}[{i}]" for i in range(k)]
    try:
        return RankedList(prompt=prompt, candidates=responses, ranks=ranks, scores=scores,
                          annotator=_annotator(row, "annotator"), weight=_weight(row, ctx),
                          meta=_meta(row, {"prompt", "responses", "ranking", "scores", "annotator", "count", "weight"}))
    except DataError as error:
        raise _rename_candidate_fields(error, names) from None


def _item_ranking(row, ctx):
    field = ctx.name("ranking")
    levels = _ranking_levels(_decode_json_field(_require(row, "ranking", ctx), field), field)
    candidates, ranks = [], []
    for level, group in enumerate(levels):
        for item in group:
            if isinstance(item, float) and item.is_integer():
                item = int(item)
            candidates.append(item)
            ranks.append(level)
    try:
        return RankedList(prompt=None, candidates=candidates, ranks=ranks, annotator=_annotator(row, "annotator"),
                          weight=_weight(row, ctx), meta=_meta(row, {"ranking", "annotator", "count", "weight"}))
    except DataError as error:
        if error.field and error.field.startswith("candidates"):
            raise DataError(f"{error.message} ({error.field} of the flattened ranking)", field=field,
                            reason=error.reason) from None
        raise


_RESPONSE_KEYS = ("response", "text", "completion", "content")
_SCORE_KEYS = ("overall_score", "score", "rating")


def _completion_scores(completion: dict, field: str):
    """Per-attribute ratings of one UltraFeedback-style completion (``ratings`` or ``annotations``), else
    a single ``score``/``overall_score``/``rating``. Ratings of "N/A" are left out."""
    for key in ("ratings", "annotations"):
        ratings = completion.get(key)
        if isinstance(ratings, Mapping):
            out = {}
            for attribute, value in ratings.items():
                if isinstance(value, Mapping):
                    value = value.get("Rating", value.get("rating"))
                if value is None or (isinstance(value, str) and value.strip().upper() in ("", "N/A", "NA")):
                    continue
                try:
                    out[str(attribute)] = _number(value)
                except (TypeError, ValueError, OverflowError):
                    raise DataError(f"rating {value!r} is not a number", field=f"{field}.{key}.{attribute}",
                                    reason="bad_type") from None
            return out, key
    for key in _SCORE_KEYS:
        if key in completion and completion[key] is not None:
            try:
                return _number(completion[key]), key
            except (TypeError, ValueError, OverflowError):
                raise DataError(f"score {completion[key]!r} is not a number", field=f"{field}.{key}",
                                reason="bad_type") from None
    return None, None


def _ratings(row, ctx):
    prompt = _maybe_messages(_optional(row, "prompt") or _optional(row, "instruction"), ctx)
    completions = _decode_json_field(_require(row, "completions", ctx), ctx.name("completions"))
    if not isinstance(completions, list) or not completions:
        raise DataError("expected a non-empty list of completions", field=ctx.name("completions"), reason="bad_type")
    texts, scores, extras = [], [], []
    for i, completion in enumerate(completions):
        field = f"{ctx.name('completions')}[{i}]"
        if not isinstance(completion, Mapping):
            raise DataError("a completion must be an object with a response and ratings", field=field,
                            reason="bad_type")
        text_key = next((k for k in _RESPONSE_KEYS if k in completion), None)
        if text_key is None:
            raise DataError(f"no response text (one of {', '.join(_RESPONSE_KEYS)})", field=field,
                            reason="missing_field")
        texts.append(completion[text_key])
        score, score_key = _completion_scores(completion, field)
        scores.append(score)
        extras.append({k: v for k, v in completion.items() if k not in (text_key, score_key)})
    meta = _meta(row, {"prompt", "instruction", "completions", "annotator", "count", "weight"})
    if any(extras):
        meta["completions"] = extras
    names = [f"{ctx.name('completions')}[{i}]" for i in range(len(texts))]
    try:
        return RankedList.from_scores(scores, candidates=texts, prompt=prompt, annotator=_annotator(row, "annotator"),
                                      weight=_weight(row, ctx), meta=meta)
    except DataError as error:
        raise _rename_candidate_fields(error, names) from None


def parse_label(value, ctx, column="label"):
    """A Judgment label: bool from true/false-like values (and 1/0), else a probability in [0, 1]."""
    key = label_key(value)
    key = ctx.outcomes.get(key, key)
    if key in _TRUE:
        return True
    if key in _FALSE:
        return False
    try:
        number = float(key)
    except ValueError:
        raise DataError(f"label {value!r} is neither true/false nor a probability", field=ctx.name(column),
                        reason="bad_label") from None
    if not math.isfinite(number):
        raise DataError(f"label must be finite, got {value!r}", field=ctx.name(column), reason="non_finite")
    return number


def _check_label_target(raw: str, target: str) -> None:
    """An ``outcomes`` target for labels must be true/false-like or a probability; anything else would make
    every row it relabels a ``bad_label`` row error, blaming the data for the argument."""
    if target in _TRUE or target in _FALSE:
        return
    try:
        number = float(target)
    except ValueError:
        number = math.nan
    if not 0.0 <= number <= 1.0:
        raise UsageError(f"--outcomes {raw}={target}: a label must become true, false or a probability in [0, 1]",
                         hint="e.g. good=true,bad=false or 5=1.0,1=0.0")


def _unpaired(row, ctx):
    label = parse_label(_require(row, "label", ctx), ctx)
    try:
        return Judgment(prompt=_maybe_messages(_optional(row, "prompt"), ctx),
                        response=_maybe_messages(_require(row, "completion", ctx, text=True), ctx), label=label,
                        annotator=_annotator(row, "annotator"), weight=_weight(row, ctx),
                        meta=_meta(row, {"prompt", "completion", "label", "annotator", "count", "weight"}))
    except DataError as error:
        if error.field and error.field.startswith("response"):
            raise DataError(error.message, field=ctx.name("completion") + error.field[len("response"):],
                            reason=error.reason) from None
        raise


def _native_fields(row, allowed_json, ctx):
    data = {}
    for key, value in row.items():
        if value is None or (ctx.text_cells and isinstance(value, str) and value == ""):
            continue  # an empty CSV cell is no value; an explicit "" elsewhere is checked as one
        if key in allowed_json:
            value = _decode_json_field(value, key)
            if key == "scores" and ctx.arrow and isinstance(value, list):
                value = [{k: v for k, v in s.items() if v is not None} if isinstance(s, Mapping) else s
                         for s in value]
        elif key in ("prompt", "response"):
            value = _maybe_messages(value, ctx)
        elif key == "weight" and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise DataError(f"weight {value!r} is not a number", field="weight", reason="bad_type") from None
        data[key] = value
    return data


def _rankedlist(row, ctx):
    if "candidates" not in row and "response" in row:  # a JSONL file may mix the two native forms
        return _judgment(row, ctx)
    return RankedList.from_dict(_native_fields(row, ("candidates", "ranks", "scores", "meta"), ctx))


def _judgment(row, ctx):
    if "response" not in row and "candidates" in row:
        return _rankedlist(row, ctx)
    data = _native_fields(row, ("meta",), ctx)
    if "label" in data:
        data["label"] = parse_label(data["label"], ctx)
    return Judgment.from_dict(data)


_CONVERTERS = {
    "pairs": _pairs, "arena": _arena, "winner_loser": _winner_loser, "item_outcome": _item_outcome,
    "ranked_responses": _ranked_responses, "item_ranking": _item_ranking, "ratings": _ratings,
    "unpaired": _unpaired, "rankedlist": _rankedlist, "judgment": _judgment,
}

__all__ = ["LAYOUTS", "LAYOUT_COLUMNS", "COMPARISON_LAYOUTS", "detect_layout", "parse_outcomes",
           "split_transcripts", "split_messages", "label_key"]
