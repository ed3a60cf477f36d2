# Thin entry point: the config lives in jima_jax/configs/iu_xray.py (installed with the package), so
# `--config configs/iu_xray.py` here and `--config iu_xray` from any directory load the same one.
from jima_jax.configs.iu_xray import *  # noqa: F401,F403
from jima_jax.configs.iu_xray import __doc__, get_config  # noqa: F401
