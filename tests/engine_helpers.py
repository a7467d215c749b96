"""Shared by the engine tests: random token lists from a seeded generator."""

import torch

from rankalign.engine import TokenizedList


def random_list(generator, prompt_len, response_lens, index=-1, *, vocab=97, bos=1):
    """A list with a ``prompt_len``-token prompt (``bos`` first unless None) and responses of
    ``response_lens`` tokens, all drawn from ``[4, vocab)``; ranks in order."""
    if bos is None:
        prompt = torch.randint(4, vocab, (prompt_len,), generator=generator).tolist()
    else:
        prompt = [bos] + torch.randint(4, vocab, (prompt_len - 1,), generator=generator).tolist()
    responses = [torch.randint(4, vocab, (n,), generator=generator).tolist() for n in response_lens]
    return TokenizedList(prompt_ids=prompt, response_ids=responses, ranks=list(range(len(responses))), index=index)
