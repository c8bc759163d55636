"""Switch dropout off in a model, everywhere it hides.

PPO's ratio compares two forward passes of the same weights, and a reward model's scores should not depend on
a random mask; both need every dropout probability at 0, in training mode too. ``nn.Dropout`` modules are only
part of it: attention implementations read float attributes (``attention_dropout``), and a model's config
holds ``*dropout*`` fields that code may read again later.
"""

from __future__ import annotations

import torch

__all__ = ["disable_dropout"]


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability of ``model`` to 0, in training mode too; returns how many were changed.

    Every dropout module (``nn.Dropout`` and its siblings) gets ``p = 0``; float ``attention_dropout`` /
    ``dropout`` attributes of any module (attention implementations read them, e.g. Llama) and the float
    ``*dropout*`` fields of any module's ``config`` are set to 0. The count covers values that were not 0
    already, so a second call returns 0.

    Reference: SPEC §7 ("dropout off"); Ziegler et al. 2019 / TRL (``disable_dropout_in_model``).
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            if module.p != 0.0:
                count += 1
            module.p = 0.0
        for attr in ("attention_dropout", "dropout"):
            value = getattr(module, attr, None)
            if isinstance(value, float) and value != 0.0:
                setattr(module, attr, 0.0)
                count += 1
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            for key, value in config.to_dict().items():
                if "dropout" in key and isinstance(value, float) and value != 0.0:
                    setattr(config, key, 0.0)
                    count += 1
    return count
