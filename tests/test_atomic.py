"""atomic: a failed write leaves the old file; a finished one has the usual permissions."""

import os
import stat

import pytest

from jima_jax import atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / 'results.json'
    atomic.write_text(target, 'old')

    def explode(tmp):
        with open(tmp, 'w') as f:
            f.write('half of the new')
        raise RuntimeError('killed mid-write')

    with pytest.raises(RuntimeError):
        atomic.write_with(target, explode)
    assert target.read_text() == 'old'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['results.json']


def test_written_file_follows_the_umask_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic.write_bytes(tmp_path / 'sub' / 'table.bin', b'\x00\x01')
    finally:
        os.umask(old)
    assert path.read_bytes() == b'\x00\x01'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
