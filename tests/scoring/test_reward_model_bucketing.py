"""Length bucketing in RewardModelScorer: the same scores, in the input order, with less padding."""

from __future__ import annotations

import pytest
import torch

from rewardmix.models.heads import ScalarHeadModel
from rewardmix.models.tiny import build_tiny_causal_lm
from rewardmix.scoring import RewardModelScorer, ScoringBatch

# peft 0.21 reads a transformers attribute deprecated in 5.x; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

# Lengths that interleave short and long, so batches in input order mix them and pad a lot.
WORDS = "one two three four five six seven eight nine ten eleven twelve".split()
RESPONSES = [" ".join(WORDS[: (7 * i) % 12 + 1]) for i in range(11)]
PROMPTS = [f"question {i}" for i in range(11)]
BATCH = ScoringBatch(prompts=PROMPTS, responses=RESPONSES)


class _Recorder(torch.nn.Module):
    """Wraps the reward model; records the (rows, width) of every forward pass."""

    def __init__(self, model: ScalarHeadModel) -> None:
        super().__init__()
        self.inner = model
        self.kind = model.kind
        self.head = model.head
        self.shapes: list[tuple[int, int]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(input_ids.shape))
        return self.inner(input_ids, attention_mask)


@pytest.fixture(scope="module")
def rm(tiny_chat_tokenizer):
    return ScalarHeadModel(build_tiny_causal_lm(tiny_chat_tokenizer, seed=3), seed=0)


def test_bucketed_scores_equal_unbucketed_in_the_input_order(rm, tiny_chat_tokenizer):
    bucketed = RewardModelScorer(rm, tiny_chat_tokenizer, batch_size=4, bucket_by_length=True)
    plain = RewardModelScorer(rm, tiny_chat_tokenizer, batch_size=4, bucket_by_length=False)
    ids = bucketed.encode(BATCH)
    assert len({len(x) for x in ids}) >= 6  # the inputs really differ in length
    # Reference: each sample alone (no padding at all), in input order.
    with torch.no_grad():
        alone = torch.tensor(
            [rm(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long)).item() for x in ids]
        )
    a, b = bucketed.score(BATCH), plain.score(BATCH)
    torch.testing.assert_close(a, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(b, alone, rtol=0, atol=1e-5)
    assert len(set(a.tolist())) == len(RESPONSES)  # distinct scores: a permutation would be caught


def test_bucketing_pads_less(rm, tiny_chat_tokenizer):
    padded = {}
    for bucket in (True, False):
        recorder = _Recorder(rm)
        scorer = RewardModelScorer(recorder, tiny_chat_tokenizer, batch_size=4, bucket_by_length=bucket)
        scorer.score(BATCH)
        real = sum(len(x) for x in scorer.encode(BATCH))
        padded[bucket] = sum(rows * width for rows, width in recorder.shapes) - real
        assert sum(rows for rows, _ in recorder.shapes) == len(RESPONSES)
    assert padded[True] < padded[False]
