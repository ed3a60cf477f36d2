"""data.image_store='disk': the same batches as the memory store, bit for bit (one process and
each process of two); stale, foreign, cut-short and half-written files; the config key; and a
process's peak RSS that stays flat when the dataset grows tenfold (while the memory store's grows).
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import ml_collections
import numpy as np
import pytest

from jima_jax import run_config
from jima_jax.data import image_store, pipeline, prepare
from jima_jax.data.types import SPLITS
from tests.conftest import REPO
from tests.data.test_builders import data_config, make_builder, tiny_studies


def _chunks(array, rows=3):
    for i in range(0, len(array), rows):
        yield array[i:i + rows]


def _random_images(n=7, views=2, size=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, views, size, size), dtype=np.uint8)


# ---------------------------------------------------------------------- the file and its reader
def test_disk_images_index_like_the_array(tmp_path):
    want = _random_images()
    disk = image_store.write_store(tmp_path / 'images-train.u8', want.shape, _chunks(want), 'src')
    assert (disk.shape, disk.dtype, disk.ndim, len(disk)) == (want.shape, np.uint8, 4, 7)
    assert disk.nbytes == want.nbytes
    for key in (3, -1, np.int32(2), slice(None), slice(1, 6, 2), slice(None, None, -1),
                np.array([4, 4, 0, 1, 2, 6]), [5, 1], np.array([[0, 1], [3, 2]]),
                np.arange(7) % 2 == 0, (2, 1), (slice(0, 3), 0), (np.array([1, 3]), 1, 2),
                (Ellipsis, 0), np.zeros(0, np.int64)):
        np.testing.assert_array_equal(disk[key], want[key], err_msg=repr(key))
    np.testing.assert_array_equal(disk.gather(np.array([6, 0, 0], np.int32)), want[[6, 0, 0]])
    part = disk.subset(np.array([5, 2, 3]))  # lazy: another view of the same file
    assert isinstance(part, image_store.DiskImages) and part.shape == (3, 2, 5, 5)
    np.testing.assert_array_equal(part[[2, 0]], want[[3, 5]])
    again = pickle.loads(pickle.dumps(part))  # tf.data / multiprocessing may copy it
    np.testing.assert_array_equal(again[:], want[[5, 2, 3]])
    with pytest.raises(IndexError, match='out of range'):
        disk[7]
    with pytest.raises(IndexError, match='integers'):
        disk[np.array([0.5])]
    with pytest.raises(TypeError, match="read all 7 rows.*image_store='memory'"):
        np.asarray(disk)
    # the rows start on a page boundary after the JSON header
    header = image_store.read_header(disk.path)
    assert header['offset'] % 4096 == 0 and header['shape'] == [7, 2, 5, 5]
    assert disk.path.stat().st_size == header['offset'] + want.nbytes


def test_stale_foreign_and_cut_short_files_are_rebuilt(tmp_path):
    want = _random_images(seed=1)
    path = tmp_path / 'images-val.u8'
    built = []

    def batches():
        built.append(1)
        return _chunks(want)

    image_store.open_or_build(path, want.shape, 'split-A', batches)
    assert image_store.open_or_build(path, want.shape, 'split-A', batches)[:].tobytes() == (
        want.tobytes()) and len(built) == 1  # valid: read, not rebuilt
    other = _random_images(seed=2)
    image_store.write_store(path, other.shape, _chunks(other), 'split-B')  # another split's file
    with pytest.raises(ValueError, match='another tfds split'):
        image_store.open_store(path, want.shape, 'split-A')
    np.testing.assert_array_equal(image_store.open_or_build(path, want.shape, 'split-A',
                                                            batches)[:], want)
    assert len(built) == 2
    for damage, match in ((lambda: path.write_bytes(os.urandom(5000)), 'not a jima_jax image'),
                          (lambda: os.truncate(path, path.stat().st_size - 1), 'bytes, its header'),
                          (lambda: image_store.write_store(path, (3,) + want.shape[1:],
                                                           _chunks(want[:3]), 'split-A'),
                           r'expected uint8 \[7,')):
        damage()
        with pytest.raises(ValueError, match=match):
            image_store.open_store(path, want.shape, 'split-A')
        np.testing.assert_array_equal(image_store.open_or_build(path, want.shape, 'split-A',
                                                                batches)[:], want)
    assert len(built) == 5
    # a batch list that does not add up is refused, and nothing is renamed into place
    with pytest.raises(ValueError, match='6 rows written, 7 announced'):
        image_store.write_store(tmp_path / 'short.u8', want.shape, _chunks(want[:6]), 's')
    assert not list(tmp_path.glob('*short*'))


def test_interrupted_write_leaves_no_half_file(tmp_path):
    want = _random_images(n=40, size=64)
    path = tmp_path / 'images-train.u8'

    def failing():
        yield want[:10]
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of the write

    with pytest.raises(KeyboardInterrupt):
        image_store.write_store(path, want.shape, failing(), 'src')
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no final name, no temporary
    # A writer killed outright (SIGKILL: no cleanup runs) leaves its temporary file only.
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from jima_jax.data import image_store
        def rows():
            yield np.zeros((10, 2, 64, 64), np.uint8)
            os.kill(os.getpid(), signal.SIGKILL)
        image_store.write_store({str(path)!r}, (40, 2, 64, 64), rows(), 'src')
    """)
    proc = subprocess.run([sys.executable, '-c', code], cwd=str(REPO), capture_output=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith('.images-train.u8.') and left[0].endswith('.tmp')
    with pytest.raises(FileNotFoundError):
        image_store.open_store(path, want.shape, 'src')
    # The next build writes the file; a temporary unchanged for DEAD_TEMP_S is the dead writer's.
    dead = tmp_path / left[0]
    old = time.time() - image_store.DEAD_TEMP_S - 1
    os.utime(dead, (old, old))
    store = image_store.open_or_build(path, want.shape, 'src', lambda: _chunks(want, 16))
    np.testing.assert_array_equal(store[:], want)
    assert not dead.exists()


def test_a_read_only_prepared_directory_is_named_with_the_fix(tmp_path, monkeypatch):
    real_open = os.open

    def deny_lock(path, *args, **kwargs):  # root ignores chmod: refuse the lock file instead
        if str(path).endswith('.lock'):
            raise PermissionError(13, 'Permission denied', str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, 'open', deny_lock)
    with pytest.raises(ValueError, match=r"is not writable.*data.data_dir.*image_store='memory'"):
        image_store.open_or_build(tmp_path / 'images-train.u8', (2, 1, 2, 2), 's', lambda: [])


# ---------------------------------------------------------------------- through load_prepared
@pytest.fixture(scope='module')
def tiny_prepared(tmp_path_factory):
    """The in-test tfds source (8 train, 0 val, 2 test studies), loaded with both stores."""
    tmp = tmp_path_factory.mktemp('image_store')
    builder = make_builder(tiny_studies(np.random.default_rng(0)))
    cfg = data_config(tmp, name='tiny_source', num_views=2, image_size=16, min_count=1,
                      max_len=6)
    memory = prepare.load_prepared(cfg, builder_cls=builder)
    cfg.image_store = 'disk'
    disk = prepare.load_prepared(cfg, builder_cls=builder)
    return cfg, builder, memory, disk


def _icfg():
    return ml_collections.ConfigDict(dict(batch_size=4, eval_batch_size=4, image_size=12,
                                          augment=True, flip=True, prefetch=2))


def _assert_same_batches(got, want):
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_memory_and_disk_stores_give_bit_identical_batches(tiny_prepared):
    cfg, _, memory, disk = tiny_prepared
    path = prepare.prepared_dir(cfg)
    assert sorted(p.name for p in path.glob('images-*.u8')) == ['images-test.u8',
                                                                 'images-train.u8']
    for name in SPLITS:  # val is empty: no file, an empty array
        m, d = memory.splits[name], disk.splits[name]
        assert d.images.shape == m.images.shape and len(d) == len(m)
        np.testing.assert_array_equal(d.images[:], m.images)
        for field in ('ids', 'reports', 'tokens', 'lengths', 'entities', 'abnormal', 'labels'):
            np.testing.assert_array_equal(getattr(d, field), getattr(m, field), err_msg=field)
    assert isinstance(disk.splits['train'].images, image_store.DiskImages)
    stream = pipeline.StreamSpec(np.arange(8, dtype=np.int32), 1)
    for count in (1, 2):
        for index in range(count):
            pipes = [pipeline.SplitPipeline(ds.splits['train'], _icfg(), seed=5,
                                            process_index=index, process_count=count)
                     for ds in (memory, disk)]
            # 5 steps over 8 studies: the order wraps; crops and flips differ per epoch
            train = [list(p.train_batches(stream, epoch=2, num_steps=5)) for p in pipes]
            _assert_same_batches(*train)
            assert train[0][0]['images'].shape == (4 // count, 2, 12, 12)
            evals = [list(pipeline.SplitPipeline(ds.splits['test'], _icfg(), seed=5,
                                                 process_index=index, process_count=count)
                          .eval_batches()) for ds in (memory, disk)]
            _assert_same_batches(*evals)  # resized, padded (mask 0) to the batch size
    sub = disk.splits['train'].subset(np.array([6, 1]))
    assert isinstance(sub.images, image_store.DiskImages)
    np.testing.assert_array_equal(sub.images[:], memory.splits['train'].images[[6, 1]])


def test_a_stale_store_file_is_rebuilt_on_load(tiny_prepared):
    cfg, builder, memory, _ = tiny_prepared
    path = image_store.store_path(prepare.prepared_dir(cfg), 'train')
    header = image_store.read_header(path)
    shape = header['shape']
    # the same size and layout, but written from another split: must not be read
    image_store.write_store(path, shape, [np.zeros(shape, np.uint8)], 'f' * 16)
    inode = path.stat().st_ino
    disk = prepare.load_prepared(cfg, builder_cls=builder)
    assert path.stat().st_ino != inode and image_store.read_header(path) == header
    np.testing.assert_array_equal(disk.splits['train'].images[:], memory.splits['train'].images)


def test_image_store_key_is_validated_and_free():
    cfg = data_config(REPO / 'nowhere', image_store='ram')
    with pytest.raises(ValueError, match=r"data.image_store='ram': expected 'memory' .* or "
                                         r"'disk'.*--config.data.image_store="):
        prepare.load_prepared(cfg)
    with pytest.raises(ValueError, match=r"data.image_store='ram'"):
        prepare.prepare_dataset(cfg)  # before preparing anything
    assert not (REPO / 'nowhere').exists()
    assert data_config(REPO / 'nowhere').image_store == 'memory'
    # evaluating with another store than training is fine: not a key that defines the run
    assert not run_config.governed('data.image_store') and run_config.governed('data.max_len')


# ---------------------------------------------------------------------- peak memory
# One process, the dataset growing from N to 10N studies: ru_maxrss is the process's high-water
# mark, so the 10N phase raises it only by what it needs beyond the N phase's peak. One process
# (not one per size) because importing TensorFlow is most of the time on 2 shared cores.
_RSS_PROBE = textwrap.dedent('''
    import gc, json, os, sys
    import ml_collections, numpy as np
    from jima_jax.data import image_store, pipeline
    from jima_jax.data.types import PreparedSplit
    from jima_jax.text.symbols import NUM_OBSERVATIONS

    root, sizes = sys.argv[1], [int(a) for a in sys.argv[2:]]
    row = (2, 224, 224)  # 98 KiB a study

    def rows(n):  # row i is filled with i % 251: checkable after cropping
        for s in range(0, n, 32):
            i = np.arange(s, min(n, s + 32))
            yield np.broadcast_to((i % 251).astype(np.uint8)[:, None, None, None],
                                  (len(i),) + row)

    stores = {n: image_store.write_store(os.path.join(root, f'images-{n}.u8'), (n,) + row,
                                         rows(n), 'probe') for n in sizes}

    def split(images):
        n = len(images)
        return PreparedSplit(
            ids=np.arange(n).astype(str), reports=np.full(n, 'r'), images=images,
            tokens=np.ones((n, 4), np.int32), lengths=np.full(n, 4, np.int32),
            entities=np.ones((n, 2), np.int32), abnormal=np.zeros(n, np.int8),
            labels=np.zeros((n, NUM_OBSERVATIONS), np.int8))

    def iterate(images, steps):
        """Process 0 of 2 (its half of each global batch of 16), random 64 px crops."""
        icfg = ml_collections.ConfigDict(dict(batch_size=16, eval_batch_size=16, image_size=64,
                                              augment=True, flip=False, prefetch=2))
        pipe = pipeline.SplitPipeline(split(images), icfg, seed=0, process_index=0,
                                      process_count=2)
        stream = pipeline.StreamSpec(np.arange(len(images), dtype=np.int32), 0)
        seen = 0
        for batch in pipe.train_batches(stream, epoch=0, num_steps=steps):
            want = (batch['index'] % 251).astype(np.uint8)[:, None, None, None]
            assert (batch['images'] == want).all() and batch['images'].shape[0] == 8
            seen += 8
        return seen

    def peak_mib():  # VmHWM: this process's own peak; ru_maxrss can carry over the peak of
        # the parent it was forked from (a pytest worker of several GB) across the exec
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024

    out = dict(image_mib={n: stores[n].nbytes / 2**20 for n in sizes}, seen={}, disk={},
               memory={})
    for n in sizes:  # a whole epoch: every row of the file is read once
        out['seen'][n] = iterate(stores[n], n // 16)
        out['disk'][n] = peak_mib()
    for n in sizes:  # the memory store: the array load_prepared builds, then a few batches
        memory = np.empty((n,) + row, np.uint8)
        for s in range(0, n, 256):
            memory[s:s + 256] = stores[n][s:s + 256]
        iterate(memory, 4)
        out['memory'][n] = peak_mib()
        del memory
        gc.collect()
    print(json.dumps(out))
''')


def test_peak_rss_is_flat_with_the_disk_store_and_grows_with_the_memory_store(tmp_path):
    """Process 0 of 2 reads a whole epoch of train batches over N then 10N studies (29 MiB, then
    287 MiB of images). Disk store: the 10N epoch raises the peak RSS by less than 24 MiB
    (measured: about 7); memory store: by more than the 10N images themselves (measured: about
    4x them: the array and TensorFlow's copies of it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL='2',
               CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, '-c', _RSS_PROBE, str(tmp_path), '300', '3000'],
                          cwd=str(REPO), capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(out)
    small, large = '300', '3000'
    assert out['seen'] == {small: 300 // 16 * 8, large: 3000 // 16 * 8}
    grown = out['image_mib'][large] - out['image_mib'][small]
    assert grown > 250
    assert out['disk'][large] - out['disk'][small] < 24, out
    assert out['memory'][large] - out['memory'][small] > grown, out
