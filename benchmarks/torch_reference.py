"""A PyTorch JIMA written the way the authors' release runs it: the speed reference for
`benchmarks.vs_pytorch` (torch and torchvision are optional, the `bench` extra; never imported by
jima_jax itself).

Model (spec sections 3 and 8): torchvision ResNet (random init) without its pooling and classifier,
each view through it on its own as R2Gen does, patches of all views concatenated (P = 98 x 2048 at
2 x 224^2); f_E the paper's patch-linear head (computed on the patch mean, the same value for P
times fewer FLOPs, as jima_jax does) or the release's MLP on the pooled features; the
cross-concatenation fusion; PyTorch's own pre-LayerNorm Transformer layers with sinusoidal
positions. The two updates of Algorithm 1 as the release does them, with one Adam (AMSGrad,
weight decay, a learning rate for f_R and one for the rest) and gradient value clipping:
  * entity step: entity BCE -> gradients through f_E and f_R -> update (f_T gets no gradient);
  * report step: f_R and f_E run without gradients (train-mode BatchNorm, frozen), report NLL ->
    gradients for fusion + f_T only -> update.
Generation is beam search that recomputes the decoder over the whole prefix at every position
(no KV cache, as R2Gen's beam search). Difficulty scoring is the release's: per reference token
(and per gold entity) a full descending sort of the distribution in a Python loop.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # as jima_jax.data.types
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VisualExtractor(nn.Module):
    """f_R: images [B, V, 3, H, W] -> patches [B, V*h*w, d] and pooled [B, V*d]."""

    def __init__(self, backbone: str):
        super().__init__()
        net = getattr(torchvision.models, backbone)(weights=None)
        self.body = nn.Sequential(*list(net.children())[:-2])  # up to the last feature map
        self.feature_dim = net.fc.in_features

    def forward(self, images: torch.Tensor):
        patches, pooled = [], []
        for v in range(images.shape[1]):  # one backbone call per view, as R2Gen
            fmap = self.body(images[:, v])
            patches.append(fmap.flatten(2).transpose(1, 2))
            pooled.append(fmap.mean(dim=(2, 3)))
        return torch.cat(patches, 1), torch.cat(pooled, 1)


class PatchLinearEntityHead(nn.Module):
    """Paper f_E: logits = mean over patches of X W_E (+ b), taken on the patch mean."""

    def __init__(self, feature_dim: int, vocab: int):
        super().__init__()
        self.proj = nn.Linear(feature_dim, vocab)

    def forward(self, patches, pooled):
        return self.proj(patches.mean(1))


class MLPEntityHead(nn.Module):
    """Release f_E: pooled features of all views -> hidden -> hidden -> |V|, Dropout after each
    ReLU."""

    def __init__(self, pooled_dim: int, hidden: int, vocab: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(pooled_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, vocab))

    def forward(self, patches, pooled):
        return self.net(pooled)


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """sin on even, cos on odd dimensions ("Attention is all you need")."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    div = torch.exp(torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div)
    return table.float()


class ReportGenerator(nn.Module):
    """Fusion S = concat(X, q) * concat(q, X) -> Linear + ReLU + dropout, then f_T."""

    def __init__(self, feature_dim: int, vocab: int, width: int, heads: int, ffn: int,
                 layers: int, dropout: float, max_len: int, fusion_dropout: float):
        super().__init__()
        self.fusion = nn.Linear(feature_dim + vocab, width)
        self.fusion_dropout = nn.Dropout(fusion_dropout)
        self.dropout = nn.Dropout(dropout)

        def layer(cls):
            return cls(width, heads, ffn, dropout, batch_first=True, norm_first=True)

        self.encoder = nn.TransformerEncoder(layer(nn.TransformerEncoderLayer), layers,
                                             norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(layer(nn.TransformerDecoderLayer), layers,
                                             norm=nn.LayerNorm(width))
        self.embed = nn.Embedding(vocab, width)
        self.logits = nn.Linear(width, vocab)
        self.register_buffer('positions', sinusoidal_positions(max_len, width), persistent=False)
        self.width = width

    def memory(self, patches, q):
        q = q[:, None, :].expand(-1, patches.shape[1], -1)
        s = torch.cat([patches, q], -1) * torch.cat([q, patches], -1)
        return self.encoder(self.fusion_dropout(F.relu(self.fusion(s))))

    def decode(self, tokens, memory, last_only: bool = False):
        """tokens [B, L] (BOS first) -> next-token logits [B, L, V] (or [B, V] of the last
        position only, all that a search step needs)."""
        length = tokens.shape[1]
        x = self.embed(tokens) * math.sqrt(self.width) + self.positions[:length]
        causal = torch.triu(torch.full((length, length), float('-inf')), diagonal=1)
        x = self.decoder(self.dropout(x), memory, tgt_mask=causal, tgt_is_causal=True)
        return self.logits(x[:, -1] if last_only else x)

    def forward(self, patches, q, tokens_in):
        return self.decode(tokens_in, self.memory(patches, q))


class JIMAReference(nn.Module):
    """visual (f_R), entity (f_E), report (fusion + f_T): the groups of the two updates."""

    def __init__(self, shape: dict, entity_head: str = 'patch_linear', entity_mlp_dim: int = 512,
                 dropout: float = 0.1, fusion_dropout: Optional[float] = None,
                 entity_dropout: float = 0.1):
        """Dropout rates as jima_jax's defaults: `fusion_dropout` None = `dropout`;
        `entity_dropout` is the MLP head's (release 0.1)."""
        super().__init__()
        self.visual = VisualExtractor(shape['backbone'])
        d, vocab = self.visual.feature_dim, shape['vocab']
        if entity_head == 'patch_linear':
            self.entity = PatchLinearEntityHead(d, vocab)
        elif entity_head == 'mlp':
            self.entity = MLPEntityHead(d * shape['views'], entity_mlp_dim, vocab,
                                        entity_dropout)
        else:
            raise ValueError(f"entity_head={entity_head!r}: expected 'patch_linear' or 'mlp'.")
        self.report = ReportGenerator(d, vocab, shape['width'], shape['heads'], shape['ffn'],
                                      shape['layers'], dropout, shape['length'] + 1,
                                      dropout if fusion_dropout is None else fusion_dropout)
        self.vocab = vocab


def release_optimizer(model: JIMAReference, optim: dict) -> torch.optim.Optimizer:
    """One Adam over everything (spec section 8): f_R at `visual_lr`, the rest at `lr`."""
    rest = [p for name, p in model.named_parameters() if not name.startswith('visual.')]
    return torch.optim.Adam(
        [{'params': list(model.visual.parameters()), 'lr': optim['visual_lr']},
         {'params': rest, 'lr': optim['lr']}],
        betas=(optim['b1'], optim['b2']), eps=optim['eps'], weight_decay=optim['weight_decay'],
        amsgrad=optim['amsgrad'])


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """uint8 grayscale [B, V, H, W] -> float32 [B, V, 3, H, W], ImageNet-normalised per channel."""
    x = torch.from_numpy(images).float().div_(255.0)[:, :, None]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
    return (x - mean) / std


def entity_targets(entities: np.ndarray, vocab: int) -> torch.Tensor:
    """Multi-hot [B, V] from entity ids [B, E] padded with -1."""
    ids = torch.from_numpy(entities).long()
    hot = torch.zeros(ids.shape[0], vocab + 1)
    hot.scatter_(1, torch.where(ids >= 0, ids, vocab), 1.0)
    return hot[:, :vocab]


class Trainer:
    """The release's two updates on one model and one optimizer; each call runs one step."""

    def __init__(self, model: JIMAReference, optim: dict):
        self.model = model
        self.opt = release_optimizer(model, optim)
        self.clip = optim['clip_value'] if optim.get('clip') == 'value' else None

    def _update(self, loss):
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip is not None:
            nn.utils.clip_grad_value_([p for p in self.model.parameters()
                                       if p.grad is not None], self.clip)
        self.opt.step()  # parameters without a gradient (the frozen group) are left as they are
        return float(loss.detach())

    def entity_step(self, batch: dict) -> float:
        """Task 1: entity BCE (mean over studies x vocabulary) -> f_R + f_E updated."""
        m = self.model.train()
        patches, pooled = m.visual(normalize_images(batch['images']))
        logits = m.entity(patches, pooled)
        return self._update(F.binary_cross_entropy_with_logits(
            logits, entity_targets(batch['entities'], m.vocab)))

    def report_step(self, batch: dict) -> float:
        """Task 2: f_R and f_E frozen (no gradients), report NLL -> fusion + f_T updated."""
        m = self.model.train()
        with torch.no_grad():
            patches, pooled = m.visual(normalize_images(batch['images']))
            q = torch.sigmoid(m.entity(patches, pooled))
        tokens = torch.from_numpy(batch['tokens']).long()
        logits = m.report(patches, q, tokens[:, :-1])
        return self._update(F.cross_entropy(logits.reshape(-1, m.vocab),
                                            tokens[:, 1:].reshape(-1), ignore_index=PAD_ID))


@torch.no_grad()
def beam_search(model: JIMAReference, images: np.ndarray, beam_size: int, max_len: int) -> dict:
    """Beam search recomputing the decoder over the whole prefix at each position (no KV cache).

    jima_jax's conventions: PAD and BOS are never generated; ranking by the raw sum of
    log-probabilities; a hypothesis that emits EOS leaves the beam for the study's store of
    finished ones, the rest are extended; stops once no live hypothesis can beat its study's best
    finished one (log-probabilities only lower a sum) or at `max_len`, where live ones count as
    finished. Returns tokens [B, <= max_len] of the best hypothesis (PAD after EOS) and scores [B].
    """
    m = model.eval()
    patches, pooled = m.visual(normalize_images(images))
    memory = m.report.memory(patches, torch.sigmoid(m.entity(patches, pooled)))
    b, k, vocab = memory.shape[0], beam_size, m.vocab
    memory = memory.repeat_interleave(k, 0)
    prefix = torch.full((b, k, 1), BOS_ID, dtype=torch.long)
    scores = torch.full((b, k), float('-inf'))
    scores[:, 0] = 0.0  # one live hypothesis per study at the start
    best_score = torch.full((b,), float('-inf'))
    best_tokens = torch.full((b, max_len), PAD_ID, dtype=torch.long)
    banned = torch.zeros(vocab, dtype=torch.bool)
    banned[[PAD_ID, BOS_ID]] = True
    for t in range(max_len):
        logits = m.report.decode(prefix.view(b * k, -1), memory, last_only=True)
        logp = F.log_softmax(logits.float(), -1).masked_fill(banned, float('-inf'))
        top, index = (scores[..., None] + logp.view(b, k, vocab)).view(b, -1).topk(k, -1)
        parent, token = index // vocab, index % vocab
        prefix = torch.cat([prefix.gather(1, parent[..., None].expand(-1, -1, prefix.shape[2])),
                            token[..., None]], -1)
        ended = (token == EOS_ID) | (t == max_len - 1)
        for i, j in (ended & (top > best_score[:, None])).nonzero().tolist():
            if top[i, j] > best_score[i]:
                best_score[i] = top[i, j]
                best_tokens[i] = PAD_ID
                best_tokens[i, :t + 1] = prefix[i, j, 1:]
        scores = top.masked_fill(token == EOS_ID, float('-inf'))
        if not bool((scores.max(1).values > best_score).any()):
            break
    return {'tokens': best_tokens, 'scores': best_score, 'positions': t + 1}


def _rank_by_full_sort(probs: torch.Tensor, reference: int) -> int:
    """The release's Rank: position of `reference` in a full descending sort (1 = top)."""
    order = torch.argsort(probs, descending=True)
    return int((order == reference).nonzero()[0, 0]) + 1


@torch.no_grad()
def score_release_style(model: JIMAReference, batch: dict,
                        seconds: Optional[dict] = None) -> dict:
    """k1, k2 ('all' tokens) per study as the release computes them: eval-mode teacher-forced
    forward, then Python loops with a full sort per gold entity and per reference token.
    k1 = 0 for a study without entities; k2 averages report tokens other than PAD and EOS.
    `seconds`, when given, accumulates the time of the forward and of the ranking loops."""
    t0 = time.perf_counter()
    m = model.eval()
    patches, pooled = m.visual(normalize_images(batch['images']))
    q = torch.sigmoid(m.entity(patches, pooled))
    tokens = torch.from_numpy(batch['tokens']).long()
    probs = F.softmax(m.report(patches, q, tokens[:, :-1]), -1)
    t1 = time.perf_counter()
    vocab = m.vocab
    k1, k2 = [], []
    for i in range(tokens.shape[0]):
        ranks = [_rank_by_full_sort(q[i], int(e)) for e in batch['entities'][i] if e >= 0]
        k1.append(sum(ranks) / len(ranks) / vocab if ranks else 0.0)
        ranks = [_rank_by_full_sort(probs[i, t], z)
                 for t, z in enumerate(tokens[i, 1:].tolist()) if z not in (PAD_ID, EOS_ID)]
        k2.append(sum(ranks) / len(ranks) / vocab if ranks else 0.0)
    if seconds is not None:
        seconds['forward'] = seconds.get('forward', 0.0) + t1 - t0
        seconds['ranking'] = seconds.get('ranking', 0.0) + time.perf_counter() - t1
    return {'k1': np.asarray(k1, np.float32), 'k2_all': np.asarray(k2, np.float32)}


def suppress_eos(model: JIMAReference) -> None:
    """EOS logit bias -1e9: a randomly initialised model then generates all `max_len` positions
    (as `cases.beam_program(full_length=True)` does for jima_jax) instead of ending at once."""
    with torch.no_grad():
        model.report.logits.bias[EOS_ID] = -1e9


def parameter_counts(model: JIMAReference) -> dict:
    """Trainable parameters per group (visual, entity, report) and in total."""
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ('visual', 'entity', 'report')}
    counts['total'] = sum(counts.values())
    return counts
