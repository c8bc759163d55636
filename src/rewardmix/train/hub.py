"""Push a training stage's final model to the Hugging Face hub, with a model card.

The ``hub:`` section of ``sft``, ``reward-model`` and ``ppo`` (:class:`rewardmix.train.config.HubConfig`) names
the repository; at the end of the run the stage writes ``README.md`` (the model card: the stage, its resolved
config, the reward components, the final metrics) into the folder it pushes, then creates the repository
(``HfApi().create_repo``, private by default) and uploads the folder (``HfApi().upload_folder``). The token is
the hub library's own: ``HF_TOKEN`` or the one ``hf auth login`` stored; rewardmix never reads or saves it.

A push that fails (no token, no network, a refused repository) loses nothing: the model stays on disk, the error
is logged with the command that pushes it again (``hf upload``), and ``summary.json`` records it.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rewardmix.markdown import md_cell, md_code, md_text
from rewardmix.redact import redact
from rewardmix.rundir import atomic_write_text, read_jsonl

__all__ = ["check_push", "model_card", "push_folder", "push_final_model", "pushed_folder"]

log = logging.getLogger(__name__)


def check_push(push: str, *, lora: bool, merged: bool) -> None:
    """Refuse a ``hub.push`` the stage cannot produce (raises ``ValueError`` naming the keys).

    Args:
        push: ``adapter`` (the LoRA adapter) or ``merged`` (a complete model).
        lora: Whether the stage trains a LoRA adapter (``lora.enabled``).
        merged: Whether ``<output_dir>/model`` is then a complete model (LoRA merged, or full fine-tuning).
    """
    if push == "adapter" and not lora:
        raise ValueError("hub.push: adapter, but lora.enabled is false (no adapter): use hub.push: merged")
    if push == "merged" and not merged:
        raise ValueError("hub.push: merged needs lora.merge_lora: true (or hub.push: adapter)")


def pushed_folder(out: Path, push: str, *, lora: bool, merged: bool) -> Path:
    """The folder ``hub.push`` uploads: ``<out>/adapter`` or ``<out>/model`` (see :func:`check_push`)."""
    if push == "adapter" and lora and merged:
        return out / "adapter"  # <out>/model holds the merged model, the adapter is beside it
    return out / "model"


def model_card(
    *,
    stage: str,
    repo_id: str,
    config_yaml: str,
    metrics: Mapping[str, Any],
    push: str,
    base_model: str,
    reward: Mapping[str, Any] | None = None,
    command: Sequence[str] | None = None,
) -> str:
    """The pushed folder's ``README.md``: front matter, what was trained, reward, metrics and the config.

    Args:
        stage: The stage that trained the model (``ppo``, ``sft``, ``reward-model``).
        repo_id: The hub repository.
        config_yaml: The resolved config (the run's ``config.yaml``).
        metrics: The final metrics (the last logged row, evaluation results).
        push: ``adapter`` or ``merged``.
        base_model: ``model.name`` of the run.
        reward: PPO's ``reward`` section (components and combinator); None for the other stages.
        command: The command line that started the run.
    """
    front = ["---", "library_name: " + ("peft" if push == "adapter" else "transformers"), "tags:"]
    front += ["- rewardmix", f"- {stage}"]
    if _is_hub_id(base_model):
        front.append(f"base_model: {base_model}")
    front.append("---")
    kind = "LoRA adapter" if push == "adapter" else "model"
    lines = [*front, "", f"# {md_text(repo_id)}", ""]
    lines.append(f"A {kind} trained with the rewardmix `{stage}` stage from {md_code(base_model)}.")
    if push == "adapter":
        lines.append(f"Load it on top of {md_code(base_model)} (e.g. `peft.PeftModel.from_pretrained`).")
    if command:
        lines += ["", "Command:", "", "```bash", shlex.join(command), "```"]
    lines += ["", "## Reward", ""]
    if reward is None:
        lines.append(f"No reward: the `{stage}` stage does not train on a reward.")
    else:
        lines.append(
            f"Combinator: {md_code(reward.get('combinator'))}{_params(reward.get('combinator_params'))}"
        )
        lines += [
            "",
            "| component | type | weight | normalize | clip | settings |",
            "|---|---|---|---|---|---|",
        ]
        for c in reward.get("components", []):
            settings = c.get(c.get("type")) or c.get("params") or {}
            lines.append(
                f"| {md_cell(c.get('name'))} | {md_cell(c.get('type'))} | {md_cell(c.get('weight', 1.0))} | "
                f"{md_cell(c.get('normalize'))} | {md_cell(_number(c.get('clip')))} | "
                f"{md_code(json.dumps(settings, sort_keys=True), cell=True)} |"
            )
    lines += ["", "## Final metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {md_code(k, cell=True)} | {md_cell(_number(v))} |" for k, v in _flatten(metrics)]
    else:
        lines.append("None logged.")
    lines += ["", "## Config", "", "The resolved config of the run (`config.yaml`):", ""]
    lines += ["```yaml", config_yaml.rstrip("\n"), "```", ""]
    return redact("\n".join(lines))


def push_folder(folder: Path, repo_id: str, *, private: bool, card: str) -> dict[str, Any]:
    """Write ``card`` as ``<folder>/README.md``, create ``repo_id`` (if new) and upload the folder.

    Returns ``{"repo_id", "url"}`` after a push, or ``{"repo_id", "folder", "error", "push_again"}`` when it
    failed (logged as an error; nothing is raised: the model is on disk).
    """
    atomic_write_text(folder / "README.md", card)
    try:
        from huggingface_hub import HfApi

        api = HfApi()  # token: HF_TOKEN or `hf auth login`, as the library reads it
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            commit_message="rewardmix: final model",
        )
    except Exception as e:  # noqa: BLE001 - any failure: keep the run, say how to push again
        again = shlex.join(
            ["hf", "upload", repo_id, str(folder), ".", "--private" if private else "--no-private"]
        )
        error = redact(f"{type(e).__name__}: {e}")
        log.error(
            "pushing %s to the hub repo %s failed (%s); the model is kept in %s. Log in (`hf auth login` or "
            "HF_TOKEN) and push it again with: %s",
            folder, repo_id, error, folder, again,
        )  # fmt: skip
        return {"repo_id": repo_id, "folder": str(folder), "error": error, "push_again": again}
    log.info("pushed %s to %s", folder, url)
    return {"repo_id": repo_id, "url": str(url)}


def push_final_model(
    hub: Any,
    out: Path,
    *,
    stage: str,
    lora: bool,
    merged: bool,
    base_model: str,
    metrics: Mapping[str, Any],
    reward: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The stage's last step: push the final model as ``hub`` (a ``HubConfig``) asks; None when it is off.

    The card's metrics are the last row of ``<out>/metrics.jsonl`` updated with ``metrics`` (the stage's final
    results); its config and command come from the run's ``config.yaml`` and ``run_info.json``.
    """
    if hub.repo_id is None:
        return None
    folder = pushed_folder(out, hub.push, lora=lora, merged=merged)
    config_path, info_path = out / "config.yaml", out / "run_info.json"
    config_yaml = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    command = json.loads(info_path.read_text(encoding="utf-8")).get("command") if info_path.exists() else None
    rows = read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []
    card = model_card(
        stage=stage,
        repo_id=hub.repo_id,
        config_yaml=config_yaml,
        metrics={**(rows[-1] if rows else {}), **metrics},
        push=hub.push,
        base_model=base_model,
        reward=reward,
        command=command,
    )
    return push_folder(folder, hub.repo_id, private=hub.private, card=card)


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and ":" not in name and not Path(name).exists()


def _params(params: Any) -> str:
    return f" with `{json.dumps(params, sort_keys=True)}`" if params else ""


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            rows += _flatten(value, f"{prefix}{key}/")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def _number(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
