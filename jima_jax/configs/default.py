r"""Every configuration key of jima_jax, with its default and what it does.

Other configs start from this one and override a few keys. Run it (phantom data, paper model):

  python -m jima_jax.main --config configs/default.py --workdir runs/default

Any key can be overridden on the command line, e.g. `--config.input.batch_size=8`. The config is
locked: a misspelt key fails with a suggestion instead of being silently added.
"""

import ml_collections


def get_config(arg=None):
    """Returns the full default config (the paper's IU X-ray hyper-parameters, phantom data)."""
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0  # every random stream (init, dropout, shuffling, augmentation) derives from it

    # ---------------------------------------------------------------- data (prepare stage)
    c.data = ml_collections.ConfigDict()
    c.data.name = 'phantom'  # phantom | iu_phantom | iu_xray | mimic_cxr
    # raw data: R2Gen layout (annotation.json + images/); '' = source default
    c.data.source_dir = ''
    # downloaded archives (OpenI .tgz, MIMIC-CXR-JPG); never fetched in tests
    c.data.manual_dir = ''
    c.data.data_dir = ''  # where prepared datasets live; '' = $JIMA_DATA_DIR or ~/.cache/jima_jax
    c.data.reports_only = False  # prepare text-side only (no images available)
    c.data.num_views = 2  # views per study fed to the model (IU X-ray 2, MIMIC-CXR 1)
    c.data.image_size = 256  # short side images are re-encoded to at prepare time
    # square: each view squashed to image_size x image_size | short_side: the short side scaled to
    # image_size (aspect kept), the central square kept (the release's Resize(256) + crop; IU X-ray
    # and MIMIC-CXR presets). Training then random-crops input.image_size from it either way.
    c.data.resize = 'square'
    c.data.tokenizer = 'word'  # word (R2Gen vocabulary) | unigram (sentencepiece subwords)
    # word mode: keep training tokens seen at least this often (IU 3, MIMIC 10)
    c.data.min_count = 3
    c.data.vocab_size = 0  # unigram mode: target vocabulary size
    c.data.max_len = 60  # report tokens kept (IU 60, MIMIC 100), before bos/eos
    c.data.max_entities = 48  # entity tokens kept per report (the Task-1 target is their multi-hot)
    c.data.entities = 'lexicon'  # lexicon (own clinical lexicon) | annotation ('tokens' field)
    c.data.abnormal_from = 'dataset'  # dataset (IU: MeSH normal) | labeler (No Finding)
    c.data.skip_bad_studies = False  # skip (and count) studies with an empty report / bad image
    # memory: every image of every split in host RAM, in each process (MIMIC-CXR 256 px: ~18 GB) |
    # disk: each split's images in one raw file beside the prepared dataset (written at the first
    # load), each process reading only the rows of its own batches (image memory: those batches)
    c.data.image_store = 'memory'
    c.data.openi_urls = ml_collections.ConfigDict()  # IU X-ray --download only
    c.data.openi_urls.reports = ''  # '' = the public OpenI NLMCXR_reports.tgz address
    c.data.openi_urls.png = ''  # '' = the public OpenI NLMCXR_png.tgz address
    c.data.phantom = ml_collections.ConfigDict()  # the built-in synthetic corpus
    c.data.phantom.num_train = 2069
    c.data.phantom.num_val = 296
    c.data.phantom.num_test = 590
    c.data.phantom.seed = 0
    c.data.phantom.normal_share = 1 / 3  # share of normal studies (IU X-ray MeSH: about 1/3)
    # images drawn per training study (phantom and iu_phantom): K > 1 shows drawing (epoch mod K),
    # the same findings on another patient, so a small corpus cannot be memorised by its pictures
    # (jima_jax/data/phantom_renders.py; drawn at the first run, cached beside the prepared data)
    c.data.phantom.train_renders = 1

    # ---------------------------------------------------------------- input pipeline
    c.input = ml_collections.ConfigDict()
    c.input.batch_size = 16  # global batch (studies) of each task's stream
    c.input.eval_batch_size = 16
    c.input.image_size = 224  # model input side (random crop in training, resize in eval)
    c.input.augment = True  # random crop in training (R2Gen: resize 256, crop 224)
    c.input.flip = False  # random horizontal flip (R2Gen does it; it breaks left/right words)
    c.input.prefetch = 2  # batches prepared ahead on the host
    c.input.mean = (0.485, 0.456, 0.406)  # ImageNet normalisation (pretrained backbones expect it)
    c.input.std = (0.229, 0.224, 0.225)

    # ---------------------------------------------------------------- model
    c.model = ml_collections.ConfigDict()
    c.model.backbone = 'resnet101'  # resnet18 | resnet34 | resnet50 | resnet101
    # torchvision .pth / .safetensors file; '' = random init (never downloaded)
    c.model.pretrained = ''
    # channels of f_R's stem and first stage (stages: x1, x2, x4, x8); torchvision and pre-trained
    # weights: 64; narrower = about (w/64)^2 of the backbone FLOPs, for from-scratch CPU budgets
    c.model.backbone_width = 64
    c.model.in_channels = 3  # 3 = grayscale replicated (ImageNet weights), 1 = grayscale input
    c.model.freeze_bn_stats = False  # use running BatchNorm statistics also in training
    # auto (xla_cpu when JAX computes on the CPU, else portable) | portable (plain lax/einsum) |
    # xla_cpu (XLA:CPU workarounds, jima_jax/model/xla_cpu.py); same function, other rounding
    c.model.kernels = 'auto'
    c.model.remat_backbone = False  # recompute backbone activations in the backward pass (memory)
    # False = the R2Gen baseline JIMA builds on (ablation): no f_E, no q, the fusion layer projects
    # the patches alone; one task (the report loss trains f_R with optimizer alpha's settings and
    # fusion + f_T with beta's); curricula rank by k2 only. Everything else stays as configured.
    c.model.entity_fusion = True
    # How q meets the patches X; both feed d + |V| inputs to the fusion Linear (same parameters):
    # cross (paper: concat(X, q) * concat(q, X), where every X channel below |V| is multiplied by
    # the q of one vocabulary token, so with d < |V| every channel is gated, most by tokens that
    # are never entities) | concat (concat(X, q): X reaches f_T whole, q beside it).
    c.model.fusion = 'cross'
    # patch_linear (paper) | mlp (release: pooled->512->512->V)
    c.model.entity_head = 'patch_linear'
    c.model.entity_mlp_dim = 512
    c.model.width = 512  # Transformer width
    c.model.num_heads = 8
    c.model.num_encoder_layers = 3
    c.model.num_decoder_layers = 3
    c.model.ffn_dim = 512
    c.model.dropout = 0.1  # Transformer dropout (spec section 3)
    # Dropout after the fusion Linear + ReLU; < 0 = model.dropout. R2Gen and the release use 0.5
    # (R2Gen's att_embed); the paper gives no value, so the IU X-ray / MIMIC presets take 0.5.
    c.model.fusion_dropout = -1.0
    c.model.entity_dropout = 0.1  # mlp entity head only: Dropout after each ReLU (release 0.1)
    c.model.dtype = 'float32'  # compute dtype: float32 | bfloat16 (parameters stay float32)

    # ---------------------------------------------------------------- visual pre-training
    # f_R + a linear head on the labels the labeler reads from the TRAINING reports (13 findings
    # found + abnormal), before Algorithm 1 (jima_jax/train/pretrain.py); the backbone is written
    # to <workdir>/pretrain/backbone.safetensors and loaded as model.pretrained. 0 = off (paper).
    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.steps = 0
    c.pretrain.batch_size = 32  # studies per step
    c.pretrain.lr = 1e-3  # Adam
    # chexpert: the 13 findings + abnormal | findings: + the 3 the labeler reads outside CheXpert
    # (calcified granuloma, degenerative spine, hiatal hernia), which f_R is otherwise never shown
    c.pretrain.targets = 'chexpert'
    c.pretrain.log_every_steps = 50

    # ---------------------------------------------------------------- losses (spec section 4)
    c.loss = ml_collections.ConfigDict()
    c.loss.token_weighting = 'none'  # none | inverse_power | effective_number
    c.loss.token_alpha = 0.5  # inverse_power: weight ~ count^-alpha, normalised to mean 1
    c.loss.token_beta = 0.999  # effective_number: weight ~ (1-beta)/(1-beta^count)
    c.loss.example_weighting = 'none'  # none | inverse_prevalence (abnormal studies up-weighted)
    c.loss.example_strength = 1.0  # exponent on the inverse prevalence (0 = off, 1 = full)
    c.loss.entity_pos_weighting = 'none'  # none | inverse_frequency (BCE positive weights)
    c.loss.entity_pos_weight_max = 50.0  # cap on the BCE positive weight of rare entities
    c.loss.entity_weight = 1.0  # weight of L1: Task 1's loss, or in the joint sum (release: 0.5)

    # ---------------------------------------------------------------- optimizers
    # alpha: Task 1 (f_R visual extractor + f_E entity extractor); beta: Task 2 (fusion + f_T).
    c.optim = ml_collections.ConfigDict()
    for name, lr in (('task1', 4e-4), ('task2', 1e-5)):
        o = ml_collections.ConfigDict()
        o.lr = lr
        # task1 only: lr of f_R; < 0 = same as lr (release: 5e-5 vs 1e-4); 0 = f_R frozen (after
        # label pre-training): the step skips f_R's backward pass, its BatchNorm stats still move
        o.visual_lr = -1.0
        o.b1 = 0.9
        o.b2 = 0.999
        o.eps = 1e-8
        o.weight_decay = 0.0  # L2 added to the gradient (PyTorch Adam weight_decay)
        o.amsgrad = False
        o.decay_rate = 0.8  # learning rate x decay_rate every decay_every_epochs
        o.decay_every_epochs = 1
        o.clip = 'none'  # none | value | norm (per optimizer; alternate mode only)
        o.clip_value = 0.1
        c.optim[name] = o
    # joint mode: the global gradient norm over ALL parameters (both optimizers' groups) is
    # clipped at this value, as the release's joint mode does (torch clip_grad_norm_, 1.0);
    # optim.task*.clip are not applied there. 0 = no clipping.
    c.optim.joint_clip_norm = 1.0

    # ---------------------------------------------------------------- training
    c.train = ml_collections.ConfigDict()
    # alternate: Algorithm 1, Task 1 then Task 2 per step | joint: the release's --joint: one step
    # on entity_weight * L1(batch A) + L2(batch B), L2 stopped at f_R/f_E, optim.joint_clip_norm
    c.train.mode = 'alternate'
    c.train.num_epochs = 100
    c.train.max_steps = 0  # stop after this many steps (0 = no limit); for smoke runs
    # With f_R frozen (optim.task1.visual_lr=0): compute its features of every training study
    # once (evaluation mode, no augmentation) and train f_E and the report model on that table
    # instead of running f_R on every batch (jima_jax/train/feature_cache.py; README: the demo's
    # step in about half the time)
    c.train.feature_cache = False
    c.train.steps_per_epoch = 0  # 0 = one pass over the (kept) training set
    c.train.log_every_steps = 10
    c.train.eval_every_epochs = 1
    c.train.checkpoint_every_steps = 0  # 0 = at the end of every epoch only
    # '' = <workdir>/checkpoints; else a path every host sees, or gs://bucket/run (multi-host)
    c.train.checkpoint_dir = ''
    c.train.keep_checkpoints = 3  # the last N are kept, plus the best by best_metric
    c.train.best_metric = 'val/loss/report'
    c.train.best_mode = 'min'  # min | max
    # Stop when best_metric has not improved for this many evaluations in a row (0 = off). The
    # release's --early_stop 50 stops when its count exceeds 50, i.e. at 51 (its preset here).
    c.train.early_stop_patience = 0
    c.train.eval_splits = ('val',)
    c.train.eval_decode = False  # also generate and score (BLEU, CE, ...) at each validation
    c.train.profile = False

    # ---------------------------------------------------------------- curriculum (spec 5, 6, 8)
    c.curriculum = ml_collections.ConfigDict()
    # none | jima | jima_release | competence_sqrt | competence_linear | anti
    # jima: hardest first, a ratio per task (paper); jima_release: easiest first, one shared ratio,
    # s = val BLEU-4 (authors' code); competence_*: easy-to-hard baselines; anti: hard-to-easy.
    c.curriculum.schedule = 'none'
    # Epochs on everything first; s_0, s_1 are scored in the last two (jima_release: in the two
    # after them, so a warm-up of 10 selects from epoch 12, as the authors' code does).
    c.curriculum.warmup_epochs = 30
    c.curriculum.floor = 0.1  # the kept ratio never drops below this (competence: starting ratio)
    c.curriculum.k2_mode = 'all'  # all | balanced (entity / non-entity mean of means)
    # s_t: auto (jima: difficulty; jima_release: val/BLEU_4) | difficulty (1 - mean k over the
    # scored training set) | a validation metric, e.g. val/BLEU_4 (losses enter as exp(-loss))
    c.curriculum.measure = 'auto'
    c.curriculum.rescore_every_epochs = 1  # re-score (and re-select) every n curriculum epochs
    c.curriculum.pace_epochs = 0  # competence/anti: epochs from floor to 1; 0 = to the last epoch

    # ---------------------------------------------------------------- device mesh
    c.parallel = ml_collections.ConfigDict()
    c.parallel.data = -1  # size of the 'data' mesh axis; -1 = all devices not used by fsdp
    c.parallel.fsdp = 1  # size of the 'fsdp' mesh axis
    c.parallel.shard_params = False  # shard parameters and optimizer state over 'fsdp'
    c.parallel.min_shard_size = 2**14  # parameters smaller than this stay replicated
    # XLA:CPU op order (set in XLA_FLAGS at start-up): memory (fewest live buffers; 5.7 vs 6.7 GB
    # peak at the IU X-ray paper shape, same speed) | concurrency (XLA's default). No-op off CPU.
    c.parallel.cpu_scheduler = 'memory'
    # Host allocator when JAX runs on CPU (Linux/glibc): reuse (glibc keeps freed memory, so no
    # per-step page faults: paper step 17.4 -> 15.7 s on 2 cores; the peak can rise with
    # fragmentation) | system (as is). No-op when JAX runs on a GPU/TPU.
    c.parallel.cpu_malloc = 'reuse'

    # ---------------------------------------------------------------- decoding (evaluation)
    c.decode = ml_collections.ConfigDict()
    c.decode.beam_size = 3
    c.decode.max_len = 60
    c.decode.length_penalty = 0.0
    c.decode.block_trigrams = False

    return c


def use_cpu_minutes_model(c) -> None:
    """The small network of the CPU-minute configs (demo, iu_phantom:small): ResNet-18, a 2-layer
    width-128 Transformer, and learning rates large enough to learn in a few epochs."""
    c.model.backbone = 'resnet18'
    c.model.width = 128
    c.model.num_heads = 4
    c.model.num_encoder_layers = 2
    c.model.num_decoder_layers = 2
    c.model.ffn_dim = 256
    for task in (c.optim.task1, c.optim.task2):
        task.lr = 5e-4
        task.decay_rate = 0.9


def use_release_recipe(c, *, decay_rate: float, decay_every_epochs: int) -> None:
    """Spec section 8, what the authors' public code does (shared by the `:release` presets):
    MLP entity head with dropout 0.1, fusion dropout 0.5, entity loss x0.5 (both train modes),
    AMSGrad + weight decay, value clipping, per-group learning rates, the easiest-first
    shared-ratio curriculum driven by validation BLEU-4 (warm-up 10, first scored at epoch 10,
    selecting from epoch 12; floor 0.1), best checkpoint by BLEU-4, early stopping after 50
    evaluations without improvement (the release's count). `train.mode=joint` is the release's
    --joint (global-norm clip optim.joint_clip_norm=1.0 instead of the value clip). Only the
    learning-rate decay differs per dataset."""
    c.model.entity_head = 'mlp'
    c.model.entity_dropout = 0.1
    c.model.fusion_dropout = 0.5
    c.loss.entity_weight = 0.5
    for o in (c.optim.task1, c.optim.task2):
        o.lr = 1e-4
        o.amsgrad = True
        o.weight_decay = 5e-5
        o.decay_rate = decay_rate
        o.decay_every_epochs = decay_every_epochs
        o.clip = 'value'
        o.clip_value = 0.1
    c.optim.task1.visual_lr = 5e-5
    c.curriculum.schedule = 'jima_release'
    c.curriculum.warmup_epochs = 10
    c.curriculum.floor = 0.1
    c.train.early_stop_patience = 51  # the release's --early_stop 50: stops once its count > 50
    select_by_val_bleu4(c)


def select_by_val_bleu4(c) -> None:
    """The paper's and the release's checkpoint selection: the best validation BLEU-4 (reports are
    generated at every validation); `--mode eval` scores that checkpoint by default."""
    c.train.eval_decode = True
    c.train.best_metric = 'val/BLEU_4'
    c.train.best_mode = 'max'
