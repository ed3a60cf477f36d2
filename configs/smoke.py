# Thin entry point: the config lives in jima_jax/configs/smoke.py (installed with the package), so
# `--config configs/smoke.py` here and `--config smoke` from any directory load the same one.
from jima_jax.configs.smoke import *  # noqa: F401,F403
from jima_jax.configs.smoke import __doc__, get_config  # noqa: F401
