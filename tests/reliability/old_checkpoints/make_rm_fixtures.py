"""Write the fixtures of ``tests/reliability/test_old_reward_models.py``: reward models saved before the restructuring.

Issue 14 folds the two loaders of a trained reward model (``stages.reward_model.RewardScorer``, used by
``evaluate-rm``, and ``scoring.reward_model.RewardModelScorer``, used by ``evaluate`` and PPO) into one and moves
the reward model's metadata file (``rewardmix_rm.json``) under ``scoring/``. One of its checks is that a reward
model the old code saved is still read, and scored, as the old code read and scored it. This script froze what
the old code saved and the scores it gave. It was run once, with torch 2.13.0+cpu, transformers 5.25.0 and peft
0.21.2, from the repository root, on the commit recorded as ``commit`` in ``scores.json`` (one of the commits
that added this script), whose ``src/`` is that of ``fbb9141``, the last commit before the restructuring ("recipe repro profile: oracle with 1
seed ..."; ``src_tree`` in ``scores.json`` is the git tree of that ``src/``):

    PYTHONPATH=src OMP_NUM_THREADS=1 python -m tests.reliability.old_checkpoints.make_rm_fixtures

Do not rerun it on a later commit: the fixtures would then record the new code and test nothing. (Rerun it
only on purpose, on the commit whose reward models you want to keep readable, and say so in the commit.)

For each variant of ``VARIANTS`` (the tiny in-memory Llama or BERT built from the seed, a few steps on the
built-in toy data, inputs cut to ``max_length`` 32 tokens so that truncation and the recorded
``max_length`` / ``min_prompt_tokens`` matter), it

1. trains the reward model with the ``reward-model`` stage, as the CLI would (YAML, strict loading);
2. copies the folders the stage saved at the end to ``reward_model_final/<variant>/``: ``model/`` (the
   scalar-head model, LoRA merged, with its tokenizer, ``rewardmix_head.json``, the head weights and
   ``rewardmix_rm.json``) and, for LoRA, ``adapter/`` (the adapter and the head alone); byte for byte, after
   checking that no file holds a path of this machine; the training config goes to ``input.yaml``;
3. scores ``INPUTS`` (prompts and answers: plain, empty prompt, a conversation, truncated on both sides,
   an answer starting with blank lines, non-ASCII) with the copied folders, through both old loaders and
   through the two public ways a user points at a trained reward model:

   - ``stage_scorer``: ``stages.reward_model.RewardScorer.from_pretrained(model/)``, raw scores;
   - ``scorer``: ``scoring.reward_model.RewardModelScorer.from_pretrained(model/)``, raw head values;
   - ``scorer_role`` (LoRA): ``RewardModelScorer.from_adapter`` of ``adapter/`` as a role on a fresh tiny base
     (the one the reward model was trained on, with a ``policy`` role), as PPO loads it;
   - ``evaluate_rm``: the ``evaluate-rm`` stage with ``model: <model/>`` and the inputs with a text prompt as
     a ratings file: ``score`` and ``prediction`` of each row of its ``scores.jsonl`` (the prediction reads
     ``score_transform`` from ``rewardmix_rm.json``);
   - ``composite``: a ``rewardmix.scoring.CompositeReward`` built from a config dict with a component
     ``{type: reward_model, reward_model: {path: <model/>}}`` per ``output`` (``logit``, ``bounded``: the
     latter reads the head's meaning from ``rewardmix_rm.json``), and for LoRA one with
     ``{path: <adapter/>, role: rm}`` on the shared base: the raw score of each component;

   checks that the loaders agree with each other (to float rounding: they batch differently) and with the
   public ways, and writes everything, with the inputs, to ``reward_model_final/scores.json``.

Everything together is about 0.55 MB.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from tests.reliability.old_checkpoints.make_fixtures import PLACEHOLDER, REPO, run_stage

HERE = Path(__file__).resolve().parent / "reward_model_final"
ROLE = "rm"
"""The LoRA role the adapter is loaded as, on the shared base."""

INPUTS: list[dict[str, Any]] = [
    {"prompt": "The movie review: a gripping, well acted thriller.", "response": "The answer is: positive"},
    {"prompt": "The movie review: a gripping, well acted thriller.", "response": "The answer is: negative"},
    {"prompt": "What is 12 + 30? Give a rationale.", "response": "12 + 30 = 42.\n\nThe answer is: 42"},
    {"prompt": "", "response": "an answer scored alone, without a prompt"},
    {
        "prompt": [
            {"role": "system", "content": "You rank answers."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "rank: b, a, c"},
        ],
        "response": "a, b, c",
    },
    {
        "prompt": " ".join(f"context word {i}," for i in range(30)) + " so which one?",
        "response": " ".join(f"step {i} of a long answer" for i in range(20)),
    },
    {"prompt": "Say something.", "response": "\n\n  something, after blank lines"},
    {"prompt": "Überprüfe: liegt 東京 in Japan?", "response": "Ja — 東京 liegt in Japan. ✓"},
]
"""The scored (prompt, answer) pairs; a prompt is a string or a conversation (a list of messages)."""


def _train_config(name: str, *, lora: bool, objective: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": "reward-model",
        "output_dir": PLACEHOLDER,
        "seed": 0,
        "cpu": True,
        "model": {"name": name, "max_length": 32, "min_prompt_tokens": 8},
        "lora": {"enabled": lora, "r": 4, "alpha": 8},
        "objective": objective,
        "data": {"train": "builtin:toy"},
        "optim": {"micro_batch_size": 8, "learning_rate": 1.0e-3, "max_steps": 6, "warmup_ratio": 0.0},
        "logging": {"eval_every": 0, "num_samples": 0, "checkpoint_every": 100, "keep_checkpoints": 1},
    }


VARIANTS: dict[str, dict[str, Any]] = {
    # LoRA on the causal LM: model/ (merged) and adapter/ (loaded as a role on a shared base, as PPO does)
    "lora_pairwise": _train_config("tiny", lora=True, objective={"kind": "pairwise"}),
    # full fine-tuning: model/ only; score_transform sigmoid (evaluate-rm's prediction)
    "full_absolute_logistic": _train_config(
        "tiny", lora=False, objective={"kind": "absolute", "absolute_loss": "logistic"}
    ),
    # an encoder (text-pair input, mean pooling); head_output probability (a composite's bounded/logit)
    "encoder_absolute_mse": _train_config(
        "tiny-encoder", lora=False, objective={"kind": "absolute", "absolute_loss": "mse_range_penalty"}
    ),
}

log = logging.getLogger("make_rm_fixtures")


def check_no_paths(folder: Path) -> None:
    """Raise if a file of ``folder`` holds the repository's path or a temporary / home path."""
    needles = (str(REPO).encode(), b"/tmp/", b"/home/", PLACEHOLDER.encode())
    leftovers = [
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and any(s in p.read_bytes() for s in needles)
    ]
    if leftovers:
        raise RuntimeError(f"paths of this machine in {leftovers}")


def shared_base() -> tuple[torch.nn.Module, Any]:
    """The base the LoRA reward model was trained on (the tiny Llama of seed 0) with a ``policy`` role."""
    from rewardmix.models.lora import LoraSettings, add_adapters
    from rewardmix.models.tiny import build_tiny_causal_lm, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    base = add_adapters(build_tiny_causal_lm(tokenizer, seed=0), ["policy"], LoraSettings(r=4, alpha=8))
    return base, tokenizer


def evaluate_rm_scores(model_dir: Path, work: Path) -> dict[str, list[float]]:
    """``score`` and ``prediction`` of the ``evaluate-rm`` stage for the inputs with a text prompt."""
    ratings = work / "ratings.jsonl"
    rows = [{**x, "score": 0.5} for x in INPUTS if isinstance(x["prompt"], str)]
    ratings.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = {
        "stage": "evaluate-rm",
        "output_dir": str(work / "evaluate-rm"),
        "model": str(model_dir),
        "ratings": str(ratings),
        "probes": None,
        "cpu": True,
    }
    run_stage("evaluate-rm", config, work / "evaluate-rm")
    scored = [json.loads(line) for line in (work / "evaluate-rm" / "scores.jsonl").read_text().splitlines()]
    return {"score": [r["score"] for r in scored], "prediction": [r["prediction"] for r in scored]}


def composite_scores(components: list[dict[str, Any]], context: Any = None) -> dict[str, list[float]]:
    """The raw score of each component of a composite reward built from a config dict."""
    from rewardmix.config import from_dict
    from rewardmix.scoring import CompositeConfig, CompositeReward, ScoringBatch

    cfg = from_dict(CompositeConfig, {"components": components, "combinator": "sum"})
    reward = CompositeReward(cfg, context=context)
    batch = ScoringBatch([x["prompt"] for x in INPUTS], [x["response"] for x in INPUTS])
    out = reward(batch, update_stats=False)
    return {name: out.raw[name].tolist() for name in reward.names}


def score(folder: Path, work: Path) -> dict[str, Any]:
    """Step 3 of the module docstring for one variant's copied folders: every score, checked."""
    from rewardmix.models.lora import adapters_disabled
    from rewardmix.scoring import BuildContext, ScoringBatch
    from rewardmix.scoring.reward_model import RewardModelScorer, rm_output
    from rewardmix.stages.reward_model import RewardScorer, read_rm_meta

    prompts, answers = [x["prompt"] for x in INPUTS], [x["response"] for x in INPUTS]
    batch = ScoringBatch(prompts, answers)
    model_dir, adapter_dir = folder / "model", folder / "adapter"

    # the two old loaders (and, for LoRA, the adapter as a role on a shared base, as PPO loads it)
    stage_scorer = RewardScorer.from_pretrained(model_dir)
    scorer = RewardModelScorer.from_pretrained(model_dir)
    scores: dict[str, Any] = {
        "stage_scorer": stage_scorer(prompts, answers),
        "scorer": scorer.head_values(batch).tolist(),
    }
    if adapter_dir.is_dir():
        base, tokenizer = shared_base()
        role = RewardModelScorer.from_adapter(base, tokenizer, adapter_dir, role=ROLE)
        scores["scorer_role"] = role.head_values(batch).tolist()
        with adapters_disabled(base):
            bare = role.head_values(batch)  # the base without the trained adapter, for a check below

    # the public ways: evaluate-rm and composite reward components
    scores["evaluate_rm"] = evaluate_rm_scores(model_dir, work)
    components = [
        {"name": output, "type": "reward_model", "reward_model": {"path": str(model_dir)}, "output": output}
        for output in ("logit", "bounded")
    ]
    scores["composite"] = composite_scores(components)
    if adapter_dir.is_dir():
        base, tokenizer = shared_base()  # a fresh one: the composite adds the role itself
        role_component = {
            "name": "role",
            "type": "reward_model",
            "reward_model": {"path": str(adapter_dir), "role": ROLE},
        }
        context = BuildContext(shared_backbone=base, tokenizer=tokenizer)
        scores["composite"].update(composite_scores([role_component], context))

    # checks: the loaders agree with each other and with the public ways (to float rounding) ...
    def close(got: list[float], want: list[float] | torch.Tensor, what: str) -> None:
        torch.testing.assert_close(torch.tensor(got), torch.as_tensor(want), rtol=1e-6, atol=1e-6, msg=what)

    head = torch.tensor(scores["scorer"])
    close(scores["stage_scorer"], head, "the two loaders")
    if "scorer_role" in scores:
        close(scores["scorer_role"], head, "the adapter as a role and the merged model")
        close(scores["composite"]["role"], head, "composite role")
    text = [i for i, x in enumerate(INPUTS) if isinstance(x["prompt"], str)]
    close(scores["evaluate_rm"]["score"], head[text], "evaluate-rm")
    transform = read_rm_meta(model_dir)["score_transform"]
    close(
        scores["evaluate_rm"]["prediction"],
        head[text].sigmoid() if transform == "sigmoid" else head[text],
        "rating",
    )
    for output in ("logit", "bounded"):
        want = rm_output(head, output=output, head_output=scorer.head_output)
        close(scores["composite"][output], want, f"composite {output}")
    # ... and the fixture can fail: a loader that ignored the recorded input settings, or the adapter, would
    # give other scores (by far more than the test's tolerance)
    other = RewardModelScorer.from_pretrained(model_dir, max_length=64, min_prompt_tokens=0).head_values(
        batch
    )
    if (other - head).abs().max() < 1e-3:
        raise RuntimeError(f"{folder.name}: the recorded max_length / min_prompt_tokens change no score")
    if adapter_dir.is_dir():
        if (bare - head).abs().max() < 1e-3:
            raise RuntimeError(f"{folder.name}: the trained adapter changes no score")
    return scores


def dump(record: dict[str, Any]) -> str:
    """``scores.json``: indented, each list of scores on one line."""
    text = json.dumps(record, indent=2, ensure_ascii=False)
    return (
        re.sub(r"\[\s*(-?[0-9][^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
        + "\n"
    )


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # as tests/conftest.py: one reduction order
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    src_tree = subprocess.run(
        ["git", "rev-parse", "HEAD:src"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    if dirty:
        raise SystemExit(f"src/ has uncommitted changes; the fixtures must come from one commit:\n{dirty}")
    shutil.rmtree(HERE, ignore_errors=True)
    HERE.mkdir()
    record: dict[str, Any] = {
        "commit": commit,
        "src_tree": src_tree,
        "torch": torch.__version__,
        "inputs": INPUTS,
        "evaluate_rm_inputs": [i for i, x in enumerate(INPUTS) if isinstance(x["prompt"], str)],
        "role": ROLE,
        "models": {},
    }
    for variant, config in VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix=f"old-rm-{variant}-") as tmp:
            work = Path(tmp)
            # step 1. train
            run = work / "run"
            run_stage("reward-model", config, run)
            # step 2. the final folders, byte for byte, and the training config
            target = HERE / variant
            for name in ("model", "adapter"):
                if (run / name).is_dir():
                    shutil.copytree(run / name, target / name)
            check_no_paths(target)
            (target / "input.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            # step 3. scores through the old loaders and the public ways
            record["models"][variant] = score(target, work)
        print(f"{variant}: {', '.join(sorted(p.name for p in target.iterdir()))}")
    (HERE / "scores.json").write_text(dump(record), encoding="utf-8")
    size = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
    print(f"fixtures: {size / 1e6:.2f} MB in {HERE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
