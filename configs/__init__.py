"""Thin entry points to `jima_jax.configs` (kept so `--config configs/<name>.py` and
`from configs import <name>` work from the repository root)."""
