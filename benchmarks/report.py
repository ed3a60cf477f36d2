"""Benchmark rows -> a Markdown table with derived checks, and a PNG chart."""

from __future__ import annotations

import pathlib

import numpy as np

COLUMNS = ('benchmark', 'case', 'shape', 'dtype', 'batch', 'devices', 'step (s)', 'examples/s',
           'images/s', 'TFLOP/s/device', 'MFU')


IU_VAL_STUDIES = 296  # R2Gen split of IU X-ray


def _fmt(x, spec: str = '.3g') -> str:
    if x is None:
        return '-'
    return format(x, spec) if isinstance(x, float) else str(x)


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if 'error' not in r]


def table(rows: list[dict]) -> str:
    lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["benchmark"]} | {r.get("case", "-")} | failed: '
                         f'{r["error"].splitlines()[-1][:120]} |' + ' |' * (len(COLUMNS) - 3))
            continue
        mfu = r.get('mfu')
        lines.append('| ' + ' | '.join([
            r['benchmark'], r['case'], r['shape'], r['dtype'], str(r['batch']),
            str(r['devices']) if r['devices'] else 'host', f'{r["step_seconds"]:.3f}',
            f'{r["examples_per_sec"]:.1f}', f'{r["images_per_sec"]:.1f}',
            _fmt(r.get('tflops_per_sec_per_device')),
            f'{100 * mfu:.1f}%' if mfu is not None else '-']) + ' |')
    return '\n'.join(lines)


def _loss_diffs(a: dict, b: dict) -> str:
    """Relative differences of the first-step losses, per loss."""
    keys = sorted(k for k in set(a) & set(b) if k.startswith('loss/'))
    if not keys:
        return 'no losses recorded'
    return ', '.join(f'{k[5:]} {abs(a[k] - b[k]) / max(abs(b[k]), 1e-12):.1e}' for k in keys)


def checks(rows: list[dict]) -> list[str]:
    """The issue's goals, measured: fused vs pmap vs unfused; sharded vs one-device numbers."""
    rows = _ok(rows)
    out = []
    variants = {r['case']: r for r in rows if r['benchmark'] == 'step_variants'}
    fused = variants.get('fused_jit')
    for other in ('pmap', 'unfused'):
        if fused and other in variants:
            o = variants[other]
            out.append(f'fused jit vs {other} ({fused["devices"]} devices, {fused["shape"]}): '
                       f'{fused["examples_per_sec"] / o["examples_per_sec"]:.2f}x the examples/s '
                       f'({fused["step_seconds"] * 1e3:.1f} vs {o["step_seconds"] * 1e3:.1f} ms '
                       f'per step); first-step losses, relative difference: '
                       f'{_loss_diffs(o["first_step_losses"], fused["first_step_losses"])}'
                       + (' (pmap draws dropout masks per device, so its report loss differs '
                          'by design).' if other == 'pmap' else '.'))
    scaling = sorted((r for r in rows if r['case'] == 'fused_jit' and r['benchmark'] in
                      ('scaling', 'step_variants')), key=lambda r: r['devices'])
    base = next((r for r in scaling if r['devices'] == 1), None)
    if base:
        for r in scaling[1:]:
            if ((r['shape'], r['dtype'], r['batch'])
                    != (base['shape'], base['dtype'], base['batch'])):
                continue
            out.append(f'{r["devices"]} devices vs 1 ({r["shape"]}, global batch {r["batch"]}): '
                       f'{r["examples_per_sec"] / base["examples_per_sec"]:.2f}x the examples/s; '
                       f'first-step losses, relative difference: '
                       f'{_loss_diffs(r["first_step_losses"], base["first_step_losses"])}.')
    dtypes = {(r['shape'], r['batch'], r['dtype']): r for r in rows if r['benchmark'] == 'dtype'}
    for (shape, batch, dtype), r in sorted(dtypes.items()):
        f32 = dtypes.get((shape, batch, 'float32'))
        if dtype == 'bfloat16' and f32:
            out.append(f'bfloat16 vs float32 ({shape}, batch {batch}): '
                       f'{r["examples_per_sec"] / f32["examples_per_sec"]:.2f}x the examples/s.')
    for r in rows:
        if r['benchmark'] == 'beam_search' and r['devices'] == 1:
            batches = -(-IU_VAL_STUDIES // r['batch'])
            out.append(f'{r["case"]} at the {r["shape"]} shape, batch {r["batch"]}: '
                       f'{r["examples_per_sec"]:.2f} studies/s ({r["mean_generated_tokens"]:.0f} '
                       f'tokens generated on average); an IU X-ray validation pass '
                       f'({IU_VAL_STUDIES} studies = {batches} batches) at this median batch time: '
                       f'{batches * r["step_seconds"]:.0f} s.')
    return out


def markdown(rows: list[dict], title: str) -> str:
    ok = _ok(rows)
    hw = ok[0]['hardware'] if ok else {}
    lines = [f'# {title}', '']
    if hw:
        lines.append(f'{hw["date"]}, {hw["platform"]} ({hw["device_kind"]}), '
                     f'{hw["host_cpus"]} host CPUs, {hw["machine"]}, jax {hw["jax_version"]}, '
                     f'Python {hw["python"]}.')
        loads = [r['hardware']['load_avg_1m'] for r in ok]
        lines.append(f'Host load average during the runs: {min(loads):.1f} to {max(loads):.1f}.')
    if hw.get('platform') == 'cpu':
        lines.append('Device counts above 1 are simulated CPU devices sharing the same cores '
                     '(XLA_FLAGS=--xla_force_host_platform_device_count): those rows measure '
                     'the overhead of partitioning, not a speed-up. No MFU on CPUs.')
    lines += ['', 'examples = studies (an alternate-mode train step uses batch A + batch B = '
              '2 x batch studies); images = examples x views. Step = median seconds per step '
              '(train step), per batch (pipeline, beam search) or per pass over the split '
              '(difficulty).', '', table(rows), '']
    found = checks(rows)
    if found:
        lines += ['## Checks', ''] + [f'- {c}' for c in found] + ['']
    return '\n'.join(lines)


def chart(rows: list[dict], path: str | pathlib.Path, title: str) -> None:
    """Examples/s per benchmark: one panel per group (variants, scaling, dtype, the rest)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from jima_jax import atomic

    rows = _ok(rows)
    groups = [('train step variants', [r for r in rows if r['benchmark'] == 'step_variants']),
              ('scaling (fused jit)', sorted(
                  [r for r in rows if r['case'] == 'fused_jit'
                   and r['benchmark'] in ('scaling', 'step_variants')],
                  key=lambda r: r['devices'])),
              ('compute dtype', [r for r in rows if r['benchmark'] in ('dtype', 'paper_model')]),
              ('pipeline / difficulty / beam search',
               [r for r in rows if r['benchmark'] in ('pipeline', 'difficulty', 'beam_search')])]
    groups = [(name, g) for name, g in groups if g]
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(4.2 * max(len(groups), 1), 3.8),
                             squeeze=False)
    for ax, (name, group) in zip(axes[0], groups):
        if name.startswith('scaling'):
            ax.plot([r['devices'] for r in group], [r['examples_per_sec'] for r in group], 'o-')
            ax.set_xscale('log', base=2)
            ax.set_xlabel('devices')
        else:
            labels = [f'{r["case"]}\n{r["shape"]} {r["dtype"]}\nbatch {r["batch"]}'
                      for r in group]
            ax.bar(np.arange(len(group)), [r['examples_per_sec'] for r in group])
            ax.set_xticks(np.arange(len(group)), labels, fontsize=7)
            if name.startswith('pipeline'):
                ax.set_yscale('log')  # host pipeline rates are orders above device ones
        ax.set_title(name, fontsize=10)
        ax.set_ylabel('examples/s')
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    atomic.save_figure(fig, path, dpi=110)
    plt.close(fig)
