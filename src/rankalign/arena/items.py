"""The items file of ``rankalign arena init``: one JSON object per line.

``{"id": "model-a", "name": "Model A", "content": "optional text shown with the item",
"responses": {"prompt text": "this item's response", ...}}``

``id`` (1-200 characters: letters, digits and ``._:/@+-``) and ``name`` are required; ``content`` is an
optional string; ``responses`` is optional, a mapping from prompt to response or a list of
``{"prompt": ..., "response": ...}``. Items with responses are compared on a prompt (a task shows the
prompt and each candidate's response); items without are compared as they are.
"""

from __future__ import annotations

import re

from rankalign.data import iter_jsonl
from rankalign.data.errors import DataError

ITEM_ID = re.compile(r"^[A-Za-z0-9._:/@+\-]{1,200}$")
MAX_TEXT = 100_000


def _text(value, path, line, field, *, limit=MAX_TEXT):
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", path=path, line=line, field=field,
                        reason="bad_type")
    if not value.strip():
        raise DataError("empty text", path=path, line=line, field=field, reason="empty_response")
    if len(value) > limit:
        raise DataError(f"longer than {limit} characters", path=path, line=line, field=field, reason="too_long")
    return value


def _responses(value, path, line):
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for i, entry in enumerate(value):
            if not isinstance(entry, dict) or "prompt" not in entry or "response" not in entry:
                raise DataError("each entry needs 'prompt' and 'response'", path=path, line=line,
                                field=f"responses[{i}]", reason="missing_field")
            pairs.append((entry["prompt"], entry["response"]))
    else:
        raise DataError("expected a mapping prompt -> response or a list of {prompt, response}", path=path,
                        line=line, field="responses", reason="bad_type")
    out: dict[str, str] = {}
    for i, (prompt, response) in enumerate(pairs):
        prompt = _text(prompt, path, line, f"responses[{i}].prompt")
        if prompt in out:
            raise DataError("the same prompt twice", path=path, line=line, field=f"responses[{i}].prompt",
                            reason="duplicate_prompt")
        out[prompt] = _text(response, path, line, f"responses[{i}].response")
    return out


def read_items(path) -> list[dict]:
    """Read and validate an items file; errors name the file, line and field (:class:`DataError`)."""
    path = str(path)
    records, seen = [], {}
    for line, row in iter_jsonl(path):
        if not isinstance(row, dict):  # a BadRow: malformed JSON, with its location
            raise row.error
        for key in row:
            if key not in ("id", "name", "content", "responses"):
                raise DataError("unknown field (accepted: id, name, content, responses)", path=path, line=line,
                                field=key, reason="unknown_field")
        for key in ("id", "name"):
            if key not in row:
                raise DataError("missing", path=path, line=line, field=key, reason="missing_field")
        item_id = row["id"]
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        if not isinstance(item_id, str) or not ITEM_ID.match(item_id):
            raise DataError("an id is 1-200 characters of letters, digits and ._:/@+-", path=path, line=line,
                            field="id", reason="bad_id")
        if item_id in seen:
            raise DataError(f"duplicate id {item_id!r} (first on line {seen[item_id]})", path=path, line=line,
                            field="id", reason="duplicate_id")
        seen[item_id] = line
        record = {"id": item_id, "name": _text(row["name"], path, line, "name", limit=200)}
        if row.get("content") is not None:
            record["content"] = _text(row["content"], path, line, "content")
        if row.get("responses") is not None:
            record["responses"] = _responses(row["responses"], path, line)
        records.append(record)
    if len(records) < 2:
        raise DataError(f"an arena needs at least two items, found {len(records)}", path=path, reason="too_few")
    return records
