r"""The `make demo` run: a few CPU-minutes of JIMA on the built-in phantom corpus.

  python -m jima_jax.main --config configs/demo.py --workdir runs/demo
"""

from configs import default


def get_config(arg=None):
    del arg
    c = default.get_config()
    c.data.name = 'phantom'
    c.data.image_size = 72
    c.data.max_len = 48
    c.data.max_entities = 24
    c.data.phantom.num_train = 480
    c.data.phantom.num_val = 64
    c.data.phantom.num_test = 96
    c.input.batch_size = 16
    c.input.eval_batch_size = 32
    c.input.image_size = 64
    default.use_cpu_minutes_model(c)
    c.train.num_epochs = 6
    c.train.log_every_steps = 10
    c.decode.max_len = 48
    return c
