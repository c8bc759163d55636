"""Toy data for smoke runs and tests (``builtin:toy`` in a stage's data field): tiny, seeded, and learnable.

Built in memory from words the tiny tokenizer knows (:mod:`rewardmix.models.tiny`), so each word is one or
two tokens and the tiny model can learn them in a few hundred steps on a CPU. Every generator is a pure
function of its arguments.

- SFT and PPO: "What is two plus three?" -> "two plus three is five." (:func:`toy_rows`).
- Reward models: "Say great/terrible about ..." prompts whose better answer uses the asked word. Half the
  prompts ask for each word, so a model that merely prefers one word stays at chance: it must relate the answer
  to the prompt, as a label-sensitive reward model does (RLLR §3.2).
"""

from __future__ import annotations

import random
from typing import Any

from rewardmix.data.pairs import PreferencePair

__all__ = ["BUILTIN_TOY", "toy_pairs", "toy_rankings", "toy_ratings", "toy_rows"]

BUILTIN_TOY = "builtin:toy"
"""The data path that stands for the toy data of the stage reading it."""

# ---------------------------------------------------------------------------------------------------------
# SFT and PPO: sums of small numbers

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


# ---------------------------------------------------------------------------------------------------------
# Reward models: pairs, K = 3 rankings, ratings

_FILLER = "the a movie review this that it is was and of to with".split()


def _toy_prompt_and_words(rng: random.Random) -> tuple[str, str, str]:
    wanted, other = ("great", "terrible") if rng.random() < 0.5 else ("terrible", "great")
    filler = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(2, 5)))
    return f"Say {wanted} about {filler}.", wanted, other


def toy_pairs(n: int, *, seed: int = 0) -> list[PreferencePair]:
    """``n`` pairs "Say great/terrible about ..." whose chosen answer uses the asked word, the rejected the other.

    Half the prompts ask for each word, so a model that merely likes one word scores 0.5: it must relate the
    answer to the prompt, like a label-sensitive reward model (RLLR §3.2).
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        prompt, wanted, other = _toy_prompt_and_words(rng)
        tail = " ".join(rng.choice(_FILLER) for _ in range(rng.randint(1, 3)))
        pairs.append(
            PreferencePair(prompt, f"It is {wanted}, {tail}.", f"It is {other}, {tail}.", "label_sensitive")
        )
    return pairs


def toy_rankings(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` ranking records with K = 3: the asked word (rank 1), no word (2), the other word (3), shuffled."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, wanted, other = _toy_prompt_and_words(rng)
        answers = [(f"It is {wanted}.", 1), ("It is the movie.", 2), (f"It is {other}.", 3)]
        rng.shuffle(answers)
        rows.append(
            {"prompt": prompt, "responses": [a for a, _ in answers], "ranks": [r for _, r in answers]}
        )
    return rows


def toy_ratings(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rated answers of four words, each "great" or "terrible"; the rating is the share of "great"."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(("great", "terrible")) for _ in range(4)]
        rows.append(
            {
                "prompt": "Rate the movie.",
                "response": " ".join(words) + ".",
                "score": words.count("great") / 4,
            }
        )
    return rows
