"""RFM training: attention distillation from the LVLM's own LLM.

Entry point: :func:`train_rfm` (``lrs train-rfm`` and the ``train_rfm`` flow call it).

The names below are imported on first use, so ``lrs_core.distill.config`` (and the option checks
of ``lrs train-rfm``) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrs_core.distill.config import DistillConfig
    from lrs_core.distill.metrics import topk_recall
    from lrs_core.distill.trainer import TrainResult, read_metrics, train_records, train_rfm

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    "DistillConfig": "config",
    "topk_recall": "metrics",
    "TrainResult": "trainer",
    "read_metrics": "trainer",
    "train_records": "trainer",
    "train_rfm": "trainer",
}

__all__ = [
    "DistillConfig",
    "TrainResult",
    "read_metrics",
    "topk_recall",
    "train_records",
    "train_rfm",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
