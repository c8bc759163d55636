"""Sampling whose randomness belongs to each sample, not to the batch it is generated in.

``generate(do_sample=True)`` draws every row's next token from one random stream, so what sample *i* gets
depends on which other rows share its batch, on the batch size and, in a data-parallel run, on the process
that generated it. :class:`SeededSampling` gives each row its own generator (seeded by the caller, e.g. from
the run seed, the step and the sample's global index) and samples by inverse transform inside greedy
decoding: with ``u ~ U(0, 1)`` from the row's generator, the token is the first ``v`` whose cumulative
probability exceeds ``u``, and the processor returns scores whose argmax is that token. Row *i*'s t-th token
uses the t-th draw of its own generator, whatever else is in the batch, so N processes x b samples reproduce
1 process x N*b samples (up to float rounding of the logits). Its cost is that of ``do_sample=True`` (one
softmax, one cumulative sum, one uniform per row).

Reference: inverse transform sampling (e.g. Devroye 1986, "Non-Uniform Random Variate Generation", §II.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

__all__ = ["SeededSampling", "seeded_sampling"]


class SeededSampling(LogitsProcessor):
    """Temperature / top-k / top-p, then a draw with one generator per row (use with greedy decoding).

    Args:
        seeds: One seed per row of the ``generate`` batch, in row order.
        temperature: Logits are divided by it (> 0).
        top_k: Keep the k most likely tokens (0: off).
        top_p: Nucleus mass (1.0: off).
        device: Where the generators live (the model's device).
    """

    def __init__(
        self,
        seeds: Sequence[int],
        *,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]
        self.warpers: list[LogitsProcessor] = []
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k=top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """(B, V) scores -> 0 at each row's sampled token, -inf elsewhere (greedy argmax picks it)."""
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} seeds for a batch of {scores.shape[0]} rows")
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)  # filtered tokens: probability 0
        uniform = torch.cat(
            [torch.rand(1, generator=g, device=self.device, dtype=torch.float32) for g in self.generators]
        ).to(cdf.device)
        # v = min{v : F(v) > u * F(V)}: a draw from the (warped) softmax; * F(V) absorbs rounding of the sum
        target = (uniform * cdf[:, -1]).unsqueeze(1)
        tokens = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[1] - 1)
        out = torch.full_like(cdf, -math.inf)
        return out.scatter_(1, tokens, 0.0)


def seeded_sampling(
    seeds: Sequence[int], *, temperature: float, top_k: int, top_p: float, device: torch.device | str
) -> LogitsProcessorList:
    """The ``logits_processor`` argument of a ``generate(do_sample=False, ...)`` call that samples per row."""
    return LogitsProcessorList(
        [SeededSampling(seeds, temperature=temperature, top_k=top_k, top_p=top_p, device=device)]
    )
