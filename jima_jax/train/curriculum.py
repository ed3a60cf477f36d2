"""Which training examples each task's stream draws from, epoch by epoch (spec sections 5, 6, 8).

The loop asks `kept(epoch)` for the Task-1 and Task-2 positions at the start of every epoch,
scores the training set (`difficulty.py`) at the end of each epoch where `scores_due(epoch)`, hands
the scores (and the validation metrics) to `observe`, and checkpoints `state_dict()`. Schedules
(`curriculum.schedule`):

- `none`: every example, every epoch.
- `jima` (paper, spec section 6): one ratio per task, the HARDEST fraction kept,
  c_t = min(1, [1 - (s_t - s_{t-1}) / s_{t-1}] c_{t-1}), floored; s = 1 - mean k over the scored
  training set (or a named validation metric).
- `jima_release` (the authors' code, section 8): the same update with one shared ratio, the
  EASIEST fraction kept, s = validation BLEU-4; s_0 and s_1 are taken in the two epochs AFTER the
  warm-up (0-based epochs 10 and 11 for a warm-up of 10), so the kept sets apply from epoch 12.
- `competence_sqrt`, `competence_linear`: easy-to-hard competence pacing (Platanios et al., 2019),
  c grows from the floor to 1 over `pace_epochs`; the easiest fraction kept.
- `anti`: the same fixed linear pace, hardest fraction kept (anti-curriculum).

Every schedule starts with `warmup_epochs` on everything and ranks by the same model-based k1/k2.
The R2Gen baseline (model.entity_fusion=False, `entity_task=False`) has no Task 1 and no k1: every
schedule then runs on k2 alone (s1 = s2, kept1 = kept2; only the Task-2 set is trained on).
Scoring runs at the end of the last two warm-up epochs (s_0, s_1 with c(s_0) = 1; `jima_release`:
the two epochs after them, also on everything) and then every `rescore_every_epochs`; the kept
sets change only when scores are renewed. Selection is a pure
function of (scores, ratio, seed): ties in difficulty are broken by a permutation fixed by the seed.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import pathlib
from typing import Optional

import numpy as np

from jima_jax import atomic

SCHEDULES = ('none', 'jima', 'jima_release', 'competence_sqrt', 'competence_linear', 'anti')


@dataclasses.dataclass(frozen=True)
class _Rule:
    hardest_first: bool
    shared_ratio: bool
    pacing: str  # feedback (spec section 6 update) | sqrt | linear (fixed pace by epoch)
    measure: str  # what 'auto' means for this schedule
    lead_in: int = 0  # epochs on everything after the warm-up before the first selection


_RULES = {
    'jima': _Rule(True, False, 'feedback', 'difficulty'),
    'jima_release': _Rule(False, True, 'feedback', 'val/BLEU_4', lead_in=2),
    'competence_sqrt': _Rule(False, True, 'sqrt', 'difficulty'),
    'competence_linear': _Rule(False, True, 'linear', 'difficulty'),
    'anti': _Rule(True, True, 'linear', 'difficulty'),
}


def update_ratio(c_prev: float, s_prev: float, s_now: float, floor: float) -> float:
    """Spec section 6: min(1, [1 - (s_now - s_prev) / s_prev] c_prev), then at least `floor`.

    A non-positive (or non-finite) s_prev leaves the relative change undefined: c stays.
    """
    if not (math.isfinite(s_prev) and math.isfinite(s_now)) or s_prev <= 0:
        return max(floor, min(1.0, c_prev))
    return max(floor, min(1.0, (1.0 - (s_now - s_prev) / s_prev) * c_prev))


def competence(t: int, total: int, c0: float, pacing: str) -> float:
    """Fixed-pace ratio after t curriculum epochs: c0 at t = 0, 1 from t = total on."""
    x = min(max(t / max(total, 1), 0.0), 1.0)
    if pacing == 'sqrt':
        return min(1.0, math.sqrt(c0 * c0 + (1.0 - c0 * c0) * x))
    if pacing == 'linear':
        return min(1.0, c0 + (1.0 - c0) * x)
    raise ValueError(f'unknown pacing {pacing!r}.')


def num_kept(ratio: float, n: int) -> int:
    """ceil(ratio * n), at least 1 (the 1e-9 absorbs float error in ratio * n)."""
    return max(1, min(n, math.ceil(ratio * n - 1e-9)))


def select(difficulty: np.ndarray, ratio: float, *, hardest_first: bool,
           tiebreak: np.ndarray) -> np.ndarray:
    """Positions of the ceil(ratio * N) hardest (or easiest) examples, ascending int32.

    Equal difficulties are ordered by `tiebreak` (a permutation), so the cut is deterministic.
    """
    d = np.asarray(difficulty, np.float64)
    order = np.lexsort((tiebreak, -d if hardest_first else d))
    return np.sort(order[:num_kept(ratio, len(d))]).astype(np.int32)


def _encode(a: Optional[np.ndarray]) -> Optional[dict]:
    """An array as JSON-safe, bit-exact base64 (checkpoint extra is JSON)."""
    if a is None:
        return None
    a = np.ascontiguousarray(a)
    return {'dtype': a.dtype.str, 'data': base64.b64encode(a.tobytes()).decode('ascii')}


def _decode(d: Optional[dict]) -> Optional[np.ndarray]:
    if d is None:
        return None
    return np.frombuffer(base64.b64decode(d['data']), dtype=np.dtype(d['dtype'])).copy()


@dataclasses.dataclass
class Composition:
    """Per-example facts for the kept sets' composition in the logs."""

    abnormal: np.ndarray  # [N] 0/1
    num_tokens: np.ndarray  # [N] report tokens
    num_infrequent: np.ndarray  # [N] of which infrequent (outside the top 1/8 of the vocabulary)

    @classmethod
    def from_split(cls, split, frequent_mask: np.ndarray) -> 'Composition':
        """`frequent_mask`: FrequencyTables.frequent_mask(1/8) (bool per vocabulary id)."""
        tokens = np.asarray(split.tokens)
        real = tokens != 0
        infrequent = real & ~np.asarray(frequent_mask, bool)[tokens]
        return cls(np.asarray(split.abnormal, np.float64), real.sum(1), infrequent.sum(1))

    def shares(self, kept: np.ndarray) -> tuple[float, float]:
        """(share of abnormal studies, share of infrequent tokens) among `kept`."""
        tokens = float(self.num_tokens[kept].sum())
        return (float(self.abnormal[kept].mean()),
                float(self.num_infrequent[kept].sum()) / max(tokens, 1.0))


class Curriculum:
    """Schedule state: difficulties, s and c histories, the kept sets and the epoch they start."""

    def __init__(self, ccfg, num_train: int, *, seed: int, num_epochs: int,
                 composition: Optional[Composition] = None, entity_task: bool = True):
        if ccfg.schedule not in SCHEDULES:
            raise ValueError(f'curriculum.schedule={ccfg.schedule!r} is not available; choose one '
                             f'of {SCHEDULES}.')
        if not 0 < float(ccfg.floor) <= 1:
            raise ValueError(f'curriculum.floor={ccfg.floor} must be in (0, 1].')
        if ccfg.k2_mode not in ('all', 'balanced'):
            raise ValueError(f"curriculum.k2_mode={ccfg.k2_mode!r}: expected 'all' or 'balanced'.")
        if int(ccfg.rescore_every_epochs) < 1:
            raise ValueError(f'curriculum.rescore_every_epochs={ccfg.rescore_every_epochs} must '
                             'be >= 1.')
        self.schedule = ccfg.schedule
        self.rule = _RULES.get(self.schedule)
        self.entity_task = bool(entity_task)  # False: the R2Gen baseline, ranked by k2 alone
        self.num_train = num_train
        self.seed = int(seed)
        self.num_epochs = int(num_epochs)
        self.warmup = max(int(ccfg.warmup_epochs), 0)
        # The first epoch that may train on a kept subset.
        self.start = self.warmup + (self.rule.lead_in if self.rule else 0)
        self.floor = float(ccfg.floor)
        self.k2_mode = ccfg.k2_mode
        self.rescore_every = int(ccfg.rescore_every_epochs)
        if ccfg.measure == 'auto':
            self.measure = self.rule.measure if self.rule else 'difficulty'
        else:
            self.measure = ccfg.measure
        pace = int(ccfg.pace_epochs)
        self.pace = pace if pace > 0 else max(1, self.num_epochs - self.start - 1)
        self.composition = composition
        self.tiebreak = np.random.default_rng([self.seed, 0x6A696D61]).permutation(num_train)
        # State (everything below is checkpointed).
        self.k1: Optional[np.ndarray] = None
        self.k2: Optional[np.ndarray] = None
        self.has_entities: Optional[np.ndarray] = None
        self.s_history: list[list[float]] = []  # [epoch scored, s1, s2]
        self.c_history: list[list[float]] = []  # [first epoch it applies to, c1, c2]
        self.kept1: Optional[np.ndarray] = None  # None = every example
        self.kept2: Optional[np.ndarray] = None
        self.kept_from_epoch = 0

    # ------------------------------------------------------------------ what the loop asks
    @property
    def measure_is_metric(self) -> bool:
        return self.measure != 'difficulty'

    def check_validation(self, train_cfg) -> None:
        """A validation-metric measure must be one the loop computes; fail before training."""
        if self.rule is None or not self.measure_is_metric:
            return
        split, _, name = self.measure.partition('/')
        if split not in tuple(train_cfg.eval_splits) or not name:
            raise ValueError(f'curriculum.measure={self.measure!r} names a metric of split '
                             f'{split!r}, which train.eval_splits={tuple(train_cfg.eval_splits)} '
                             "does not evaluate; use e.g. 'val/BLEU_4' or 'difficulty'.")
        if not name.startswith('loss/') and not train_cfg.eval_decode:
            raise ValueError(f'curriculum.measure={self.measure!r} needs generated reports '
                             'during validation: set train.eval_decode=True (or use '
                             "curriculum.measure='difficulty' or a 'val/loss/...' metric).")

    def scores_due(self, epoch: int) -> bool:
        """Whether to score the training set at the end of `epoch` (0-based)."""
        if self.rule is None or epoch + 1 >= self.num_epochs:
            return False
        first = self.start - (2 if self.rule.pacing == 'feedback' else 1)
        if epoch < first:
            return False
        return epoch < self.start or (epoch + 1 - self.start) % self.rescore_every == 0

    def needs_validation(self, epoch: int) -> bool:
        return self.measure_is_metric and self.scores_due(epoch)

    def kept(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(Task-1 kept positions, Task-2 kept positions) for `epoch`."""
        everything = np.arange(self.num_train, dtype=np.int32)
        if self.kept1 is None or epoch < self.kept_from_epoch:
            return everything, everything
        return self.kept1, self.kept2

    def ratios(self) -> tuple[float, float]:
        return (self.c_history[-1][1], self.c_history[-1][2]) if self.c_history else (1.0, 1.0)

    # ------------------------------------------------------------------ updates
    def _measure(self, k1, k2, has_entities, metrics: dict) -> tuple[float, float]:
        if not self.measure_is_metric:
            s1 = 1.0 - float(np.mean(k1[has_entities])) if has_entities.any() else 1.0
            s2 = 1.0 - float(np.mean(k2))
            if self.rule.shared_ratio:
                s1 = s2 = 0.5 * (s1 + s2)
            return s1, s2
        if self.measure not in metrics:
            raise ValueError(f'curriculum.measure={self.measure!r} was not computed by the '
                             f'validation (got {sorted(metrics)[:12]}...).')
        value = float(metrics[self.measure])
        # Losses are lower-is-better; exp(-loss) is a higher-is-better measure in (0, 1].
        s = math.exp(-value) if '/loss/' in f'/{self.measure}' else value
        return s, s

    def observe(self, epoch: int, difficulty, metrics: Optional[dict] = None) -> None:
        """Scores taken at the end of `epoch` -> s_t, the ratios and the sets for `epoch + 1`."""
        if self.rule is None:
            return
        if len(difficulty.k1) != self.num_train:
            raise ValueError(f'difficulty has {len(difficulty.k1)} examples, the curriculum '
                             f'{self.num_train}.')
        k1 = np.asarray(difficulty.k1, np.float32)
        k2 = np.asarray(difficulty.k2(self.k2_mode), np.float32)
        has = np.asarray(difficulty.has_entities, bool)
        if not self.entity_task:  # no Task 1: k2 ranks (and s measures) both sets
            k1, has = k2, np.ones_like(has)
        elif not difficulty.measures_k1:
            raise ValueError('curriculum: the difficulty scores have no k1 (scored with '
                             'model.entity_fusion=False, which has no entity extractor) but this '
                             'curriculum was built for both tasks; build it with '
                             'entity_task=False.')
        s1, s2 = self._measure(k1, k2, has, metrics or {})
        previous = self.s_history[-1] if self.s_history else None
        self.s_history.append([int(epoch), s1, s2])
        self.k1, self.k2, self.has_entities = k1, k2, has
        nxt = epoch + 1
        if nxt < self.start:
            return  # s_0 recorded; still on everything
        if self.rule.pacing == 'feedback':
            c1, c2 = self.ratios()  # 1, 1 = c(s_0) at the first update
            if previous is not None:
                c1 = update_ratio(c1, previous[1], s1, self.floor)
                c2 = update_ratio(c2, previous[2], s2, self.floor)
        else:
            c1 = c2 = competence(nxt - self.start, self.pace, self.floor, self.rule.pacing)
        self.c_history.append([nxt, c1, c2])
        hard = self.rule.hardest_first
        self.kept1 = select(k1, c1, hardest_first=hard, tiebreak=self.tiebreak)
        self.kept2 = select(k2, c2, hardest_first=hard, tiebreak=self.tiebreak)
        self.kept_from_epoch = nxt

    # ------------------------------------------------------------------ logging
    def epoch_scalars(self, epoch: int) -> dict[str, float]:
        """`curriculum/*` values describing `epoch`'s kept sets (and the latest scores)."""
        kept1, kept2 = self.kept(epoch)
        applied = self.kept1 is not None and epoch >= self.kept_from_epoch
        c1, c2 = self.ratios() if applied else (1.0, 1.0)
        out = {'curriculum/c1': c1, 'curriculum/c2': c2,
               'curriculum/kept1': float(len(kept1)), 'curriculum/kept2': float(len(kept2))}
        if self.k1 is not None:
            has = self.has_entities
            if self.entity_task:
                out['curriculum/k1_mean'] = float(self.k1[has].mean()) if has.any() else 0.0
            out['curriculum/k2_mean'] = float(self.k2.mean())
            out['curriculum/s1'], out['curriculum/s2'] = self.s_history[-1][1:]
        if self.composition is not None:
            everything = np.arange(self.num_train)
            for name, kept in (('kept1', kept1), ('kept', kept2), ('all', everything)):
                abn, inf = self.composition.shares(kept)
                out[f'curriculum/{name}_abnormal_share'] = abn
                out[f'curriculum/{name}_infrequent_token_share'] = inf
        return out

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {'schedule': self.schedule, 'num_train': self.num_train, 'seed': self.seed,
                'k1': _encode(self.k1), 'k2': _encode(self.k2),
                'has_entities': _encode(self.has_entities),
                's_history': [list(r) for r in self.s_history],
                'c_history': [list(r) for r in self.c_history],
                'kept1': _encode(self.kept1), 'kept2': _encode(self.kept2),
                'kept_from_epoch': self.kept_from_epoch}

    def load_state_dict(self, state: dict) -> None:
        if (state.get('schedule'), state.get('num_train')) != (self.schedule, self.num_train):
            raise ValueError(
                f'the checkpoint was written with curriculum {state.get("schedule")!r} over '
                f'{state.get("num_train")} examples; this run uses {self.schedule!r} over '
                f'{self.num_train}. Use a fresh --workdir or the original config.')
        if state.get('seed', self.seed) != self.seed:
            raise ValueError(f'the checkpoint was written with seed {state["seed"]}; this run '
                             f'uses {self.seed}. Use the original seed or a fresh --workdir.')
        self.k1, self.k2 = _decode(state.get('k1')), _decode(state.get('k2'))
        self.has_entities = _decode(state.get('has_entities'))
        self.s_history = [list(r) for r in state.get('s_history', [])]
        self.c_history = [list(r) for r in state.get('c_history', [])]
        self.kept1, self.kept2 = _decode(state.get('kept1')), _decode(state.get('kept2'))
        self.kept_from_epoch = int(state.get('kept_from_epoch', 0))


_PANELS = (
    ('kept ratio', ('curriculum/c1', 'curriculum/c2')),
    ('mean difficulty', ('curriculum/k1_mean', 'curriculum/k2_mean')),
    ('abnormal share', ('curriculum/kept1_abnormal_share', 'curriculum/kept_abnormal_share',
                        'curriculum/all_abnormal_share')),
    ('infrequent-token share', ('curriculum/kept1_infrequent_token_share',
                                'curriculum/kept_infrequent_token_share',
                                'curriculum/all_infrequent_token_share')),
)


def plot_curves(rows: list[dict], out_path: pathlib.Path) -> Optional[pathlib.Path]:
    """The `curriculum/*` log values over epochs as a PNG (the last row of an epoch wins)."""
    by_epoch: dict[int, dict] = {}
    for row in rows:
        if 'curriculum/c1' in row and 'epoch' in row:
            by_epoch[int(row['epoch'])] = row
    if not by_epoch:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    epochs = sorted(by_epoch)
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4 * len(_PANELS), 3.4))
    for ax, (title, keys) in zip(axes, _PANELS):
        for key in keys:
            pts = [(e + 1, by_epoch[e][key]) for e in epochs if key in by_epoch[e]]
            if pts:
                ax.plot(*zip(*pts), 'o-', markersize=3, label=key.split('/', 1)[1])
        ax.set_title(title)
        ax.set_xlabel('epoch')
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    atomic.save_figure(fig, out_path, dpi=110)
    plt.close(fig)
    return out_path
