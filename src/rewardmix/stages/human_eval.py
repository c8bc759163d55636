"""``rewardmix human-eval``: annotators rank K models' responses per prompt (CRS §5.5.2, Tables 9, 17).

One directory (``dir``) holds the whole evaluation; ``action`` picks the step:

- ``export``: read the models' generations (one JSONL per model with ``id``, ``prompt``, ``response``,
  or one file with a ``model`` field; an optional ``group`` field gives an annotator group its own
  responses) and write ``tasks.jsonl`` (each prompt's K responses in a seeded random order, slots A, B, ...),
  ``key.jsonl`` (slot -> model, never shown to annotators) and ``manifest.json``.
- ``serve``: serve the ranking page on ``serve.host:serve.port`` (127.0.0.1; port 0 = a free one); the
  address, with this session's random token, is printed when the server starts. Each annotator opens
  ``http://HOST:PORT/?token=TOKEN&annotator=NAME`` (or types the name), ranks the responses of one
  prompt after the other (ties allowed) and submits; rankings are appended to ``rankings.jsonl``. Stop with
  Ctrl+C (or ``serve.stop_when_done``); a restart resumes every annotator where they stopped.
- ``import``: check ``rankings.jsonl`` against the key (last submission per annotator and prompt wins),
  merge each prompt's annotators with Tideman's ranked pairs, aggregate normalized Borda points per model
  and their mean and standard deviation over annotator groups, count pairwise wins; write
  ``human_eval.json``, ``human_eval.md`` and ``rankings_by_model.jsonl``. With ``import_format`` =
  ``argilla``, ``labelstudio`` or ``csv`` it reads ``import_path``, rankings made in that tool, instead
  (:mod:`rewardmix.human.formats` has the accepted shapes): their response ids are the slots of this
  directory's export when it holds one, else the file names the models itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from rewardmix.config import ConfigError
from rewardmix.human.aggregate import import_rankings
from rewardmix.human.export import MANIFEST_FILE, check_groups, export_tasks
from rewardmix.human.formats import import_tool_rankings
from rewardmix.human.server import serve
from rewardmix.rundir import prepare_run_dir

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    generations: dict[str, str] = field(default_factory=dict)
    """Model name -> JSONL file of its generations (``id``, ``prompt``, ``response``, optional ``group``)."""
    generations_file: str | None = None
    """Instead of ``generations``: one JSONL file whose lines also name their ``model``."""
    seed: int = 0
    """Seed of each prompt's response order (shuffled per group and prompt, against positional bias)."""


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to bind. The only credential is the session token in the page address (printed at start): bind another address only on a network you trust."""
    port: int = 8765
    """Port to listen on; 0 picks a free one (the URL is logged)."""
    stop_when_done: bool = False
    """Stop the server once every declared annotator has ranked every prompt of their group."""
    allowed_hosts: list[str] = field(default_factory=list)
    """More host names or addresses annotators may open the page under (e.g. the machine's name on the network when host is 0.0.0.0). Requests whose Host header names anything but these, localhost, 127.0.0.1, ::1 or host (with the port) are refused, against DNS rebinding."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"serve.port must be in 0..65535, got {self.port}")


@dataclass
class AggregateConfig:
    std_ddof: int = 0
    """Standard deviation over groups: 0 = population (reproduces CRS Table 17's numbers), 1 = sample."""

    def __post_init__(self) -> None:
        if self.std_ddof < 0:
            raise ValueError(f"aggregate.std_ddof must be >= 0, got {self.std_ddof}")


@dataclass
class Config:
    action: Literal["export", "serve", "import"] = "export"
    """Step to run: write the tasks, serve the ranking page, or import and aggregate the rankings."""
    dir: str = "runs/human_eval"
    """The evaluation directory: tasks, key, manifest, rankings and results all live here."""
    groups: dict[str, list[str]] = field(default_factory=dict)
    """Annotator group -> annotator names (CRS: 3 groups of 4); empty = one group open to any name. Recorded in manifest.json on export; serve and import must see the same."""
    on_bad_row: Literal["error", "skip"] = "error"
    """Bad input lines (generations on export, rankings on import): stop naming file, line and field, or skip and count."""
    import_format: Literal["rewardmix", "argilla", "labelstudio", "csv"] = "rewardmix"
    """What action=import reads: ``rewardmix`` = ``rankings.jsonl`` of the ranking page; ``argilla`` (1.x or 2.x record JSON), ``labelstudio`` (JSON export, Ranker or Pairwise) or ``csv`` (``prompt_id, annotator, response_id, rank``) = the file ``import_path``. Response ids are the export's slots when ``dir`` holds one, else models named in the file (README: "Importing rankings from Argilla, Label Studio or CSV")."""
    import_path: str | None = None
    """The other tool's export to import (required with import_format argilla, labelstudio or csv)."""
    import_question: str | None = None
    """Argilla: name of the ranking question; None = the only question answered with a list."""
    export: ExportConfig = field(default_factory=ExportConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)

    def __post_init__(self) -> None:
        self.groups = check_groups(self.groups)  # names in NFC, as the server and the import compare them
        if self.import_format == "rewardmix" and self.import_path is not None:
            raise ValueError(
                "import_path is for rankings made in another tool: set import_format to argilla, "
                "labelstudio or csv (import_format=rewardmix reads dir/rankings.jsonl)"
            )
        if self.action == "import" and self.import_format != "rewardmix" and not self.import_path:
            raise ValueError(f"import_format={self.import_format} needs import_path: the file to import")


class HumanEvalResult(NamedTuple):
    output_dir: Path
    action: str
    outputs: dict[str, Path]
    """Files the action wrote (or, for ``serve``, appended to)."""
    stats: dict[str, Any]


def run(cfg: Config) -> HumanEvalResult:
    from_tool = cfg.action == "import" and cfg.import_format != "rewardmix"
    # rankings from another tool need no export of ours; when there is one, its groups must match
    if cfg.action != "export" and not (from_tool and not (Path(cfg.dir) / MANIFEST_FILE).exists()):
        _check_manifest_groups(Path(cfg.dir), cfg.groups, importing=cfg.action == "import")
    out = prepare_run_dir(cfg.dir, cfg, stage="human-eval")
    if cfg.action == "export":
        # step 1. generations -> tasks.jsonl (seeded slot order) + key.jsonl + manifest.json
        result = export_tasks(
            out,
            generations=cfg.export.generations or None,
            generations_file=cfg.export.generations_file,
            groups=cfg.groups,
            seed=cfg.export.seed,
            on_bad_row=cfg.on_bad_row,
        )
        outputs = {"tasks": result.tasks_path, "key": result.key_path, "manifest": out / "manifest.json"}
        return HumanEvalResult(out, "export", outputs, result.manifest)
    if cfg.action == "serve":
        # step 2. the ranking page; rankings.jsonl grows one line per submission
        served = serve(
            out,
            host=cfg.serve.host,
            port=cfg.serve.port,
            stop_when_done=cfg.serve.stop_when_done,
            allowed_hosts=cfg.serve.allowed_hosts,
        )
        return HumanEvalResult(out, "serve", {"rankings": out / "rankings.jsonl"}, served._asdict())
    # step 3. rankings -> Tideman per prompt -> Borda points per model, mean and std over groups
    if from_tool:
        imported = import_tool_rankings(
            out,
            cfg.import_path,  # type: ignore[arg-type]  # checked in Config
            cfg.import_format,  # type: ignore[arg-type]
            question=cfg.import_question,
            groups=cfg.groups,
            on_bad_row=cfg.on_bad_row,
            std_ddof=cfg.aggregate.std_ddof,
        )
    else:
        imported = import_rankings(out, on_bad_row=cfg.on_bad_row, std_ddof=cfg.aggregate.std_ddof)
    outputs = {"summary": imported.json_path, "report": imported.md_path, "by_model": imported.by_model_path}
    return HumanEvalResult(out, "import", outputs, imported.summary)


def _check_manifest_groups(out: Path, groups: dict[str, list[str]], *, importing: bool = False) -> None:
    manifest_path = out / MANIFEST_FILE
    if not manifest_path.exists():
        advice = "run action=export first"
        if importing:
            advice += (
                "; for rankings made in Argilla, Label Studio or a spreadsheet, set import_format "
                "(argilla, labelstudio, csv) and import_path"
            )
        raise FileNotFoundError(f"{manifest_path}: no tasks here yet; {advice}")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    exported = {} if manifest["open_annotators"] else manifest["groups"]
    if groups != exported:
        raise ConfigError(
            f"groups {groups} differ from the exported ones in {manifest_path} ({exported}); re-run "
            "action=export with the same generations and seed (allowed while the key stays the same)"
        )
