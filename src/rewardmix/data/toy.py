"""Toy data for smoke runs and tests (``builtin:toy``): tiny, seeded, and learnable.

Reward models: "Say great/terrible about ..." prompts whose better answer uses the asked word. Half the prompts
ask for each word, so a model that merely prefers one word stays at chance: it must relate the answer to the
prompt, as a label-sensitive reward model does (RLLR §3.2).
"""

from __future__ import annotations

import random
from typing import Any

from rewardmix.data.pairs import PreferencePair

BUILTIN_TOY = "builtin:toy"
"""The data source name that selects the toy data of a stage."""

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
