"""RFM training: attention distillation from the LVLM's own LLM (spec §4, fixed per §11.12).

Entry point: :func:`train_rfm` (``lrs train-rfm`` and the ``train_rfm`` flow call it).
"""

from lrs_core.distill.config import DistillConfig
from lrs_core.distill.metrics import topk_recall
from lrs_core.distill.trainer import TrainResult, read_metrics, train_records, train_rfm

__all__ = [
    "DistillConfig",
    "TrainResult",
    "read_metrics",
    "topk_recall",
    "train_records",
    "train_rfm",
]
