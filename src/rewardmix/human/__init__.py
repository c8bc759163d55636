"""Human evaluation: annotators rank K responses per prompt; rankings are merged and aggregated per model.

The flow (CRS §5.5.2; the thesis used Argilla, this is a small self-contained replacement):

1. :mod:`~rewardmix.human.export`: K models' responses per prompt, shuffled into slots A, B, ... with a
   seeded order (``tasks.jsonl``); which model wrote which slot goes to a separate ``key.jsonl``.
2. :mod:`~rewardmix.human.server`: a local web page (``page.html``) where each annotator ranks the
   responses of one prompt after the other, ties allowed; rankings are appended to ``rankings.jsonl``.
3. :mod:`~rewardmix.human.aggregate`: rankings translated to models, merged per prompt with Tideman's
   ranked pairs, normalized Borda points per model, mean and std over annotator groups (CRS Table 17).
   :mod:`~rewardmix.human.formats` reads rankings made elsewhere instead (Argilla 1.x/2.x, Label Studio
   Ranker and Pairwise, CSV) and feeds them to the same aggregation.

The ``human-eval`` stage (:mod:`rewardmix.stages.human_eval`) runs each step from one config.
"""

from __future__ import annotations

from rewardmix.human.aggregate import ImportResult, import_rankings, read_key, read_rankings, summarize
from rewardmix.human.export import ExportResult, check_ranks, export_tasks, slot_order
from rewardmix.human.formats import import_tool_rankings, read_tool_file
from rewardmix.human.server import HumanEvalServer, TaskStore, serve, serving

__all__ = [
    "ExportResult",
    "HumanEvalServer",
    "ImportResult",
    "TaskStore",
    "check_ranks",
    "export_tasks",
    "import_rankings",
    "import_tool_rankings",
    "read_key",
    "read_rankings",
    "read_tool_file",
    "serve",
    "serving",
    "slot_order",
    "summarize",
]
