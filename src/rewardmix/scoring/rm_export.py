"""Export a trained reward model as a Hugging Face ``AutoModelForSequenceClassification`` folder (``num_labels=1``).

The folder loads with plain transformers (``AutoModelForSequenceClassification.from_pretrained(folder)``) and
scores the token ids rewardmix builds exactly as rewardmix does: ``logits[:, 0]`` on a batch padded left or
right with ``config.pad_token_id`` equals the scalar head's score. What makes that exact and what is refused
is in :mod:`rewardmix.models.hf_classifier`. Before writing, the export scores probe inputs both ways (left
and right padded, the classifier called as a transformers user would call it) and refuses to write a folder
whose scores differ.

The folder also holds the tokenizer (with :data:`rewardmix.data.chat.CHATML_TEMPLATE` set when it had no chat
template, the ChatML rewardmix rendered with), ``rewardmix_rm.json`` (how inputs were built; rewardmix reads
it back), the same record under ``rewardmix_reward_model`` in ``config.json``, and a README saying how to
build inputs.

Reference: TRL ``RewardTrainer`` / ``AutoModelForSequenceClassification`` reward models; CRS §5.3 (inputs).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardmix.data.chat import CHATML_TEMPLATE
from rewardmix.models.tokens import pad_token_id
from rewardmix.rundir import RunDirError
from rewardmix.scoring.reward_model import RewardModelScorer
from rewardmix.scoring.rm_inputs import RM_META_NAME, collate, read_rm_meta

__all__ = ["EXPORT_TOLERANCE", "PROBES", "ExportResult", "export_reward_model", "reward_model_folder"]

logger = logging.getLogger(__name__)

EXPORT_TOLERANCE = 1e-5
"""Largest |exported - original| score (relative to max(1, |score|)) the export accepts on its probes."""

PROBES: tuple[tuple[str, str], ...] = (
    ("What is two plus two?", "four"),
    ("Write one sentence about the movie.", "The movie was great, the acting was terrible, and it ran long."),
    ("Say hello.", "hello world"),
    ("Give a rationale, then the label.", "The review says the acting was terrible. The answer is: negative"),
)
"""(prompt, response) pairs scored both ways before the folder is written."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_reward_model` wrote."""

    folder: Path
    architecture: str
    score_shift: float
    """Constant the exported model adds to every score (``-bias`` when a bias was dropped; else 0)."""
    max_probe_error: float
    """Largest |exported - original| score on the probes (shift removed)."""


def reward_model_folder(path: str | os.PathLike[str]) -> Path:
    """The scalar-head model folder: ``path`` itself, or ``<path>/model`` for a reward-model run directory."""
    path = Path(path)
    if not (path / "rewardmix_head.json").is_file() and (path / "model" / "rewardmix_head.json").is_file():
        return path / "model"
    return path


def check_export_folder(out: Path) -> None:
    """Refuse to replace a folder that is not an earlier export (its ``config.json`` holds
    ``rewardmix_reward_model``): a user's files.

    Raises:
        RunDirError: ``out`` is a file, or a non-empty folder that is no export.
    """
    if not out.exists() or (out.is_dir() and (not any(out.iterdir()) or _is_export(out))):
        return
    raise RunDirError(
        f"output_dir {out}: exists and is not an exported reward model (no config.json with "
        "rewardmix_reward_model); refusing to replace it (nothing was changed): use a new or empty folder"
    )


def _is_export(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "rewardmix_reward_model" in config


def export_reward_model(
    model_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, allow_score_shift: bool = False
) -> ExportResult:
    """Write ``out_dir`` as an ``AutoModelForSequenceClassification`` folder scoring like ``model_path``.

    Args:
        model_path: A reward-model run directory or its ``model`` folder (LoRA reward models are saved there
            merged into their base).
        out_dir: Destination folder (written atomically).
        allow_score_shift: Export a model whose head bias is non-zero on a bias-free architecture, every score
            shifted by ``-bias`` (recorded in the README and config.json).

    Returns:
        An :class:`ExportResult`.

    Raises:
        rewardmix.models.hf_classifier.NotExportableError: When the scores could not be reproduced (the
            message says why), including a probe mismatch.
        rewardmix.rundir.RunDirError: ``out_dir`` exists and is neither empty nor an earlier export (it would
            be replaced); nothing is written.
    """
    from rewardmix.models.hf_classifier import NotExportableError, to_sequence_classifier
    from rewardmix.models.loading import save_pretrained_atomic

    check_export_folder(Path(out_dir))
    folder = reward_model_folder(model_path)
    scorer = RewardModelScorer.from_pretrained(folder, batch_size=len(PROBES))
    tokenizer = scorer.tokenizer
    if scorer.kind == "causal_lm" and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE  # the ChatML rewardmix rendered with (render_chat)
    pad_id = pad_token_id(tokenizer)
    classifier, shift = to_sequence_classifier(
        scorer.model, pad_token_id=pad_id, allow_score_shift=allow_score_shift
    )

    # Step 1. The probes, tokenized by the reward model's own contract; none may end with the pad id.
    sequences = [scorer.encode_one(prompt, response) for prompt, response in PROBES]
    if any(seq[-1] == pad_id for seq in sequences):
        raise NotExportableError(
            f"inputs end with the pad token (id {pad_id}): transformers' classifiers score the last token "
            "that is not config.pad_token_id, so they would read an earlier one; use a tokenizer whose pad "
            "token is not its end-of-turn token"
        )

    # Step 2. Score them both ways: rewardmix's scorer and the classifier called directly, left and right padded.
    original = scorer.head_values_from_ids(sequences).cpu()
    error = 0.0
    with torch.no_grad():
        for side in ("right", "left"):
            batch = collate(sequences, pad_id, padding_side=side)
            exported = classifier(**batch).logits[:, 0].float() - shift
            error = max(error, float(((exported - original).abs() / original.abs().clamp(min=1.0)).max()))
    if error > EXPORT_TOLERANCE:
        raise NotExportableError(
            f"{type(classifier).__name__} scores the probe inputs up to {error:.3g} away from the reward model "
            f"(tolerance {EXPORT_TOLERANCE}); not writing {out_dir}"
        )

    # Step 3. Write the folder: model, tokenizer, the input record, a README.
    meta = read_rm_meta(folder)
    record = _record(scorer, meta, shift)
    classifier.config.rewardmix_reward_model = record
    writer = _Writer(classifier, meta, _readme(type(classifier).__name__, record))
    out = save_pretrained_atomic(writer, out_dir, tokenizer=tokenizer)
    logger.info(
        "exported %s as %s to %s (probe error %.2g, shift %g)",
        folder,
        type(classifier).__name__,
        out,
        error,
        shift,
    )
    return ExportResult(out, type(classifier).__name__, shift, error)


def _record(scorer: RewardModelScorer, meta: dict[str, Any], shift: float) -> dict[str, Any]:
    return {
        "input": "chat",
        "chat_template": "the tokenizer's (tokenizer_config.json / chat_template.jinja)",
        "conversation": "[user: prompt, assistant: response]; a multi-turn prompt is the thread before the response",
        "tokenize": "the rendered text tokenized without adding special tokens",
        "max_length": scorer.max_length,
        "min_prompt_tokens": scorer.min_prompt_tokens,
        "truncation": "over max_length: the prompt is cut from its start (at least min_prompt_tokens kept), "
        "then the response from its end (CRS 5.3)",
        "score": "logits[:, 0]",
        "head_output": scorer.head_output,
        "score_transform": scorer.score_transform,
        "objective": meta.get("objective"),
        "absolute_loss": meta.get("absolute_loss"),
        "base_model": meta.get("base_model"),
        "score_shift": shift,
    }


def _readme(architecture: str, record: dict[str, Any]) -> str:
    shift = record["score_shift"]
    shift_line = (
        f"- **Score shift**: this model scores every input {shift:+.6g} relative to the rewardmix reward model it "
        f"was exported from (its head bias had no place in `{architecture}`); score differences are unchanged.\n"
        if shift
        else "- **Scores** equal the rewardmix reward model's (checked on probe inputs, left and right padded).\n"
    )
    rating = (
        "\n- A score reads as a rating in (0, 1) through `sigmoid(score)`.\n"
        if record["score_transform"] == "sigmoid"
        else ""
    )
    return f"""---
library_name: transformers
tags: [reward-model, rewardmix]
---
# Reward model (exported by rewardmix)

A `{architecture}` with `num_labels=1`: the reward is `logits[:, 0]`. Objective: `{record["objective"]}`;
the head emits a `{record["head_output"]}`.

## Inputs

- The conversation `[user: prompt, assistant: response]` (a multi-turn prompt: its thread, then the response)
  rendered with this tokenizer's chat template, tokenized **without** adding special tokens.
- At most {record["max_length"]} tokens: longer inputs lose the prompt's first tokens (at least
  {record["min_prompt_tokens"]} prompt tokens are kept), then the response's last tokens.
- Pad with `pad_token_id` (in config.json), on either side.
{shift_line}{rating}
```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained(FOLDER)
tokenizer = AutoTokenizer.from_pretrained(FOLDER)
messages = [{{"role": "user", "content": prompt}}, {{"role": "assistant", "content": response}}]
text = tokenizer.apply_chat_template(messages, tokenize=False)
ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
with torch.no_grad():
    reward = model(**ids).logits[:, 0]
```

In rewardmix: a PPO component `{{type: reward_model, reward_model: {{path: FOLDER}}}}` (the settings above are read
from `rewardmix_rm.json`). The same record is in config.json under `rewardmix_reward_model`.
"""


class _Writer:
    """Model + ``rewardmix_rm.json`` + README into one folder, for :func:`save_pretrained_atomic`."""

    def __init__(self, model: Any, meta: dict[str, Any], readme: str) -> None:
        self.model, self.meta, self.readme = model, meta, readme

    def save_pretrained(self, folder: str) -> None:
        self.model.save_pretrained(folder)
        if self.meta:
            (Path(folder) / RM_META_NAME).write_text(json.dumps(self.meta, indent=2) + "\n", encoding="utf-8")
        (Path(folder) / "README.md").write_text(self.readme, encoding="utf-8")
