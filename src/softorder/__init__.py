"""softorder: deep multitask learning with soft layer ordering (Meyerson & Miikkulainen, ICLR 2018).

The ordered cores (:class:`SoftOrdering`, :class:`ParallelOrdering`, :class:`PermutedOrdering`,
:class:`SingleTaskCores`) are plain ``nn.Module`` s that take rows of many tasks at once; the
:class:`MultitaskModel` puts per-task encoders and decoders around them, and :func:`fit` trains it
the way the paper does.
"""

from softorder.layers import ConvPool, Dense, GlobalAveragePool, TaskDense, ZeroPadChannels, dense_decoder
from softorder.model import MultitaskModel, build_model, make_core, make_layers
from softorder.orderings import (
    ORDERINGS,
    OrderedCore,
    ParallelOrdering,
    PermutedOrdering,
    SingleTaskCores,
    SoftOrdering,
)
from softorder.recurrent import RecurrentLayer
from softorder.tasks import Batch, MultitaskData, TaskArrays, TaskSpec, TensorTasks
from softorder.train import History, TrainConfig, TrainingDiverged, evaluate, fit
from softorder.transfer import assemble_for_new_tasks

__version__ = "0.1.0"


def load(run: str, ordering: str | None = None):  # -> softorder.saved.SavedModel
    """A trained model, ready to predict, from ``softorder fit --out RUN`` or a saved model's folder
    (see :func:`softorder.saved.load`; loaded on first use, as it reads the CSV preprocessing)."""
    from softorder.saved import load as _load

    return _load(run, ordering)

__all__ = [
    "ORDERINGS",
    "Batch",
    "ConvPool",
    "Dense",
    "GlobalAveragePool",
    "History",
    "MultitaskData",
    "MultitaskModel",
    "OrderedCore",
    "ParallelOrdering",
    "PermutedOrdering",
    "RecurrentLayer",
    "SingleTaskCores",
    "SoftOrdering",
    "TaskArrays",
    "TaskDense",
    "TaskSpec",
    "TensorTasks",
    "TrainConfig",
    "TrainingDiverged",
    "ZeroPadChannels",
    "assemble_for_new_tasks",
    "build_model",
    "dense_decoder",
    "evaluate",
    "fit",
    "load",
    "make_core",
    "make_layers",
]
