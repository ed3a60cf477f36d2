r"""The `make demo` run: a few CPU-minutes of JIMA on the built-in phantom corpus.

  python -m jima_jax.main --config configs/demo.py --workdir runs/demo
  python -m jima_jax.main --config configs/demo.py:long --workdir runs/demo_long

':long' trains 4x the studies for 10 epochs (1,200 steps, about 20 minutes on 2 CPU cores): the
budget at which the from-scratch ResNet starts to read the phantom findings (README).
"""

from configs import default


def get_config(arg=None):
    if arg not in (None, '', 'long'):
        raise ValueError(f"configs/demo.py:{arg}: expected no variant or ':long'.")
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
    if arg == 'long':
        c.data.phantom.num_train = 1920
        c.train.num_epochs = 10
        c.optim.task1.lr = 1e-3
        c.optim.task1.decay_rate = 1.0
    return c
