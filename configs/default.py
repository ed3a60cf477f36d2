# Thin entry point: the config lives in jima_jax/configs/default.py (installed with the package), so
# `--config configs/default.py` here and `--config default` from any directory load the same one.
from jima_jax.configs.default import *  # noqa: F401,F403
from jima_jax.configs.default import __doc__, get_config  # noqa: F401
