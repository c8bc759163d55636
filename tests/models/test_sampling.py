"""Seeded per-row sampling (Gumbel-max inside greedy decoding): the right distribution, and a row's draw that
does not depend on the other rows of its batch."""

from __future__ import annotations

import pytest
import torch

from rewardmix.models.sampling import SeededSampling, seeded_sampling
from rewardmix.models.tiny import build_tiny_causal_lm


def _draw(logits: torch.Tensor, n: int, **kwargs) -> torch.Tensor:
    """One argmax of the processed scores per seed 0..n-1 (each row is a fresh generator's first draw)."""
    processor = SeededSampling(range(n), **kwargs)
    scores = processor(torch.zeros(n, 1, dtype=torch.long), logits.expand(n, -1).clone())
    return scores.argmax(dim=1)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8)],
    ids=["plain", "temperature", "top_k", "top_p"],
)
def test_frequencies_match_the_warped_softmax(temperature, top_k, top_p):
    """Gumbel-max: argmax(l / T + g) is a draw from softmax(l / T), restricted to the top-k / top-p tokens.

    20,000 draws: each frequency has a standard deviation <= sqrt(0.25 / 20000) = 0.0035; we allow 0.015 (> 4 sd).
    """
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    probs = torch.softmax(logits[0] / temperature, dim=0)
    keep = torch.ones_like(probs, dtype=torch.bool)
    if top_k:
        keep[probs.argsort(descending=True)[top_k:]] = False
    if top_p < 1.0:  # smallest set of the most likely tokens whose mass reaches top_p
        order = probs.argsort(descending=True)
        mass_before = torch.cumsum(probs[order], 0) - probs[order]
        keep[order[mass_before >= top_p]] = False
    expected = torch.where(keep, probs, 0.0)
    expected = expected / expected.sum()
    n = 20000
    counts = torch.bincount(
        _draw(logits, n, temperature=temperature, top_k=top_k, top_p=top_p), minlength=logits.shape[1]
    )
    assert counts[~keep].sum() == 0  # filtered tokens are never drawn
    torch.testing.assert_close(counts.float() / n, expected, atol=0.015, rtol=0)


def test_a_rows_tokens_do_not_depend_on_its_batch(tiny_tokenizer):
    """Prompt 2 with seed 22 gets the same response alone, in a batch of three, or as the first row."""
    model = build_tiny_causal_lm(tiny_tokenizer, seed=0).eval()
    prompts = [tiny_tokenizer.encode(t) for t in ("What is one", "two plus three is", "nine")]

    def generate(rows: list[int], seeds: list[int]) -> list[list[int]]:
        width = max(len(prompts[r]) for r in rows)
        ids = torch.tensor([[0] * (width - len(prompts[r])) + prompts[r] for r in rows])
        mask = torch.tensor([[0] * (width - len(prompts[r])) + [1] * len(prompts[r]) for r in rows])
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            logits_processor=seeded_sampling(seeds, temperature=1.0, top_k=0, top_p=1.0, device="cpu"),
            max_new_tokens=8,
            pad_token_id=0,
            eos_token_id=None,
        )
        return out[:, width:].tolist()

    alone = generate([1], [22])[0]
    assert generate([0, 1, 2], [11, 22, 33])[1] == alone
    assert generate([1, 0], [22, 11])[0] == alone
    assert generate([1], [23])[0] != alone  # another seed, another sample (8 tokens from 400: not by chance)


def test_seed_count_must_match_the_batch():
    with pytest.raises(ValueError, match="2 seeds for a batch of 3"):
        SeededSampling([1, 2])(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 5))
