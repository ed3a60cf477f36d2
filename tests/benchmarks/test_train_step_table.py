"""benchmarks.train_step reports its own numbers only: a speed ratio to PyTorch holds only when
both ran side by side (benchmarks.vs_pytorch), never against a time from another day or CPU."""

from benchmarks import train_step


def test_the_table_has_one_cell_per_column_and_no_cross_day_ratio():
    row = dict(case='iu_r101', backbone='resnet101', mode='alternate', remat=False,
               xla_flags='', cpu_malloc='reuse', step_seconds=14.24, examples_per_sec=2.247,
               images_per_sec=4.494, peak_host_mem_gb=8.86)
    header, rule, line = train_step._markdown([row]).splitlines()
    assert header.count('|') == rule.count('|') == line.count('|')
    assert line == ('| iu_r101 | resnet101 | alternate | False | - | reuse | 14.24 | 2.25 | '
                    '4.49 | 8.86 |')
    assert 'pytorch' not in header.lower()
    assert not hasattr(train_step, 'PYTORCH_PAIR_SECONDS')
