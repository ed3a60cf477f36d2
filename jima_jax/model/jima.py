"""The JIMA model: f_R (visual extractor), f_E (entity extractor), fusion + f_T (report generator).

The three top-level attributes `visual`, `entity` and `report` are the parameter groups the two
tasks of Algorithm 1 update: Task 1 trains `visual` + `entity` on the entity loss, Task 2 trains
`report` (fusion layer + encoder-decoder) on the report loss with the other two frozen.

`model.entity_fusion=False` builds the model JIMA extends, R2Gen-style: no `entity` group, and the
fusion layer projects the patch features alone (Linear(d -> width) + ReLU + dropout, R2Gen's
att_embed), so every experiment can compare JIMA with the same network without f_E and q.

The forward chain is written once: `JIMA.encode` (f_R, then f_E and q) and `JIMA.report` (fusion +
f_T); `JIMA.__call__` chains them. The train step, the difficulty measurers and decoding all go
through `encode`, so they cannot drift apart.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jima_jax import kernel_choice
from jima_jax.model import resnet, transformer

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
    if name not in _DTYPES:
        raise ValueError(f'model.dtype={name!r}: expected one of {sorted(_DTYPES)}.')
    return _DTYPES[name]


class PatchLinearEntityHead(nnx.Module):
    """Paper f_E: q = sigmoid(mean over patches of X W_E). The mean commutes with the linear map,
    so it is computed on the patch mean (same value, P times fewer FLOPs)."""

    def __init__(self, feature_dim: int, vocab_size: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(feature_dim, vocab_size, rngs=rngs)

    def __call__(self, patches, pooled, rngs: Optional[nnx.Rngs] = None):
        del pooled, rngs  # no dropout in the paper's f_E
        return self.proj(jnp.mean(patches.astype(jnp.float32), axis=1))


class MLPEntityHead(nnx.Module):
    """Release f_E: pooled features (all views concatenated) -> hidden -> hidden -> |V|, with
    Dropout(`dropout`) after each ReLU as in the release (active only when given `rngs`)."""

    def __init__(self, pooled_dim: int, hidden: int, vocab_size: int, *, dropout: float = 0.0,
                 rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(pooled_dim, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.fc3 = nnx.Linear(hidden, vocab_size, rngs=rngs)
        self.dropout = dropout

    def __call__(self, patches, pooled, rngs: Optional[nnx.Rngs] = None):
        del patches
        drop = lambda x: transformer._dropout(x, self.dropout, rngs)
        h = drop(jax.nn.relu(self.fc1(pooled.astype(jnp.float32))))
        return self.fc3(drop(jax.nn.relu(self.fc2(h))))


def _rate(cfg: ml_collections.ConfigDict, key: str, default: float) -> float:
    rate = float(cfg.get(key, default))
    if not 0.0 <= rate < 1.0:
        raise ValueError(f'model.{key}={rate} must be in [0, 1).')
    return rate


def entity_fusion(cfg: ml_collections.ConfigDict) -> bool:
    """model.entity_fusion: JIMA (True) or the R2Gen baseline without f_E and q (False)."""
    value = cfg.get('entity_fusion', True)
    if not isinstance(value, bool):
        raise ValueError(f'model.entity_fusion={value!r}: expected True (JIMA) or False (the '
                         'R2Gen baseline).')
    return value


FUSIONS = ('cross', 'concat')


def fusion(cfg: ml_collections.ConfigDict) -> str:
    """model.fusion: how q meets the patches. 'cross' is the paper's S = concat(X, q) *
    concat(q, X); 'concat' feeds concat(X, q) itself. Both have d + |V| inputs to the fusion
    Linear. Configs saved before the key existed read as 'cross'."""
    value = cfg.get('fusion', 'cross')
    if value not in FUSIONS:
        raise ValueError(f"model.fusion={value!r}: expected 'cross' (the paper's cross-"
                         "concatenation product) or 'concat' (patches and q side by side).")
    return value


def fusion_dropout(cfg: ml_collections.ConfigDict) -> float:
    """Dropout after the fusion projection: model.fusion_dropout, or model.dropout when < 0."""
    rate = float(cfg.get('fusion_dropout', -1.0))
    return _rate(cfg, 'dropout', 0.0) if rate < 0 else _rate(cfg, 'fusion_dropout', 0.0)


class ReportGenerator(nnx.Module):
    """Fusion of patches and the entity distribution (model.fusion), then f_T (without entity
    fusion: the patches alone are projected, and every `q` is None)."""

    def __init__(self, feature_dim: int, vocab_size: int, cfg: ml_collections.ConfigDict,
                 max_len: int, *, rngs: nnx.Rngs):
        dtype = compute_dtype(cfg.dtype)
        fused = feature_dim + (vocab_size if entity_fusion(cfg) else 0)
        self.fusion = nnx.Linear(fused, cfg.width, dtype=dtype, rngs=rngs)
        self.transformer = transformer.EncoderDecoder(
            vocab_size=vocab_size, width=cfg.width, heads=cfg.num_heads, hidden=cfg.ffn_dim,
            encoder_layers=cfg.num_encoder_layers, decoder_layers=cfg.num_decoder_layers,
            dropout=cfg.dropout, max_len=max_len, dtype=dtype, rngs=rngs)
        self.fusion_dropout = fusion_dropout(cfg)
        self.fusion_kind = fusion(cfg)
        self.dtype = dtype

    def fuse(self, patches, q):
        """S = concat(X, q) * concat(q, X) per patch ('cross', the paper) or concat(X, q)
        ('concat'), then Linear + ReLU (+ dropout later); q None (the R2Gen baseline): Linear +
        ReLU of X."""
        if q is None:
            return jax.nn.relu(self.fusion(patches.astype(self.dtype)))
        q = jnp.broadcast_to(q[:, None, :].astype(patches.dtype),
                             patches.shape[:2] + q.shape[-1:])
        s = jnp.concatenate([patches, q], -1)
        if self.fusion_kind == 'cross':
            s = s * jnp.concatenate([q, patches], -1)
        return jax.nn.relu(self.fusion(s.astype(self.dtype)))

    def memory(self, patches, q, rngs: Optional[nnx.Rngs]):
        """Encoder output over the fused visual tokens."""
        x = transformer._dropout(self.fuse(patches, q), self.fusion_dropout, rngs)
        return self.transformer.encode(x, rngs)

    def __call__(self, patches, q, tokens_in, rngs: Optional[nnx.Rngs]):
        return self.transformer.decode(tokens_in, self.memory(patches, q, rngs), rngs)


class Encoding(NamedTuple):
    """What f_R and f_E make of a batch of studies: the input of fusion + f_T."""

    patches: jax.Array  # [B, V*h*w, d] patch features of all views
    pooled: jax.Array  # [B, V*d] float32 pooled features, views concatenated
    entity_logits: Optional[jax.Array]  # [B, |V|] float32; None without entity fusion
    q: Optional[jax.Array]  # sigmoid(entity_logits), the entity distribution fusion reads


class JIMA(nnx.Module):
    def __init__(self, cfg: ml_collections.ConfigDict, *, vocab_size: int, num_views: int,
                 max_len: int, rngs: nnx.Rngs):
        """`cfg` is `config.model`; `max_len` counts decoder positions (report tokens + 1)."""
        dtype = compute_dtype(cfg.dtype)
        self.visual = resnet.ResNet(
            cfg.backbone, in_channels=cfg.in_channels, base_width=resnet.base_width(cfg),
            freeze_bn_stats=cfg.freeze_bn_stats,
            kernels=kernel_choice.configured(cfg), remat=cfg.remat_backbone,
            dtype=dtype, rngs=rngs)
        d = self.visual.feature_dim
        self.entity_fusion = entity_fusion(cfg)
        if cfg.entity_head not in ('patch_linear', 'mlp'):
            raise ValueError(f"model.entity_head={cfg.entity_head!r}: expected 'patch_linear' "
                             "or 'mlp'.")
        if self.entity_fusion and cfg.entity_head == 'patch_linear':
            self.entity = PatchLinearEntityHead(d, vocab_size, rngs=rngs)
        elif self.entity_fusion:
            self.entity = MLPEntityHead(d * num_views, cfg.entity_mlp_dim, vocab_size,
                                        dropout=_rate(cfg, 'entity_dropout', 0.0), rngs=rngs)
        self.report = ReportGenerator(d, vocab_size, cfg, max_len, rngs=rngs)
        self.num_views = num_views
        self.vocab_size = vocab_size

    def features(self, images: jax.Array, train: bool, update_stats: bool = True):
        """images [B, V, H, W, C] (normalised) -> patches [B, V*h*w, d], pooled [B, V*d]."""
        b, v, h, w, c = images.shape
        fmap = self.visual(images.reshape(b * v, h, w, c), train, update_stats)
        _, fh, fw, d = fmap.shape
        patches = fmap.reshape(b, v * fh * fw, d)
        pooled = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2)).reshape(b, v * d)
        return patches, pooled

    def entity_logits(self, patches, pooled, rngs: Optional[nnx.Rngs] = None):
        """Entity logits [B, |V|]; `rngs` (training only) drives the mlp head's dropout."""
        if not self.entity_fusion:
            raise ValueError('model.entity_fusion=False: the R2Gen baseline has no entity '
                             'extractor f_E, so no entity logits.')
        return self.entity(patches, pooled, rngs)

    def encode(self, images: jax.Array, train: bool, update_stats: bool = True,
               rngs: Optional[nnx.Rngs] = None) -> Encoding:
        """f_R, then f_E and q = sigmoid(entity logits) (both None in the R2Gen baseline).

        images [B, V, H, W, C] normalised (`input_images`); `train`/`update_stats` as for
        `features`; `rngs` (training only) drives f_E's dropout."""
        patches, pooled = self.features(images, train, update_stats)
        return self.encode_features(patches, pooled, rngs)

    def encode_features(self, patches, pooled, rngs: Optional[nnx.Rngs] = None) -> Encoding:
        """f_E and q on f_R's output (`features`, or its cache: train.feature_cache)."""
        if not self.entity_fusion:
            return Encoding(patches, pooled, None, None)
        logits = self.entity_logits(patches, pooled, rngs).astype(jnp.float32)
        return Encoding(patches, pooled, logits, jax.nn.sigmoid(logits))

    def __call__(self, images, tokens_in, train: bool = False,
                 rngs: Optional[nnx.Rngs] = None):
        """Full forward: entity logits [B, V] (None without entity fusion) and report logits
        [B, L, V]."""
        enc = self.encode(images, train, rngs=rngs)
        return enc.entity_logits, self.report(enc.patches, enc.q, tokens_in, rngs)


def build(config: ml_collections.ConfigDict, vocab_size: int, *, abstract: bool = False) -> JIMA:
    """The JIMA module of a whole run config (shapes only when `abstract`, for restoring or
    loading parameters into it); the one place train, export and exported models build it."""
    def make():
        return JIMA(config.model, vocab_size=vocab_size, num_views=config.data.num_views,
                    max_len=config.data.max_len + 1, rngs=nnx.Rngs(params=config.seed))

    return nnx.eval_shape(make) if abstract else make()


def input_images(images: jax.Array, mcfg: ml_collections.ConfigDict,
                 icfg: ml_collections.ConfigDict) -> jax.Array:
    """uint8 [B, V, H, W] -> what `encode` reads: normalised with input.{mean, std}, C =
    model.in_channels, in model.dtype."""
    x = normalize_images(images, icfg.mean, icfg.std, mcfg.in_channels)
    return x.astype(compute_dtype(mcfg.dtype))


def normalize_images(images: jax.Array, mean, std, in_channels: int) -> jax.Array:
    """uint8 grayscale [B, V, H, W] -> float32 [B, V, H, W, C] normalised per channel.

    Grayscale is replicated over the C=3 channels of ImageNet backbones (the mean/std of each
    channel applied); C=1 uses the mean of the channel statistics.
    """
    x = images.astype(jnp.float32)[..., None] / 255.0
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    if in_channels == 1:
        return (x - jnp.mean(mean)) / jnp.mean(std)
    return (x - mean) / std
