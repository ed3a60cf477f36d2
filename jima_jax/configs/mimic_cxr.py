r"""MIMIC-CXR with the paper's hyper-parameters; ':release' = the authors' code (spec section 8).

  python -m jima_jax.main --config configs/mimic_cxr.py --mode prepare \
      --config.data.source_dir=/data/mimic_cxr --config.data.manual_dir=/data/mimic-cxr-jpg
  python -m jima_jax.main --config configs/mimic_cxr.py --workdir runs/mimic_cxr \
      --config.data.source_dir=/data/mimic_cxr --config.model.pretrained=/weights/resnet101.pth

MIMIC-CXR is credentialed (PhysioNet): the R2Gen-style annotation.json and the MIMIC-CXR-JPG files
must be supplied by the user; nothing is downloaded.
"""

from jima_jax.configs import default


def get_config(arg=None):
    variant = arg or 'paper'
    if variant not in ('paper', 'release'):
        raise ValueError(f"configs/mimic_cxr.py:{arg}: expected ':paper' (default) or ':release'.")
    c = default.get_config()
    c.data.name = 'mimic_cxr'
    c.data.num_views = 1
    c.data.min_count = 10
    c.data.max_len = 100
    c.data.resize = 'short_side'  # the release's aspect-preserving resize, then crop
    c.data.abnormal_from = 'labeler'  # normal iff No Finding
    c.input.batch_size = 16
    c.input.flip = True
    c.model.backbone = 'resnet101'
    c.model.fusion_dropout = 0.5  # R2Gen's and the release's; the paper gives none
    c.train.num_epochs = 60
    c.curriculum.schedule = 'jima'
    c.curriculum.warmup_epochs = 10  # 10 regular + 50 curriculum epochs
    default.select_by_val_bleu4(c)  # best by val BLEU-4, as R2Gen and the release pick it
    c.decode.beam_size = 3
    c.decode.max_len = 100
    if variant == 'release':
        default.use_release_recipe(c, decay_rate=0.8, decay_every_epochs=1)
    return c
