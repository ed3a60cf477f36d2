r"""Seconds-long configuration for tests: tiny phantom data, ResNet-18, one-layer Transformer.

  python -m jima_jax.main --config configs/smoke.py --workdir runs/smoke
"""

from jima_jax.configs import default


def get_config(arg=None):
    del arg
    c = default.get_config()
    c.data.name = 'phantom'
    c.data.image_size = 40
    c.data.max_len = 24
    c.data.max_entities = 16
    c.data.phantom.num_train = 64
    c.data.phantom.num_val = 16
    c.data.phantom.num_test = 16
    c.input.batch_size = 8
    c.input.eval_batch_size = 8
    c.input.image_size = 32
    c.model.backbone = 'resnet18'
    c.model.width = 64
    c.model.num_heads = 4
    c.model.num_encoder_layers = 1
    c.model.num_decoder_layers = 1
    c.model.ffn_dim = 64
    c.model.entity_mlp_dim = 64
    c.optim.task1.lr = 1e-3
    c.optim.task2.lr = 1e-3
    c.train.num_epochs = 2
    c.train.log_every_steps = 2
    c.curriculum.warmup_epochs = 1
    c.decode.max_len = 24
    c.decode.beam_size = 2
    return c
