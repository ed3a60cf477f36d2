"""benchmarks/input_memory.py: the RSS wrapper records the child's own peak; the table's deltas."""

import json
import os
import stat
import subprocess
import sys

from benchmarks import input_memory


def test_wrapper_records_the_peak_rss_of_the_process_it_runs(tmp_path):
    wrapper = tmp_path / 'rss_python'
    wrapper.write_text(input_memory._WRAPPER.format(python=sys.executable))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    code = 'import numpy as np; a = np.ones(300 << 20, np.uint8); print(int(a.sum()))'
    proc = subprocess.run([str(wrapper), '-c', code, '--process_id=3'], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, JIMA_RSS_DIR=str(tmp_path)))
    assert proc.returncode == 0 and proc.stdout.strip() == str(300 << 20), proc.stderr
    record = json.loads((tmp_path / 'process_3.json').read_text())
    assert record['returncode'] == 0 and 300 << 10 < record['peak_kib'] < 600 << 10
    failing = subprocess.run([str(wrapper), '-c', 'raise SystemExit(7)', '--process_id=0'],
                             env=dict(os.environ, JIMA_RSS_DIR=str(tmp_path)), timeout=60)
    assert failing.returncode == 7  # the launcher sees the real exit status


def test_markdown_states_how_each_store_moved_between_the_sizes():
    rows = [dict(store=s, train_studies=n, all_studies=n + 20, image_mib=mib, wall_s=60.0,
                 peak_rss_mib=peaks, store_build_s=1.0 if s == 'disk' else None, steps=2)
            for s, n, mib, peaks in (('memory', 100, 10, [1000, 1010]),
                                     ('disk', 100, 10, [990, 995]),
                                     ('memory', 1000, 100, [1300, 1290]),
                                     ('disk', 1000, 100, [1000, 980]))]
    text = input_memory.markdown(dict(
        run_id='r', command='python -m benchmarks.input_memory',
        machine=dict(cpu_model='cpu', cpu_count=2, machine='x86_64', python='3.11',
                     date='2026-12-07'),
        image_size=128, crop=64, steps=2, prepare_s={'100': 5.0, '1000': 30.0}, rows=rows))
    moved = '100 -> 1000 train studies (images +90 MiB): peak RSS'
    assert f'- memory store, {moved} +300 / +280 MiB' in text
    assert f'- disk store, {moved} +10 / -15 MiB' in text
    assert '| 1000 / 1020 | 100 MiB | disk | 1000 MiB | 980 MiB | 60 s | 1.0 s |' in text
