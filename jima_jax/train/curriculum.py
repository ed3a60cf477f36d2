"""Which training examples each task's stream draws from, epoch by epoch (spec sections 5, 6, 8).

The loop asks `kept(epoch)` for the Task-1 and Task-2 index sets at the start of every epoch and
checkpoints `state_dict()`. This module currently implements the `none` schedule (every example,
every epoch); the difficulty-driven schedules plug in behind the same interface.
"""

from __future__ import annotations

import numpy as np

SCHEDULES = ('none',)


class Curriculum:
    def __init__(self, ccfg, num_train: int):
        if ccfg.schedule not in SCHEDULES:
            raise ValueError(f'curriculum.schedule={ccfg.schedule!r} is not available; choose one '
                             f'of {SCHEDULES}.')
        self.schedule = ccfg.schedule
        self.num_train = num_train

    def kept(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(Task-1 kept positions, Task-2 kept positions) for `epoch`."""
        del epoch
        everything = np.arange(self.num_train, dtype=np.int32)
        return everything, everything

    def state_dict(self) -> dict:
        return {'schedule': self.schedule, 'num_train': self.num_train}

    def load_state_dict(self, state: dict) -> None:
        if state.get('schedule') != self.schedule or state.get('num_train') != self.num_train:
            raise ValueError(
                f'the checkpoint was written with curriculum {state.get("schedule")!r} over '
                f'{state.get("num_train")} examples; this run uses {self.schedule!r} over '
                f'{self.num_train}. Use a fresh --workdir or the original config.')
