"""Toy data for smoke runs and tests (``builtin:toy`` in a stage's data field).

Built in memory from words the tiny tokenizer knows (:mod:`rewardmix.models.tiny`), so each word is one or
two tokens and the tiny model can learn them in a few hundred steps on a CPU. Every generator is a pure
function of its arguments.
"""

from __future__ import annotations

__all__ = ["BUILTIN_TOY", "toy_rows"]

BUILTIN_TOY = "builtin:toy"
"""The data path that stands for the toy data of the stage reading it."""

_NUMBERS = "zero one two three four five six seven eight nine ten".split()


def toy_rows() -> list[dict[str, str]]:
    """66 ``prompt``/``response`` rows "What is two plus three?" -> "two plus three is five." (sums up to ten).

    SFT trains on them; PPO takes their prompts as its toy prompt pool.
    """
    return [
        {
            "prompt": f"What is {_NUMBERS[a]} plus {_NUMBERS[b]}?",
            "response": f"{_NUMBERS[a]} plus {_NUMBERS[b]} is {_NUMBERS[a + b]}.",
        }
        for a in range(11)
        for b in range(11 - a)
    ]
