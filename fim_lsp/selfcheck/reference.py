"""transformers' own generation and a full scoring pass: the references the runners are checked against.

The runners share one cache layout and one set of static-shape functions for their eager and static
modes, so comparing those two modes checks the capture and replay of graphs; these references check the
functions themselves (the masks, the positions, the cache slots) against code nobody here wrote."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fim_lsp.engine.loading import LoadedModel


@dataclass
class Greedy:
    tokens: list[int]  # generated tokens, the stop token (if any) last
    logprobs: list[float]  # log P(token), full vocabulary rows, untempered


def transformers_greedy(lm: LoadedModel, prompt: list[int], max_new_tokens: int, stops: list[int]) -> Greedy:
    """Greedy decoding by `model.generate` (its own KV cache, masks and positions) on one prompt. Ids
    past the tokenizer (padding rows of the checkpoint) are suppressed, as the runners never sample them."""
    rows = lm.model.get_output_embeddings().weight.size(0)
    padding = list(range(len(lm.tokenizer), rows))
    ids = torch.tensor([prompt], device=lm.device)
    with torch.inference_mode():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                min_new_tokens=0, do_sample=False, temperature=None, top_p=None, top_k=None,
                                eos_token_id=stops, pad_token_id=stops[0], suppress_tokens=padding or None,
                                output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt):].tolist()
    logprobs = [float(torch.log_softmax(step[0].float(), dim=-1)[t]) for step, t in zip(out.logits, tokens)]
    return Greedy(tokens[: len(logprobs)], logprobs)
