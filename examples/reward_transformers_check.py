"""A saved reward model, loaded by plain ``transformers``, against ``rankalign reward score`` (issue 12).

    rankalign reward score MODEL_DIR DATA --max-records 64 [--max-tokens N] -o scores.jsonl
    python examples/reward_transformers_check.py MODEL_DIR DATA scores.jsonl [--max-records 64] [--max-tokens N]

``--max-tokens`` defaults, as in ``reward score``, to the ``max_length`` in ``MODEL_DIR/train_config.yaml``;
a causal model's prompt then keeps its last ``ceil(N / 2)`` tokens, as :func:`rankalign.reward.prepare_lists`
cuts it, so every response keeps at least half of the budget.

Loads ``MODEL_DIR`` with ``AutoModelForSequenceClassification.from_pretrained`` (reporting any weight it had
to initialise: there must be none), builds each (prompt, response) input the documented way --
:func:`rankalign.engine.tokenize_records` (BOS + prompt + response + EOS) for causal backbones,
:func:`rankalign.reward.encoder_inputs` for encoders -- and compares the class's logits with the scores
file. Causal backbones and encoders trained with ``pooling: cls`` score identically (float32 rounding); an
encoder trained with mean pooling differs through that class by design (its pooler is [CLS]), and the script
then also shows :func:`rankalign.reward.load` reproducing the file.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _trained_max_length(model_dir: str) -> int | None:
    """The ``max_length`` ``reward train`` saved beside the model, which ``reward score`` cuts to by default."""
    from pathlib import Path

    import yaml

    path = Path(model_dir) / "train_config.yaml"
    saved = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    value = saved.get("max_length") if isinstance(saved, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("scores", help="the JSONL written by `rankalign reward score`")
    parser.add_argument("--max-records", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="as given to `reward score` (default: MODEL_DIR/train_config.yaml's max_length)")
    args = parser.parse_args()
    if args.max_tokens is None:
        args.max_tokens = _trained_max_length(args.model_dir)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    from rankalign.data import read
    from rankalign.engine import tokenize_records
    from rankalign.reward import encoder_inputs, load, score_lists

    logging.set_verbosity_error()
    classifier, info = AutoModelForSequenceClassification.from_pretrained(args.model_dir, output_loading_info=True)
    classifier.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    settings = classifier.config.rankalign_reward
    print(f"{type(classifier).__name__} from {args.model_dir}: missing keys {info['missing_keys']}, "
          f"unexpected keys {info['unexpected_keys']}; labels {classifier.config.id2label}; "
          f"backbone kind {settings['kind']}, pooling {settings['pooling']}")
    records = read(args.data, skip_invalid=True).records[:args.max_records]
    expected = [json.loads(line)["scores"] for line in open(args.scores, encoding="utf-8")][:len(records)]
    got = []
    with torch.no_grad():
        if settings["kind"] == "causal":
            max_prompt = None if args.max_tokens is None else args.max_tokens - args.max_tokens // 2
            lists, _ = tokenize_records(tokenizer, records, max_length=args.max_tokens, max_prompt_tokens=max_prompt)
            for item in lists:
                got.append([float(classifier(input_ids=torch.tensor([item.prompt_ids + response])).logits[0, 0])
                            for response in item.response_ids])
        else:
            for record in records:
                inputs, _ = encoder_inputs(tokenizer, [record.prompt] * len(record.candidates), record.candidates,
                                           args.max_tokens or classifier.config.max_position_embeddings)
                got.append(classifier(**inputs).logits[:, 0].tolist())
    flat_expected = torch.tensor([v for row in expected for v in row])
    flat_got = torch.tensor([v for row in got for v in row])
    difference = (flat_got - flat_expected).abs().max().item()
    print(f"{len(flat_got)} candidates of {len(records)} records: max |transformers logit - reward score| = "
          f"{difference:.3g} (score range {flat_expected.min():.3f} .. {flat_expected.max():.3f})")
    if settings["kind"] == "encoder" and settings["pooling"] != "cls":
        model, model_tokenizer = load(args.model_dir)
        again = torch.cat(score_lists(model, model_tokenizer, records, max_length=args.max_tokens))
        print(f"mean-pooled encoder: the class pools [CLS] instead; rankalign.reward.load(dir) gives max |diff| = "
              f"{(again - flat_expected).abs().max().item():.3g}")


if __name__ == "__main__":
    main()
