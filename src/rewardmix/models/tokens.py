"""Special token ids every stage asks a tokenizer for: the padding id and the ids that end a response.

One implementation each, so that SFT samples, PPO rollouts, reward-model batches and the local chat model
pad and stop alike. A tokenizer is anything with the ``transformers`` attributes read here
(``pad_token_id``, ``eos_token_id``, ``unk_token_id``, ``convert_tokens_to_ids``); this module does not
import ``transformers``.
"""

from __future__ import annotations

from typing import Any

from rewardmix.data.chat import IM_END

__all__ = ["pad_token_id", "stop_token_ids"]


def pad_token_id(tokenizer: Any) -> int:
    """The id written at padded positions: the tokenizer's pad token, else EOS, else 0.

    Padding is never found by this id (attention and loss masks do that), so borrowing EOS or 0 is safe.
    """
    pad = tokenizer.pad_token_id
    return pad if pad is not None else (tokenizer.eos_token_id or 0)


def stop_token_ids(tokenizer: Any, *, generation_config: Any = None) -> list[int]:
    """Token ids that end a response, sorted and unique: EOS, and ChatML's ``<|im_end|>`` when it is one token.

    ``<|im_end|>`` counts only when the vocabulary has it (its lookup does not fall back to the unknown
    token): a ChatML-rendered turn ends there even when the tokenizer's EOS is another token.

    Args:
        tokenizer: The tokenizer; its ``eos_token_id`` may be an int, a list of ints or None.
        generation_config: A model's ``generation_config``, whose ``eos_token_id`` (an int or a list) is
            added when given: a checkpoint may stop on ids its tokenizer does not call EOS (the local chat
            model passes it; the training stages stop on the tokenizer's ids alone, as they always have).

    Returns:
        The ids, e.g. ``[1, 4]`` for the tiny tokenizer (``<eos>``, ``<|im_end|>``) and ``[2]`` for SmolLM2,
        whose EOS is ``<|im_end|>``.
    """
    ids: set[int] = set()
    for source in (tokenizer, generation_config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            ids.update(eos if isinstance(eos, list | tuple) else [eos])
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)
