# Thin entry point: the config lives in jima_jax/configs/mimic_cxr.py (installed with the
# package), so `--config configs/mimic_cxr.py` here and `--config mimic_cxr` from any directory
# load the same one.
from jima_jax.configs.mimic_cxr import *  # noqa: F401,F403
from jima_jax.configs.mimic_cxr import __doc__, get_config  # noqa: F401
