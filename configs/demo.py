# Thin entry point: the config lives in jima_jax/configs/demo.py (installed with the package), so
# `--config configs/demo.py` here and `--config demo` from any directory load the same one.
from jima_jax.configs.demo import *  # noqa: F401,F403
from jima_jax.configs.demo import __doc__, get_config  # noqa: F401
