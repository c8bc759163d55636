"""Sequence bookkeeping of a rollout: which tokens count, which seed samples each response, which prompts a step sees.

Each function is a pure function of its arguments. Nothing here reads or advances the global random state, so
a run resumed mid-way recomputes the very same orders and seeds without restoring a generator, and what a
response gets depends neither on the batch it is generated with nor on the process that generates it.

Reference: torchtune ``torchtune/rlhf/sequence_processing.py`` (the same role: masks and padding of generated
responses, apart from the recipe).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch


def _seed_from(text: str) -> int:
    """A 63-bit seed from the SHA-256 of ``text`` (stable across runs, platforms and Python versions)."""
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def epoch_order(n: int, *, seed: int, epoch: int, salt: str = "") -> list[int]:
    """A permutation of ``range(n)`` fixed by ``(seed, epoch, salt)``.

    It does not touch (or depend on) the global random state, so a run resumed mid-epoch recomputes the same
    order, and changing the batch size does not change it (what makes 1x8 and 8x1 accumulation see the
    same examples). ``salt`` separates independent orders (e.g. the phases of a schedule).
    """
    generator = torch.Generator().manual_seed(_seed_from(f"{seed}:{epoch}:{salt}"))
    return torch.randperm(n, generator=generator).tolist()


def batch_indices(n: int, index: int, batch_size: int, *, seed: int, salt: str = "ppo") -> list[int]:
    """Indices into a pool of ``n`` items of batch number ``index`` (0-based): a seeded permutation per pass.

    Batch ``index`` takes positions ``index * batch_size ... (index + 1) * batch_size - 1`` of the endless
    sequence "pass 0's permutation, then pass 1's, ..."; a batch that straddles two passes takes the end of
    one and the start of the next.

    Args:
        n: Pool size (>= 1).
        index: The batch's place in the run, 0-based (a PPO iteration ``step`` uses ``step - 1``).
        batch_size: Items per batch.
        seed: The run seed.
        salt: Separates this order from the run's other seeded orders (``"ppo"``: the PPO prompt order).

    Returns:
        ``batch_size`` indices in ``range(n)``.
    """
    out = []
    for position in range(index * batch_size, (index + 1) * batch_size):
        epoch, i = divmod(position, n)
        out.append(epoch_order(n, seed=seed, epoch=epoch, salt=salt)[i])
    return out


def rollout_seeds(seed: int, index: int | str, positions: Iterable[int]) -> list[int]:
    """One sampling seed per response: a pure function of the run seed, the batch and the place in it.

    Args:
        seed: The run seed.
        index: The batch, 0-based (a PPO iteration ``step`` uses ``step - 1``), or a name for a batch outside
            the loop (``"reference"``: the calibration samples).
        positions: Places in the batch (of the whole batch, over every process).

    Returns:
        One 63-bit seed per position.
    """
    return [_seed_from(f"{seed}:{index}:{position}") for position in positions]


def response_mask_from_ids(
    response_ids: torch.Tensor, stop_ids: Sequence[int], widths: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which response tokens count: every token up to and including the first stop token.

    Args:
        response_ids: (B, R) generated ids (anything may follow the first stop token).
        stop_ids: Ids that end a response (EOS, ``<|im_end|>``).
        widths: (B,) tokens actually generated per row (a row without stop token keeps that many);
            None: R for every row.

    Returns:
        ``(response_mask (B, R) bool, has_eos (B,) bool)``.
    """
    B, R = response_ids.shape
    positions = torch.arange(R, device=response_ids.device)
    is_stop = torch.isin(response_ids, torch.tensor(list(stop_ids), device=response_ids.device))
    first_stop = torch.where(is_stop, positions, R).amin(dim=1) if R else torch.zeros(B, dtype=torch.long)
    has_eos = first_stop < R
    full = (
        torch.full((B,), R, device=response_ids.device) if widths is None else widths.to(response_ids.device)
    )
    length = torch.where(has_eos, first_stop + 1, full)  # keep the stop token itself: its log-prob is learned
    return positions.unsqueeze(0) < length.unsqueeze(1), has_eos
