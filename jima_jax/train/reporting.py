"""What a run tells people: console progress lines, train_log.jsonl, TensorBoard, plots.

Only process 0 writes. `train_log.jsonl` holds one JSON object per log interval (and one per
evaluation), the contract other tools read: at least `step`, `epoch`, `loss/report`,
`loss/entity`, `examples_per_sec`.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time
from typing import Optional

from jima_jax import atomic

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return '?'
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class RunReporter:
    """Console + JSONL + TensorBoard sink for scalar metrics."""

    def __init__(self, workdir: pathlib.Path, *, enabled: bool = True,
                 resume_step: Optional[int] = None):
        """`resume_step`: rows logged after that step by an interrupted run are dropped, so the
        log of a resumed run reads like one uninterrupted run."""
        self.workdir = workdir
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if enabled:
            from clu import metric_writers
            path = workdir / 'train_log.jsonl'
            rows = read_log(path)
            if resume_step is not None and any(r.get('step', 0) > resume_step for r in rows):
                atomic.write_text(path, ''.join(json.dumps(r) + '\n' for r in rows
                                           if r.get('step', 0) <= resume_step))
            self._tb = metric_writers.SummaryWriter(str(workdir / 'tb'))
            self._jsonl = open(path, 'a', buffering=1)

    def write(self, step: int, scalars: dict, *, epoch: Optional[int] = None) -> None:
        if not self.enabled:
            return
        row = {'step': int(step)}
        if epoch is not None:
            row['epoch'] = int(epoch)
        row.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(row) + '\n')
        self._tb.write_scalars(int(step), {k: float(v) for k, v in scalars.items()})

    def progress(self, step: int, total: int, epoch: int, num_epochs: int, scalars: dict,
                 seconds_left: float) -> None:
        if not self.enabled:
            return
        parts = [f'step {step}/{total}', f'epoch {epoch + 1}/{num_epochs}']
        for key in ('loss/entity', 'loss/report'):
            if key in scalars:
                parts.append(f'{key} {scalars[key]:.4f}')
        if 'examples_per_sec' in scalars:
            parts.append(f'{scalars["examples_per_sec"]:.1f} ex/s')
        parts.append(f'ETA {format_duration(seconds_left)}')
        print(' | '.join(parts), flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def results_table(result: dict) -> str:
    """A two-column Markdown table of a flat results dict (what --mode train prints last)."""
    rows = ['| metric | value |', '|---|---|']
    for k, v in result.items():
        rows.append(f'| {k} | {v:.4f} |' if isinstance(v, float) else f'| {k} | {v} |')
    return '\n'.join(rows)


def read_log(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(log_path: pathlib.Path, out_path: pathlib.Path) -> Optional[pathlib.Path]:
    """Train (and validation, when logged) losses over steps as a PNG."""
    rows = read_log(log_path)
    if not rows:
        return None
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, task in zip(axes, ('entity', 'report')):
        for key, style in ((f'loss/{task}', '-'), (f'val/loss/{task}', 'o-')):
            pts = [(r['step'], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=key, markersize=3)
        ax.set_xlabel('step')
        ax.set_title(f'Task {"1: entity BCE" if task == "entity" else "2: report NLL"}')
        if ax.lines:  # the R2Gen baseline has no entity loss
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic.save_figure(fig, out_path, dpi=110)
    plt.close(fig)
    return out_path


class Throughput:
    """Examples/s between log points and a remaining-time estimate."""

    def __init__(self):
        self._t = time.perf_counter()
        self._examples = 0
        self._start = self._t
        self.rate = float('nan')

    def add(self, examples: int) -> None:
        self._examples += examples

    def tick(self) -> float:
        now = time.perf_counter()
        if self._examples:
            self.rate = self._examples / max(now - self._t, 1e-9)
        self._t, self._examples = now, 0
        return self.rate
