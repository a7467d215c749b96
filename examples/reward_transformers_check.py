"""A saved reward model, loaded by plain ``transformers``, against ``rankalign reward score`` (issue 12).

    rankalign reward score MODEL_DIR DATA --max-records 64 [--max-tokens N] -o scores.jsonl
    python examples/reward_transformers_check.py MODEL_DIR DATA scores.jsonl [--max-records 64] [--max-tokens N]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("scores", help="the JSONL written by `rankalign reward score`")
    parser.add_argument("--max-records", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=None, help="as given to `reward score`")
    args = parser.parse_args()

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
            lists, _ = tokenize_records(tokenizer, records, max_length=args.max_tokens)
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
