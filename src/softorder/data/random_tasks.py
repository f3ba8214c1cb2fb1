"""Tasks of random patterns (paper, Sec. 3.2): the most disparate tasks possible.

Task ``i`` has ``n`` samples ``(x, y)`` with ``x`` uniform in ``[0, 1]^m`` and ``y`` uniform in
``{0, 1}``. The experiment measures how well a model can *fit* the tasks, so there is only a
training split.
"""

from __future__ import annotations

import numpy as np
import torch

from softorder.data._checks import require_int
from softorder.tasks import TaskArrays, TaskSpec, TensorTasks


def random_tasks(num_tasks: int = 2, n: int = 100, m: int = 16, seed: int = 0) -> TensorTasks:
    """``num_tasks`` binary tasks named ``random0, random1, ...``.

    Each task has a train split only: inputs ``(n, m)`` float32 in [0, 1], labels ``(n,)`` int64
    in {0, 1}. Task ``i`` depends only on ``(seed, i, n, m)``, not on ``num_tasks``.
    """
    num_tasks, n, m = (require_int(k, v, 1) for k, v in (("num_tasks", num_tasks), ("n", n), ("m", m)))
    seed = require_int("seed", seed, 0)
    tasks = []
    for i in range(num_tasks):
        rng = np.random.default_rng([seed, i])
        x = rng.random((int(n), int(m)), dtype=np.float32)
        y = rng.integers(0, 2, size=int(n))
        spec = TaskSpec(f"random{i}", (int(m),), "binary")
        tasks.append(TaskArrays(spec, {"train": (torch.from_numpy(x), torch.from_numpy(y).long())}))
    return TensorTasks(tasks)
