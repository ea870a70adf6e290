"""The one checkpoint helper: orbax ``CheckpointManager`` over a pytree plus a JSON sidecar.

``Checkpointer(dir).save(step, state)`` writes ``dir/<step>``; ``restore(like)`` returns
``(step, state)`` of the latest complete checkpoint, or ``(None, like)`` when there is none.
Writes are synchronous so that a kill right after ``save`` returns leaves a complete checkpoint,
and orbax only exposes a step once it is fully written, so a run killed mid-save resumes from the
previous one. Old checkpoints beyond ``max_to_keep`` are removed by orbax, never the latest good one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._mgr = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state: Any) -> None:
        state = jax.tree_util.tree_map(np.asarray, state)
        self._mgr.save(int(step), args=ocp.args.StandardSave(state), force=True)
        self._mgr.wait_until_finished()

    def restore(self, like: Any, step: int | None = None) -> tuple[int | None, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            return None, like
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
        restored = self._mgr.restore(int(step), args=ocp.args.StandardRestore(abstract))
        return int(step), restored

    def close(self) -> None:
        self._mgr.close()
