"""tf.data input pipeline: prepared host arrays -> augmented, batched numpy dicts.

Images come from the split's array (data.image_store='memory': one TF constant) or, with the disk
store, from its `DiskImages` file, read a batch at a time inside the map (`tf.numpy_function`);
every other step is the same, so both stores give bit-identical batches.

With `train_images` (uint8 [K, N, V, H, W]: K drawings of each training study, from
`phantom_renders`, drawing 0 = `split.images`), training batches of epoch e take drawing e mod K;
evaluation always takes drawing 0. The drawings are the pipeline's only copy of the images.

Training draws two streams (Task 1's batch A, Task 2's batch B) from index sets that the
curriculum keeps (everything without a curriculum). Each stream's order is a pure function of
(seed, stream, epoch, kept set), and augmentation uses stateless random ops seeded by
(seed, epoch, example index), so the batch at any (epoch, step) can be rebuilt exactly: resuming
mid-epoch skips consumed batches by slicing the index order, without reading them.

Batch dict (leading dimension = this process's share of the global batch):
  images   uint8 [B, V, H, W]   grayscale views (normalised on device)
  tokens   int32 [B, max_len+2] BOS, report ids, EOS, PAD...
  entities int32 [B, E]         entity vocabulary ids, -1 padded
  abnormal int32 [B]            1 abnormal, 0 normal
  mask     float32 [B]          1 real example, 0 padding (evaluation's last batch)
  index    int32 [B]            example position in the split
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator, Optional

import numpy as np

from jima_jax.data.types import PreparedSplit
from jima_jax.text.symbols import BOS_ID, EOS_ID, PAD_ID

_THREADS = 2  # tf.data threads per pipeline: host work is small next to the train step


def _seed_ints(*parts) -> tuple[int, int]:
    """Two 31-bit ints from any parts; stable across processes and Python versions."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return (int.from_bytes(digest[:4], 'little') >> 1, int.from_bytes(digest[4:8], 'little') >> 1)


def decoder_tokens(split: PreparedSplit) -> np.ndarray:
    """[N, max_len + 2] int32: BOS + report ids + EOS, PAD after."""
    n, max_len = split.tokens.shape
    out = np.full((n, max_len + 2), PAD_ID, np.int32)
    out[:, 0] = BOS_ID
    out[:, 1:max_len + 1] = split.tokens
    out[np.arange(n), split.lengths + 1] = EOS_ID
    return out


@dataclasses.dataclass
class StreamSpec:
    """Which examples a training stream draws from in one epoch."""

    kept: np.ndarray  # int32 example positions
    stream: int  # 0 = Task 1 (batch A), 1 = Task 2 (batch B)


def epoch_order(kept: np.ndarray, length: int, *, seed: int, stream: int, epoch: int) -> np.ndarray:
    """`length` example positions: shuffled passes over `kept`, reshuffled at every wrap."""
    if len(kept) == 0:
        raise ValueError('a training stream has no examples to draw from (empty kept set).')
    parts, total, cycle = [], 0, 0
    while total < length:
        rng = np.random.default_rng(_seed_ints('order', seed, stream, epoch, cycle))
        parts.append(rng.permutation(np.asarray(kept, np.int32)))
        total += len(kept)
        cycle += 1
    return np.concatenate(parts)[:length]


def steps_per_epoch(streams: list[StreamSpec], batch_size: int, override: int = 0) -> int:
    """One pass over the largest kept set (the smaller stream wraps around)."""
    if override:
        return int(override)
    return max(1, max(len(s.kept) for s in streams) // batch_size)


class SplitPipeline:
    """Builds tf.data pipelines over one `PreparedSplit` (images in memory or on disk)."""

    def __init__(self, split: PreparedSplit, icfg, *, seed: int, process_index: int = 0,
                 process_count: int = 1, train_images: Optional[np.ndarray] = None):
        if split.images is None:
            raise ValueError('this split was prepared reports-only (data.reports_only=True); '
                             'training and evaluation need images. Prepare it with images.')
        self._on_disk = not isinstance(split.images, np.ndarray)
        if self._on_disk and not callable(getattr(split.images, 'gather', None)):
            raise TypeError(f'PreparedSplit.images is a {type(split.images).__name__}: expected a '
                            'numpy array or a DiskImages (jima_jax.data.image_store).')
        if train_images is not None:
            if self._on_disk:
                raise ValueError("train_images (several drawings per study) need the split's "
                                 "images in memory (data.image_store='memory').")
            if train_images.ndim != 5 or train_images.shape[1:] != split.images.shape:
                raise ValueError(f'train_images has shape {train_images.shape}; expected '
                                 f'[K, {", ".join(map(str, split.images.shape))}].')
        self.split = split
        self.num_drawings = 1 if train_images is None else int(train_images.shape[0])
        self._train_images = train_images  # dropped once its tf copy exists (`_constants`)
        self.icfg = icfg
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self._tokens = decoder_tokens(split)
        self._tensors = None

    def _constants(self):
        import tensorflow as tf
        if self._tensors is None:
            s = self.split
            images = s.images if self._train_images is None else self._train_images.reshape(
                (-1,) + s.images.shape[1:])  # [K * N, V, S, S], drawing k of study i at k * N + i
            self._tensors = dict(
                images=None if self._on_disk else tf.constant(images),
                tokens=tf.constant(self._tokens),
                entities=tf.constant(s.entities.astype(np.int32)),
                abnormal=tf.constant(s.abnormal.astype(np.int32)))
            self._train_images = None  # the tf constant holds the only copy the pipeline needs
        return self._tensors

    def _local(self, index_batches: np.ndarray) -> np.ndarray:
        """This process's contiguous slice of every global batch."""
        per = index_batches.shape[1] // self.process_count
        return index_batches[:, self.process_index * per:(self.process_index + 1) * per]

    def _dataset(self, index_batches: np.ndarray, mask_batches: np.ndarray, *, train: bool,
                 epoch: int, with_images: bool = True):
        import tensorflow as tf
        c = self._constants()
        size = int(self.icfg.image_size)
        stored = int(self.split.images.shape[-1])
        crop = train and self.icfg.augment and stored > size
        flip = train and getattr(self.icfg, 'flip', False)
        epoch_seed = _seed_ints('augment', self.seed, epoch)[0]

        def one_view(img, seed):
            img = img[..., None]
            if crop:
                img = tf.image.stateless_random_crop(img, (size, size, 1), seed=seed)
            elif stored != size:
                img = tf.image.resize(img, (size, size), method='bilinear')
                img = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
            if flip:
                img = tf.image.stateless_random_flip_left_right(img, seed=seed + 1)
            return img[..., 0]

        def gather_images(idx):
            if not self._on_disk:  # drawing (epoch mod K) in training, drawing 0 in evaluation
                drawing = epoch % self.num_drawings if train else 0
                return tf.gather(c['images'], idx + drawing * len(self.split))  # [B, V, S, S]
            images = tf.numpy_function(self.split.images.gather, [idx], tf.uint8)
            images.set_shape(idx.shape.concatenate(self.split.images.shape[1:]))
            return images

        def load(idx, mask):
            out = dict(tokens=tf.gather(c['tokens'], idx), entities=tf.gather(c['entities'], idx),
                       abnormal=tf.gather(c['abnormal'], idx), mask=mask, index=idx)
            if not with_images:
                return out
            images = gather_images(idx)
            if crop or flip or stored != size:
                b, v = tf.shape(images)[0], tf.shape(images)[1]
                flat = tf.reshape(images, (-1, stored, stored))
                view = tf.tile(tf.range(v), [b])
                example = tf.repeat(idx, v)
                seeds = tf.stack([tf.fill(tf.shape(example), epoch_seed),
                                  example * 16 + view], axis=1)
                flat = tf.map_fn(lambda a: one_view(a[0], a[1]), (flat, seeds),
                                 fn_output_signature=tf.TensorSpec((size, size), tf.uint8))
                images = tf.reshape(flat, (b, v, size, size))
            return dict(images=images, **out)

        ds = tf.data.Dataset.from_tensor_slices((index_batches.astype(np.int32),
                                                 mask_batches.astype(np.float32)))
        ds = ds.map(load, num_parallel_calls=_THREADS, deterministic=True)
        options = tf.data.Options()
        options.threading.private_threadpool_size = _THREADS
        options.deterministic = True
        # No autotuning: its model thread sleeps for a period that doubles while the epoch runs,
        # and destroying an epoch's iterator waited for it to wake up (16-20 s at each epoch end
        # of the demo on 2 CPU cores, about a fifth of its training time). Two threads are all
        # the private pool has anyway.
        options.autotune.enabled = False
        ds = ds.with_options(options)
        return ds.prefetch(max(int(self.icfg.prefetch), 1))

    def train_batches(self, stream: StreamSpec, *, epoch: int, num_steps: int,
                      start_step: int = 0, with_images: bool = True) -> Iterator[dict]:
        """Batches `start_step..num_steps-1` of `stream` in `epoch` (numpy dicts); without
        'images' when not `with_images` (a run that reads cached f_R features instead: the
        same batches, none of the image work)."""
        b = int(self.icfg.batch_size)
        order = epoch_order(stream.kept, num_steps * b, seed=self.seed, stream=stream.stream,
                            epoch=epoch).reshape(num_steps, b)[start_step:]
        order = self._local(order)
        yield from self._dataset(order, np.ones(order.shape, np.float32), train=True,
                                 epoch=epoch, with_images=with_images).as_numpy_iterator()

    def eval_batches(self, indices: Optional[np.ndarray] = None) -> Iterator[dict]:
        """Every example once, in order; the last batch padded (mask 0) to full size."""
        b = int(self.icfg.eval_batch_size)
        idx = (np.arange(len(self.split), dtype=np.int32) if indices is None
               else np.asarray(indices, np.int32))
        n = len(idx)
        if n == 0:
            return iter(())
        padded = -(-n // b) * b
        full = np.concatenate([idx, np.full(padded - n, idx[0], np.int32)]).reshape(-1, b)
        mask = (np.arange(padded) < n).astype(np.float32).reshape(-1, b)
        return self._dataset(self._local(full), self._local(mask), train=False,
                             epoch=0).as_numpy_iterator()
