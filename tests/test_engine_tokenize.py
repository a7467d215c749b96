"""tokenize_records: plain text and chat templates, token-level boundary checks, truncation policy and report."""

import pytest

from rankalign.data import DataError
from rankalign.data.records import Judgment, RankedList
from rankalign.engine import ListCollator, build_tokenizer, pack_lists, tokenize_records

CORPUS = ["one two three four five six seven eight nine ten", "alpha beta gamma delta", "yes no maybe"]


@pytest.fixture(scope="module")
def words():
    # word-level: one token per word, so every count below is a word count
    return build_tokenizer(CORPUS, kind="word", vocab_size=64)


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer(CORPUS * 5, kind="bpe", vocab_size=300)


def _word_ids(tok, text):
    return [tok.convert_tokens_to_ids(w) for w in text.split()]


def test_plain_text_ids_bos_eos_and_ranks(words):
    record = RankedList(prompt="one two three", candidates=["alpha beta", "yes", "gamma"], ranks=[2, 0, None],
                        scores=[1.0, 3.0, None], weight=2.5)
    (item,), report = tokenize_records(words, [record])
    bos, eos = words.bos_token_id, words.eos_token_id
    assert item.prompt_ids == [bos] + _word_ids(words, "one two three")
    # the unranked third candidate is left out; ranks renumbered densely (2 -> 1)
    assert item.response_ids == [_word_ids(words, "alpha beta") + [eos], _word_ids(words, "yes") + [eos]]
    assert item.ranks == [1, 0]
    assert item.grades == [1.0, 3.0]
    assert item.weight == 2.5 and item.index == 0
    assert report.candidates_unranked == 1 and report.rows_kept == 1


def test_judgment_is_a_list_of_one(words):
    (item,), _ = tokenize_records(words, [Judgment(prompt="one", response="yes no", label=False)])
    assert item.k == 1 and item.ranks == [0] and item.label is False
    assert item.response_ids == [_word_ids(words, "yes no") + [words.eos_token_id]]


def test_truncation_cuts_prompt_left_response_right_and_reports(words):
    records = [
        RankedList(prompt="one two three four five", candidates=["alpha beta gamma delta", "yes"], ranks=[0, 1]),
        RankedList(prompt="six", candidates=["no", "maybe"], ranks=[0, 1]),
    ]
    lists, report = tokenize_records(words, records, max_prompt_tokens=3, max_response_tokens=2)
    bos, eos = words.bos_token_id, words.eos_token_id
    # prompt: BOS + 5 words = 6 tokens -> BOS kept + the last 2 words
    assert lists[0].prompt_ids == [bos] + _word_ids(words, "four five")
    # response: 4 words + EOS = 5 tokens -> the first 2; "yes" + EOS = 2 tokens, untouched
    assert lists[0].response_ids == [_word_ids(words, "alpha beta"), _word_ids(words, "yes") + [eos]]
    assert lists[1].prompt_ids == [bos] + _word_ids(words, "six")
    assert report.prompts_truncated == 1 and report.prompt_tokens_cut == 6 - 3
    assert report.responses_truncated == 1 and report.response_tokens_cut == 5 - 2
    assert report.rows_seen == 2 and report.rows_kept == 2 and report.dropped == 0
    text = str(report)
    assert "1 prompts truncated on the left (3 tokens cut)" in text
    assert "1 responses truncated on the right (3 tokens cut)" in text


def test_vanishing_response_is_an_error_or_dropped_and_counted(words):
    records = [
        RankedList(prompt="one two three four", candidates=["yes", "no"], ranks=[0, 1]),
        RankedList(prompt="one", candidates=["yes", "no"], ranks=[0, 1]),
    ]
    # max_length 5: the first prompt (BOS + 4 words = 5 tokens) leaves 0 tokens for the responses
    with pytest.raises(DataError) as error:
        tokenize_records(words, records, max_length=5)
    assert error.value.line == 0 and error.value.field == "candidates[0]" and error.value.reason == "empty_response"
    lists, report = tokenize_records(words, records, max_length=5, on_empty="drop")
    assert [item.index for item in lists] == [1]
    assert report.rows_dropped == {"empty_response": 1} and report.dropped == 1 and report.rows_kept == 1
    assert report.prompts_truncated == 0  # the dropped row's counts are not added
    assert "1 records dropped: empty_response" in str(report)


def test_all_unranked_record_is_dropped_and_counted(words):
    lists, report = tokenize_records(words, [RankedList(prompt="one", candidates=["yes", "no"], ranks=[None, None])])
    assert lists == [] and report.rows_dropped == {"no_ranked_candidates": 1} and report.candidates_unranked == 2


def test_lists_without_a_strictly_ordered_pair_are_kept_and_counted(words):
    records = [
        RankedList(prompt="one", candidates=["yes", "no"], ranks=[0, 1]),
        RankedList(prompt="one", candidates=["yes"], ranks=[0]),                       # nothing to compare
        RankedList(prompt="one", candidates=["yes", "no", "one"], ranks=[1, 1, 1]),    # all tied
        RankedList(prompt="one", candidates=["yes", "no"], ranks=[0, None]),           # one ranked candidate
        RankedList(prompt="one", candidates=["yes", "no", "one"], ranks=[0, None, 0]),  # ranked ones tied
    ]
    lists, report = tokenize_records(words, records)
    assert len(lists) == 5 and report.dropped == 0
    assert report.unordered_lists == {"one_candidate": 2, "all_tied": 2}
    assert "4 lists hold no strictly ordered pair (2 all tied, 2 one candidate)" in str(report)
    assert report.to_dict()["unordered_lists"] == {"one_candidate": 2, "all_tied": 2}
    _, ordered = tokenize_records(words, records[:1])
    assert ordered.unordered_lists == {} and "strictly ordered" not in str(ordered)


def test_chat_template_boundary_and_eos(bpe):
    prompt = [{"role": "system", "content": "alpha"}, {"role": "user", "content": "one two"}]
    record = RankedList(prompt=prompt, candidates=["three four", [{"role": "assistant", "content": "yes"}]],
                        ranks=[0, 1])
    (item,), _ = tokenize_records(bpe, [record])
    full = bpe.apply_chat_template(prompt + [{"role": "assistant", "content": "three four"}], tokenize=True)
    full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "keys") else full
    assert item.prompt_ids + item.response_ids[0] == list(full)
    rendered = bpe.decode(item.prompt_ids)
    assert rendered.endswith("<|assistant|>\n") and rendered.startswith("<bos><|system|>")
    assert bpe.decode(item.response_ids[0]) == "three four<eos>"
    assert all(r[-1] == bpe.eos_token_id for r in item.response_ids)


def test_chat_template_that_renders_the_prompt_differently_is_an_error(bpe):
    import copy

    tok = copy.deepcopy(bpe)
    # the generation prompt differs from how an assistant turn opens in the full conversation
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'assistant says: ' }}{% endif %}")
    record = RankedList(prompt=[{"role": "user", "content": "one"}], candidates=["yes", "no"], ranks=[0, 1])
    with pytest.raises(DataError) as error:
        tokenize_records(tok, [record, record])
    assert error.value.reason == "template_boundary" and error.value.line == 0
    assert error.value.field == "candidates[0]"


def test_plain_text_boundary_merge_is_counted(words):
    # joined, "one two" + "three" reads "one twothree" (an unknown word: a different tokenization than
    # [one, two] + [three]); "one two" + " three" reads "one two three", the same tokens
    record = RankedList(prompt="one two", candidates=["three", " three"], ranks=[0, 1])
    (item,), report = tokenize_records(words, [record])
    assert report.boundary_merges == 1
    assert item.response_ids[0] == item.response_ids[1]  # both encoded on their own
    assert "1 responses would merge with the prompt" in str(report)


def test_collator_from_records_end_to_end(words):
    records = [RankedList(prompt="one two", candidates=["yes", "no", "maybe"], ranks=[1, 0, 1]),
               RankedList(prompt="three", candidates=["alpha", "beta"], ranks=[0, 1], weight=0.5)]
    lists, _ = tokenize_records(words, records)
    batch = ListCollator(pad_token_id=words.pad_token_id)(lists)
    assert batch.ranks.tolist() == [[1, 0, 1], [0, 1, -1]]
    assert batch.lengths.tolist() == [[2, 2, 2], [2, 2, 0]]
    assert batch.weights.tolist() == [1.0, 0.5]
    assert batch.list_index.tolist() == [0, 1]
    as_dict = ListCollator(return_dict=True)(lists)
    assert as_dict["layout"] == "shared" and as_dict["input_ids"].equal(pack_lists(lists).input_ids)


def test_real_pairs_tokenize_pack_and_score_consistently():
    # hh-rlhf harmless pairs (implicit prompt: the shared transcript up to the last "Assistant:")
    import json

    import torch

    from rankalign.engine import sequence_logps, tiny_causal_lm
    from shared_data import shared_path

    path = shared_path("hh-rlhf-harmless/pairs.jsonl")
    if not path.exists():
        pytest.skip(f"{path} not present")
    records = []
    with open(path) as handle:
        for line in handle:
            row = json.loads(line)
            cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
            prompt, chosen, rejected = row["chosen"][:cut], row["chosen"][cut:], row["rejected"][cut:]
            if row["rejected"][:cut] == prompt and chosen.strip() and rejected.strip() and chosen != rejected:
                records.append(RankedList(prompt=prompt, candidates=[chosen, rejected], ranks=[0, 1]))
            if len(records) == 12:
                break
    tok = build_tokenizer([r.prompt + c for r in records for c in r.candidates], vocab_size=400)
    lists, report = tokenize_records(tok, records, max_prompt_tokens=48, max_response_tokens=24)
    assert report.rows_kept == 12 and all(len(item.prompt_ids) <= 48 for item in lists)
    assert all(len(r) <= 24 for item in lists for r in item.response_ids)
    # the kept prompt tail decodes to the end of the original prompt
    assert tok.decode(lists[0].prompt_ids[1:]) == records[0].prompt[-len(tok.decode(lists[0].prompt_ids[1:])):]
    model = tiny_causal_lm(len(tok), arch="gpt2", hidden_size=32)
    with torch.no_grad():
        shared = sequence_logps(model, pack_lists(lists, pad_token_id=tok.pad_token_id))
        duplicated = sequence_logps(model, pack_lists(lists, layout="duplicated", pad_token_id=tok.pad_token_id))
    torch.testing.assert_close(shared, duplicated, atol=1e-4, rtol=1e-5)


# ------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("name", ["max_prompt_tokens", "max_response_tokens", "max_length"])
@pytest.mark.parametrize("value", [0, -1, 2.0, 1.5, "3", True])
def test_token_limits_must_be_whole_numbers_of_at_least_one(words, name, value):
    from rankalign.errors import UsageError

    record = RankedList(prompt="one two", candidates=["yes", "no"], ranks=[0, 1])
    # 2.0 and "3" used to fail in a slice (TypeError), True to be read as 1, max_length=2.0 to blame the data
    with pytest.raises(UsageError, match=f"{name} must be a whole number >= 1"):
        tokenize_records(words, [record], **{name: value})


def test_switches_must_be_booleans(words):
    from rankalign.errors import UsageError

    record = RankedList(prompt="one two", candidates=["yes", "no"], ranks=[0, 1])
    with pytest.raises(UsageError, match="check_boundary must be True or False"):
        tokenize_records(words, [record], check_boundary="no")
    with pytest.raises(UsageError, match="on_empty"):
        tokenize_records(words, [record], on_empty="skip")


def test_an_empty_response_with_a_tokenizer_without_eos_says_so(words):
    import copy

    tok = copy.deepcopy(words)
    tok.eos_token = None
    record = RankedList(prompt="one", candidates=["", "no"], ranks=[0, 1])
    with pytest.raises(DataError, match="no EOS token") as error:  # not "raise the limits": there are none
        tokenize_records(tok, [record])
    assert error.value.field == "candidates[0]" and error.value.reason == "empty_response"
    # with an EOS token the empty response is that one token
    (item,), _ = tokenize_records(words, [record])
    assert item.response_ids[0] == [words.eos_token_id]


def test_chat_without_a_template_names_the_field_holding_messages(words):
    import copy

    tok = copy.deepcopy(words)
    tok.chat_template = None
    chat_prompt = RankedList(prompt=[{"role": "user", "content": "one"}], candidates=["yes", "no"], ranks=[0, 1])
    with pytest.raises(DataError) as error:
        tokenize_records(tok, [chat_prompt])
    assert (error.value.field, error.value.reason) == ("prompt", "no_chat_template")
    chat_response = RankedList(prompt="one", candidates=["yes", [{"role": "assistant", "content": "no"}]],
                               ranks=[0, 1])
    with pytest.raises(DataError) as error:
        tokenize_records(tok, [chat_response])
    assert (error.value.field, error.value.reason) == ("candidates[1]", "no_chat_template")
