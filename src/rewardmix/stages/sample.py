"""``rewardmix sample``: K sampled answers per question from a model, for a judge to rank (RLLR Appendix C).

RLLR's rationale-sensitive pairs start from "5 responses from the SFT model for each example", which GPT-4
then ranks (``rewardmix rank``) and ``rewardmix pairs source=rankings`` turns into pairs. This stage writes
``samples.jsonl``: each input row with ``answers``, a list of K sampled answers::

    {"question": "...", "task": "sst2", "label": "positive", ..., "answers": ["...", "...", ...], "_index": 0,
     "_key": "..."}

(``_index`` and ``_key``, the row's position and a hash of its settings, are what a rerun checks.)
Sampling is seeded per answer (inverse-transform draws of :mod:`rewardmix.models.sampling`), so an answer does
not depend on the batch it was generated in. Rows are appended as their answers are done: rerun the same
command after a kill and it goes on from the first question without answers; a stored row made with other
settings (model, K, temperature, ...) is generated again.

What a run does, in order (the numbered steps of :func:`run`):

1. Read the questions (``messages`` rows, text in ``prompt_key``, or ``prompt_template`` filled from the row),
   keep the first ``limit``.
2. Read ``samples.jsonl`` back and keep the rows whose settings key still matches.
3. Load the model once, if anything is missing, and sample the missing answers in batches.
4. Write ``samples.jsonl`` in input order and ``stats.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple

from tqdm.auto import tqdm

from rewardmix.config import check_ranges
from rewardmix.data.readers import RowError, read_records, save_report
from rewardmix.rundir import atomic_write_text, prepare_run_dir, read_jsonl_repair

log = logging.getLogger(__name__)


@dataclass
class SamplerModelConfig:
    """The model answers are sampled from (read-only: nothing trains here)."""

    preflight_paths: ClassVar[dict[str, str]] = {"path": "model"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""

    path: str = "tiny"
    """The model to sample from: a model folder (``<sft run>/model``), a LoRA adapter folder, a hub id,
    ``offline:smollm2``, or ``tiny`` / ``tiny:<seed>`` (random test models)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Weight dtype for generation (bfloat16 on a GPU halves the memory of a 7B model)."""
    trust_remote_code: bool = False
    """Run code shipped with the checkpoint; off unless you trust its source."""


@dataclass
class GenerationConfig:
    num_samples: int = 5
    """Answers per question, K (RLLR Appendix C: 5)."""
    max_new_tokens: int = 256
    """Token budget of each answer (a rationale and "The answer is: <label>")."""
    temperature: float = 1.0
    """Sampling temperature (> 0): 1.0 samples from the model itself."""
    top_k: int = 0
    """Keep the k most likely tokens (0: off)."""
    top_p: float = 1.0
    """Nucleus mass (1.0: off)."""
    batch_size: int = 16
    """Sequences per ``generate`` call (K answers of one question may share a call)."""

    def __post_init__(self) -> None:
        check_ranges(self, at_least_1=("num_samples", "max_new_tokens", "batch_size"))
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0 (sampling; greedy answers would all be the same)")
        if not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            raise ValueError("top_p must be in (0, 1] and top_k >= 0")


@dataclass
class Config:
    preflight_paths: ClassVar[dict[str, str]] = {"input": "data"}
    """Path fields checked before the run starts, by kind (``rewardmix.preflight``)."""
    output_dir: str = "runs/sample"
    """Run directory: samples.jsonl, stats.json, read_report.json."""
    input: str = "runs/rationales/rationales.jsonl"
    """Questions: JSONL/CSV/TSV/Parquet or ``hf:...``, one per row, as ``messages`` or text in ``prompt_key``
    (e.g. rationales.jsonl, a ``rewardmix split`` file, or combined NLU rows). Other fields are copied."""
    prompt_key: str = "question"
    """The field holding the question text (rows without ``messages``)."""
    prompt_template: str | None = None
    """A ``str.format`` template over the row's fields that makes the user turn instead (e.g. ``"Rewrite this
    text clearly and concisely:\n\n{response}"``; ``{{``/``}}`` for braces); null: ``messages`` or ``prompt_key``."""
    answer_field: str | None = None
    """Also write the first answer under this field (e.g. ``paraphrase`` for the paraphrase file of the
    reward-model stage's ``augment``); null: only ``answers``."""
    system_prompt: str | None = None
    """A system message put before every question; null: none."""
    limit: int | None = None
    """Use the first N rows only; null: all."""
    seed: int = 0
    """Base seed: answer k of row i is sampled with its own seed derived from (seed, i, k)."""
    cpu: bool = False
    """Generate on the CPU even when a GPU is present."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Bad input rows: stop with an error naming file, line and field, or skip them and count them."""
    model: SamplerModelConfig = field(default_factory=SamplerModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        check_ranges(self, at_least_0=("limit",))


class SampleResult(NamedTuple):
    output_dir: Path
    samples_path: Path
    stats: dict[str, Any]


def run(cfg: Config) -> SampleResult:
    # step 1. the questions
    out = prepare_run_dir(cfg.output_dir, cfg, stage="sample")
    rows, report = read_records(
        cfg.input, on_bad_row=cfg.on_bad_row, check=lambda row: conversation(row, cfg)
    )
    save_report(report, out / "read_report.json")
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    conversations = [conversation(row, cfg) for row in rows]
    keys = [settings_key(cfg, conv) for conv in conversations]

    # step 2. answers already on disk whose settings still match
    path = out / "samples.jsonl"
    done: dict[int, list[str]] = {}

    def keep(_lineno: int, stored: Any) -> None:
        i = stored.get("_index") if isinstance(stored, dict) else None
        if isinstance(i, int) and 0 <= i < len(keys) and stored.get("_key") == keys[i]:
            done[i] = stored["answers"]

    torn = read_jsonl_repair(path, keep)
    if torn:
        log.warning("%s: cut off a torn last line (%d bytes) left by a kill", path, torn)
    missing = [i for i in range(len(rows)) if i not in done]
    log.info("sample: %d questions, %d already answered, %d to sample", len(rows), len(done), len(missing))

    # step 3. sample what is missing, appending each batch's rows as they are done
    if missing:
        atomic_write_text(
            path, "".join(_line(i, rows[i], keys[i], done[i], cfg.answer_field) for i in sorted(done))
        )
        sampler = load_sampler(cfg)
        k = cfg.generation.num_samples
        per_call = max(1, cfg.generation.batch_size // k)
        with path.open("a", encoding="utf-8") as f, tqdm(total=len(missing), desc="sample", unit="q") as bar:
            for start in range(0, len(missing), per_call):
                chunk = missing[start : start + per_call]
                convs = [conversations[i] for i in chunk for _ in range(k)]
                seeds = [answer_seed(cfg.seed, i, j) for i in chunk for j in range(k)]
                texts = sampler(convs, seeds)
                for n, i in enumerate(chunk):
                    done[i] = texts[n * k : (n + 1) * k]
                    f.write(_line(i, rows[i], keys[i], done[i], cfg.answer_field))
                f.flush()
                bar.update(len(chunk))

    # step 4. samples.jsonl in input order, and the counts
    atomic_write_text(
        path, "".join(_line(i, rows[i], keys[i], done[i], cfg.answer_field) for i in range(len(rows)))
    )
    empty = sum(1 for i in done for a in done[i] if not a.strip())
    stats = {
        "questions": len(rows),
        "sampled_now": len(missing),
        "answers": len(rows) * cfg.generation.num_samples,
    }
    stats["empty_answers"] = empty
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2) + "\n")
    return SampleResult(out, path, stats)


def conversation(row: Mapping[str, Any], cfg: Config) -> list[dict[str, str]]:
    """The chat messages a row asks: its ``messages``, or one user turn with ``row[cfg.prompt_key]``.

    Raises:
        RowError: neither is there (a bad row under the policy).
    """
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    if cfg.prompt_template is not None:
        try:
            text = cfg.prompt_template.format_map(row)
        except KeyError as e:
            raise RowError(str(e.args[0]), "missing (prompt_template uses it)") from None
        except (IndexError, ValueError) as e:
            raise RowError(None, f"prompt_template does not fit the row: {e}") from None
        return system + [{"role": "user", "content": text}]
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        if not all(isinstance(m, Mapping) and {"role", "content"} <= set(m) for m in messages):
            raise RowError("messages", "expected a list of {role, content} mappings")
        return system + [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    text = row.get(cfg.prompt_key)
    if not isinstance(text, str) or not text.strip():
        raise RowError(cfg.prompt_key, f"expected a non-empty string (or a 'messages' list), got {text!r}")
    return system + [{"role": "user", "content": text.strip()}]


def settings_key(cfg: Config, conv: Sequence[Mapping[str, str]]) -> str:
    """What determines a row's answers: model, sampling settings, seed and the conversation."""
    gen = cfg.generation
    what = [cfg.model.path, cfg.model.dtype, gen.num_samples, gen.max_new_tokens, gen.temperature, gen.top_k]
    what += [gen.top_p, cfg.seed, list(conv)]  # the conversation holds system prompt and template
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def answer_seed(seed: int, index: int, sample: int) -> int:
    """The seed of answer ``sample`` of row ``index``: independent of batching and of the other rows."""
    digest = hashlib.sha256(f"{seed}:{index}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # a non-negative int64


def _line(
    index: int, row: Mapping[str, Any], key: str, answers: Sequence[str], answer_field: str | None
) -> str:
    out = {**row, "answers": list(answers)}
    if answer_field is not None:
        out[answer_field] = answers[0]
    return json.dumps({**out, "_index": index, "_key": key}, ensure_ascii=False) + "\n"


def load_sampler(cfg: Config):
    """``sampler(conversations, seeds) -> texts``: seeded sampling in left-padded batches of the model."""
    import torch

    from rewardmix.evaluation.generation import load_generator

    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    gen = load_generator(
        cfg.model.path,
        batch_size=cfg.generation.batch_size,
        device=device,
        dtype=cfg.model.dtype,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    g = cfg.generation

    def sampler(conversations: Sequence[Sequence[Mapping[str, str]]], seeds: Sequence[int]) -> list[str]:
        replies = gen.chat.generate_ids(
            [gen.encode(c) for c in conversations],
            max_new_tokens=g.max_new_tokens,
            temperature=g.temperature,
            top_k=g.top_k,
            top_p=g.top_p,
            seeds=seeds,
        )
        return [r.texts[0].strip() for r in replies]

    return sampler
