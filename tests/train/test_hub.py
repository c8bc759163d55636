"""Pushing the final model to the hub (``hub:``), against a local stand-in: ``HfApi``'s two methods are replaced
by ones that record the call and copy the folder into a temporary "hub"; nothing contacts the network."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from rewardmix.config import ConfigError, from_dict
from rewardmix.data.pairs import write_pairs
from rewardmix.data.toy import toy_pairs
from rewardmix.stages import ppo, sft
from rewardmix.stages import reward_model as rm
from rewardmix.train.hub import model_card, push_folder
from tests.stages import test_ppo, test_reward_model, test_sft


class StandInHub:
    """Records ``create_repo`` / ``upload_folder`` calls; uploads are copied to ``root/<repo_id>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict]] = []
        self.fail: Exception | None = None

    def files(self, repo_id: str) -> set[str]:
        folder = self.root / repo_id
        return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}

    def card(self, repo_id: str) -> str:
        return (self.root / repo_id / "README.md").read_text()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> StandInHub:
    import huggingface_hub

    monkeypatch.setenv(
        "HF_HUB_OFFLINE", "1"
    )  # anything not stood in for fails instead of reaching the network
    stand_in = StandInHub(tmp_path / "hub")

    def create_repo(self, repo_id, **kwargs):
        stand_in.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        stand_in.calls.append(("upload_folder", {"repo_id": repo_id, "folder_path": folder_path, **kwargs}))
        if stand_in.fail is not None:
            raise stand_in.fail
        shutil.copytree(folder_path, stand_in.root / repo_id, dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return stand_in


def test_ppo_pushes_the_adapter_with_a_card_listing_config_rewards_and_final_metrics(tmp_path, hub):
    cfg = test_ppo.tiny_config(tmp_path / "run", steps=1)
    cfg.hub.repo_id = "someone/tiny-ppo"
    result = ppo.run(cfg)

    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1]["private"] is True and hub.calls[0][1]["exist_ok"] is True
    assert hub.calls[1][1]["folder_path"] == str(result.model_dir)  # LoRA without merge: the adapter folder
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= hub.files("someone/tiny-ppo")
    card = hub.card("someone/tiny-ppo")
    assert card.startswith("---\nlibrary_name: peft\n")
    assert "# someone/tiny-ppo" in card and "rewardmix `ppo` stage from `tiny`" in card
    # the reward components, the final metrics (the last metrics.jsonl row), the resolved config
    assert "Combinator: `sum`\n" in card
    assert (
        '| e_count | contains | 1.0 | none | null | `{"ignore_case": false, "max_count": null, "mode": "count",'
        in card
    )
    last = json.loads((result.output_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert f"| `objective/score` | {last['objective/score']:.4g} |" in card
    assert "```yaml\nstage: ppo\n" in card and "output_dir: " + str(tmp_path / "run") in card
    assert (result.model_dir / "README.md").read_text() == card  # the card is kept with the model on disk
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["hub"] == {"repo_id": "someone/tiny-ppo", "url": "https://huggingface.co/someone/tiny-ppo"}


def test_sft_pushes_the_merged_model_and_says_it_has_no_reward(tmp_path, hub):
    data = test_sft.write_jsonl(tmp_path / "toy.jsonl", test_sft.toy_rows()[:8])
    cfg = test_sft.tiny_config(tmp_path / "run", data, lora=True)
    cfg.lora.merge_lora = True
    cfg.hub.repo_id, cfg.hub.push, cfg.hub.private = "someone/tiny-sft", "merged", False
    result = sft.run(cfg)

    assert hub.calls[0][1]["private"] is False
    assert hub.calls[1][1]["folder_path"] == str(result.model_dir)
    files = hub.files("someone/tiny-sft")
    assert {"README.md", "config.json", "model.safetensors"} <= files and "adapter_config.json" not in files
    card = hub.card("someone/tiny-sft")
    assert "library_name: transformers" in card and "No reward: the `sft` stage" in card
    assert "| `global_step` | 2 |" in card and "| `loss/train` |" in card


def test_reward_model_pushes_its_adapter_folder(tmp_path, hub):
    write_pairs(tmp_path / "pairs.jsonl", toy_pairs(16, seed=1))
    cfg = test_reward_model.tiny_config(tmp_path / "run", str(tmp_path / "pairs.jsonl"), lora=True)
    cfg.hub.repo_id = "someone/tiny-rm"
    result = rm.run(cfg)
    assert hub.calls[1][1]["folder_path"] == str(result.output_dir / "adapter")
    assert "README.md" in hub.files("someone/tiny-rm")
    assert "rewardmix `reward-model` stage" in hub.card("someone/tiny-rm")


def test_a_failed_push_keeps_the_model_and_says_how_to_push_again(tmp_path, hub, caplog):
    hub.fail = ConnectionError("no route to huggingface.co")
    cfg = test_ppo.tiny_config(tmp_path / "run", steps=1)
    cfg.hub.repo_id = "someone/tiny-ppo"
    with caplog.at_level(logging.ERROR, logger="rewardmix.train.hub"):
        result = ppo.run(cfg)  # no exception: the run is finished and saved
    assert (result.model_dir / "adapter_model.safetensors").is_file()
    summary = json.loads((result.output_dir / "summary.json").read_text())
    again = f"hf upload someone/tiny-ppo {result.model_dir} . --private"
    assert summary["hub"]["push_again"] == again
    assert summary["hub"]["error"] == "ConnectionError: no route to huggingface.co"
    assert again in caplog.text and "hf auth login" in caplog.text and str(result.model_dir) in caplog.text


def test_push_folder_writes_the_card_even_when_the_hub_library_fails(tmp_path, hub):
    hub.fail = RuntimeError("401 Unauthorized")
    (tmp_path / "model").mkdir()
    outcome = push_folder(tmp_path / "model", "a/b", private=True, card="# card\n")
    assert outcome["error"] == "RuntimeError: 401 Unauthorized"
    assert (tmp_path / "model" / "README.md").read_text() == "# card\n"


def test_the_card_leaves_local_bases_out_of_the_front_matter():
    card = model_card(
        stage="sft", repo_id="a/b", config_yaml="seed: 0\n", metrics={}, push="merged", base_model="tiny"
    )
    assert "base_model:" not in card and "None logged." in card
    card = model_card(
        stage="sft", repo_id="a/b", config_yaml="", metrics={"eval": {"rm/accuracy": 0.75}}, push="adapter",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    )  # fmt: skip
    assert (
        "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "| `eval/rm/accuracy` | 0.75 |" in card
    )


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"lora": {"enabled": False}, "hub": {"repo_id": "a/b"}},
            "hub.push: adapter, but lora.enabled is false",
        ),
        ({"hub": {"repo_id": "a/b", "push": "merged"}}, "hub.push: merged needs lora.merge_lora: true"),
        ({"hub": {"repo_id": "just-a-name"}}, "hub.repo_id must be 'user/name'"),
    ],
)
def test_a_push_the_stage_cannot_make_is_a_config_error(section, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(sft.Config, section)
    assert (
        from_dict(sft.Config, {"hub": {"repo_id": None, "push": "merged"}}).hub.repo_id is None
    )  # off: no check
