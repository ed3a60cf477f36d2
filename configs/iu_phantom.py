# Thin entry point: the config lives in jima_jax/configs/iu_phantom.py (installed with the
# package), so `--config configs/iu_phantom.py` here and `--config iu_phantom` from any directory
# load the same one.
from jima_jax.configs.iu_phantom import *  # noqa: F401,F403
from jima_jax.configs.iu_phantom import __doc__, get_config  # noqa: F401
