"""ResNet-18/34/50/101 backbones (f_R) with torchvision's module layout, NHWC.

Attribute names mirror torchvision (`conv1`, `bn1`, `layer1[0].conv2`, `downsample_conv`, ...) so
that `load_torchvision_state` maps a torchvision state dict onto this module by name. The
classification head is omitted: JIMA uses the last convolutional feature map.
"""

from __future__ import annotations

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from jima_jax import kernel_choice
from jima_jax.model import layers, xla_cpu
from jima_jax.model.layers import BatchNorm, max_pool_3x3_s2

# name -> (block type, blocks per stage)
ARCHITECTURES = {
    'resnet18': ('basic', (2, 2, 2, 2)),
    'resnet34': ('basic', (3, 4, 6, 3)),
    'resnet50': ('bottleneck', (3, 4, 6, 3)),
    'resnet101': ('bottleneck', (3, 4, 23, 3)),
}
_STAGE_MULTIPLIERS = (1, 2, 4, 8)  # stage widths are base_width times these (torchvision: 64)
TORCHVISION_WIDTH = 64


def feature_dim(name: str, base_width: int = TORCHVISION_WIDTH) -> int:
    """Channels of the final feature map (512 for basic blocks, 2048 for bottlenecks at
    torchvision's base width 64)."""
    block, _ = _architecture(name)
    return base_width * 8 * (1 if block == 'basic' else 4)


def base_width(mcfg) -> int:
    """`model.backbone_width`, with torchvision's 64 for configs written before the key existed;
    a clear error for anything that is not a positive multiple of 8."""
    width = mcfg.get('backbone_width', TORCHVISION_WIDTH)
    if not isinstance(width, int) or isinstance(width, bool) or width < 8 or width % 8:
        raise ValueError(f'model.backbone_width={width!r}: expected a positive multiple of 8 '
                         f'(torchvision and pre-trained weights: {TORCHVISION_WIDTH}).')
    return width


def _architecture(name: str):
    if name not in ARCHITECTURES:
        raise ValueError(f'model.backbone={name!r}: expected one of {sorted(ARCHITECTURES)}.')
    return ARCHITECTURES[name]


# model.kernels (resolved) -> (convolution module, what a block does with its output).
_KERNELS = {'portable': (layers.Conv2d, layers.keep),
            'xla_cpu': (xla_cpu.Conv2d, xla_cpu.materialize)}


def _block_output(kernels: str, y: jax.Array) -> jax.Array:
    return _KERNELS[kernels][1](y)


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, in_ch, width, stride, *, conv, bn, kernels: str = 'portable'):
        self.kernels = kernels
        self.conv1 = conv(in_ch, width, 3, stride)
        self.bn1 = bn(width)
        self.conv2 = conv(width, width, 3, 1)
        self.bn2 = bn(width)
        self.has_downsample = stride != 1 or in_ch != width
        if self.has_downsample:
            self.downsample_conv = conv(in_ch, width, 1, stride)
            self.downsample_bn = bn(width)

    def __call__(self, x, train, update_stats):
        y = jax.nn.relu(self.bn1(self.conv1(x), train, update_stats))
        y = self.bn2(self.conv2(y), train, update_stats)
        if self.has_downsample:
            x = self.downsample_bn(self.downsample_conv(x), train, update_stats)
        return _block_output(self.kernels, jax.nn.relu(x + y))


class Bottleneck(nnx.Module):
    """torchvision's v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, in_ch, width, stride, *, conv, bn, kernels: str = 'portable'):
        self.kernels = kernels
        out_ch = width * 4
        self.conv1 = conv(in_ch, width, 1, 1)
        self.bn1 = bn(width)
        self.conv2 = conv(width, width, 3, stride)
        self.bn2 = bn(width)
        self.conv3 = conv(width, out_ch, 1, 1)
        self.bn3 = bn(out_ch)
        self.has_downsample = stride != 1 or in_ch != out_ch
        if self.has_downsample:
            self.downsample_conv = conv(in_ch, out_ch, 1, stride)
            self.downsample_bn = bn(out_ch)

    def __call__(self, x, train, update_stats):
        y = jax.nn.relu(self.bn1(self.conv1(x), train, update_stats))
        y = jax.nn.relu(self.bn2(self.conv2(y), train, update_stats))
        y = self.bn3(self.conv3(y), train, update_stats)
        if self.has_downsample:
            x = self.downsample_bn(self.downsample_conv(x), train, update_stats)
        return _block_output(self.kernels, jax.nn.relu(x + y))


class ResNet(nnx.Module):
    """Images [N, H, W, C] (normalised) -> feature map [N, H/32, W/32, feature_dim].

    `kernels` is `model.kernels`: 'auto' is resolved here, once, to 'portable' or 'xla_cpu'
    (`self.kernels`); the layers it builds run that kernel set whatever the backend.
    `base_width` is the stem's and first stage's channel count (torchvision: 64); narrower
    backbones cost about (base_width / 64)^2 of the FLOPs, for from-scratch CPU budgets."""

    def __init__(self, name: str, *, in_channels: int = 3, base_width: int = TORCHVISION_WIDTH,
                 freeze_bn_stats: bool = False, kernels: str = 'auto', remat: bool = False,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        block_type, depths = _architecture(name)
        block_cls = BasicBlock if block_type == 'basic' else Bottleneck
        self.kernels = kernel_choice.resolve(kernels)
        conv_cls = _KERNELS[self.kernels][0]

        def conv(cin, cout, k, stride):
            return conv_cls(cin, cout, k, stride, dtype=dtype, rngs=rngs)

        def bn(ch):
            return BatchNorm(ch, frozen=freeze_bn_stats)

        self.name = name
        self.remat = remat
        self.conv1 = conv(in_channels, base_width, 7, 2)
        self.bn1 = bn(base_width)
        in_ch = base_width
        stages = []
        widths = [base_width * m for m in _STAGE_MULTIPLIERS]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for i in range(depth):
                stride = 2 if (i == 0 and stage > 0) else 1
                blocks.append(block_cls(in_ch, width, stride, conv=conv, bn=bn,
                                        kernels=self.kernels))
                in_ch = width * block_cls.expansion
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = in_ch

    def __call__(self, x: jax.Array, train: bool, update_stats: bool = True) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x), train, update_stats))
        x = max_pool_3x3_s2(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                if self.remat:
                    x = nnx.remat(lambda b, y: b(y, train, update_stats))(block, x)
                else:
                    x = block(x, train, update_stats)
        return x


def _torchvision_targets(resnet: ResNet) -> dict[str, nnx.Variable]:
    """torchvision state-dict key -> the variable of `resnet` it fills."""
    targets: dict[str, nnx.Variable] = {}

    def conv(prefix, module):
        targets[f'{prefix}.weight'] = module.kernel

    def bn(prefix, module):
        targets.update({f'{prefix}.weight': module.scale, f'{prefix}.bias': module.bias,
                        f'{prefix}.running_mean': module.mean,
                        f'{prefix}.running_var': module.var})

    conv('conv1', resnet.conv1)
    bn('bn1', resnet.bn1)
    for s, stage in enumerate((resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)):
        for i, block in enumerate(stage):
            p = f'layer{s + 1}.{i}'
            for j in (1, 2, 3):
                if hasattr(block, f'conv{j}'):
                    conv(f'{p}.conv{j}', getattr(block, f'conv{j}'))
                    bn(f'{p}.bn{j}', getattr(block, f'bn{j}'))
            if block.has_downsample:
                conv(f'{p}.downsample.0', block.downsample_conv)
                bn(f'{p}.downsample.1', block.downsample_bn)
    return targets


def torchvision_state(resnet: ResNet) -> dict[str, np.ndarray]:
    """The backbone as a torchvision state dict (OIHW kernels, no classifier): the inverse of
    `load_torchvision_state`, so a pre-trained backbone travels as an ordinary weight file."""
    state = {}
    for key, var in _torchvision_targets(resnet).items():
        value = np.asarray(var[...], np.float32)
        state[key] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value  # HWIO -> OIHW
    return state


def _strip_prefix(state: dict) -> dict:
    """Accept state dicts saved from wrappers ('module.', 'backbone.', ...)."""
    if 'conv1.weight' in state:
        return state
    for key in state:
        if (key.endswith('.conv1.weight')
                and key[:-len('conv1.weight')] + 'layer1.0.conv1.weight' in state):
            prefix = key[:-len('conv1.weight')]
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_torchvision_state(resnet: ResNet, state: dict, source: str = 'state dict') -> None:
    """Copies a torchvision ResNet state dict into `resnet` in place.

    Convolutions are transposed OIHW -> HWIO; a 3-channel stem is summed over its input channels
    for a 1-channel model (the usual grayscale adaptation, exact for replicated gray input); the
    classifier (`fc.*`) and `num_batches_tracked` are ignored. Missing, unexpected or misshapen
    entries raise an error naming them.
    """
    state = _strip_prefix(state)
    targets = _torchvision_targets(resnet)
    ignored = {k for k in state if k.startswith('fc.') or k.endswith('num_batches_tracked')}
    unexpected = sorted(set(state) - set(targets) - ignored)
    missing = sorted(set(targets) - set(state))
    if unexpected or missing:
        raise ValueError(
            f'{source}: does not match torchvision {resnet.name} (missing {missing[:5]}'
            f'{"..." if len(missing) > 5 else ""}, unexpected {unexpected[:5]}'
            f'{"..." if len(unexpected) > 5 else ""}). Check model.backbone against the file.')
    for key, var in targets.items():
        value = np.asarray(state[key], dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            want_in = var[...].shape[2]
            if key == 'conv1.weight' and value.shape[2] != want_in:
                if want_in == 1:
                    value = value.sum(axis=2, keepdims=True)
                elif value.shape[2] == 1:
                    value = np.repeat(value, want_in, axis=2) / want_in
        if value.shape != var[...].shape:
            raise ValueError(f'{source}: {key} has shape {value.shape} after transposition, the '
                             f'model expects {var[...].shape}. Check model.backbone/in_channels/'
                             'backbone_width.')
        var[...] = jnp.asarray(value)
