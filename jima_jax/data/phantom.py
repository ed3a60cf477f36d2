"""Phantom chest radiographs rendered from a findings description.

The package needs images whose content really determines their reports, with no download: this
module draws frontal and lateral chest-radiograph-like views (thorax, lungs with vascular markings,
heart and mediastinum, diaphragm, ribs, clavicles, spine, soft tissue) in which each finding is a
visible, localised change. Rendering is vectorised numpy on precomputed grids (a few milliseconds a
view) and deterministic: the same findings, seed and size give the same bytes.

Coordinates: every view is drawn in a canonical frame, x and y in [-1, 1] (x to the image right,
y down), which the patient's positioning (size, rotation, shift) maps onto the pixel grid. On the
frontal view the patient's right lung is on the image left; the lateral view faces left
(anterior on the image left).

CLI: `python -m jima_jax.data.phantom --contact-sheet out.png` draws normal and abnormal examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import textwrap
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from jima_jax import atomic
from jima_jax.text import symbols

# Frequent IU X-ray findings outside the 14 CheXpert observations (they make IU studies abnormal).
EXTRA_FINDINGS = ('calcified granuloma', 'degenerative spine', 'hiatal hernia')
FINDING_NAMES = symbols.OBSERVATIONS[1:] + EXTRA_FINDINGS
SIDES = ('right', 'left', 'bilateral')
SEVERITIES = ('mild', 'moderate', 'severe')
ZONES = ('upper', 'middle', 'lower')

# The attributes each finding takes and their values; one left '' (or 0) is drawn from the seed.
_SIDED2 = ('right', 'left')
ATTRIBUTES = {
    'Enlarged Cardiomediastinum': dict(severity=SEVERITIES),
    'Cardiomegaly': dict(severity=SEVERITIES),
    'Lung Lesion': dict(side=_SIDED2, zone=ZONES, severity=SEVERITIES, kind=('nodule', 'mass')),
    'Lung Opacity': dict(side=SIDES, zone=ZONES, severity=SEVERITIES),
    'Edema': dict(side=('bilateral',), severity=SEVERITIES),
    'Consolidation': dict(side=SIDES, zone=ZONES, severity=SEVERITIES),
    'Pneumonia': dict(side=SIDES, zone=ZONES, severity=SEVERITIES),
    'Atelectasis': dict(side=SIDES, zone=('middle', 'lower'), severity=SEVERITIES),
    'Pneumothorax': dict(side=_SIDED2, severity=SEVERITIES),
    'Pleural Effusion': dict(side=SIDES, severity=SEVERITIES),
    'Pleural Other': dict(side=SIDES, severity=SEVERITIES),
    'Fracture': dict(side=_SIDED2, kind=('acute', 'healed'), rib=tuple(range(3, 10))),
    'Support Devices': dict(side=_SIDED2, kind=('pacemaker', 'central line', 'endotracheal tube',
                                                 'enteric tube')),
    'calcified granuloma': dict(side=_SIDED2, zone=ZONES),
    'degenerative spine': dict(severity=SEVERITIES),
    'hiatal hernia': dict(severity=SEVERITIES),
}
# Sizes stated in reports, in millimetres, by lesion kind and severity.
LESION_MM = {'nodule': (6, 10, 16), 'mass': (40, 50, 70)}
_MM = 0.0059  # canonical units per millimetre (inner thorax ~1.64 units ~ 280 mm)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One finding of a study; '' / 0 attributes are unstated and drawn from the seed."""

    name: str
    side: str = ''  # right | left | bilateral (patient's side)
    severity: str = ''  # mild | moderate | severe (effusion small/moderate/large, ...)
    zone: str = ''  # upper | middle | lower lung zone (lobe)
    kind: str = ''  # lesion nodule|mass; fracture acute|healed; device type
    rib: int = 0  # Fracture: rib number

    def __post_init__(self):
        if self.name not in ATTRIBUTES:
            raise ValueError(f'Finding.name {self.name!r} is unknown; use one of {FINDING_NAMES}.')
        allowed = ATTRIBUTES[self.name]
        for attr in ('side', 'severity', 'zone', 'kind', 'rib'):
            value = getattr(self, attr)
            if value in ('', 0):
                continue
            if attr not in allowed:
                raise ValueError(f'Finding {self.name!r} takes no {attr} (got {value!r}).')
            if value not in allowed[attr]:
                raise ValueError(f'Finding {self.name!r}: {attr}={value!r} is not one of '
                                 f'{allowed[attr]}.')

    def resolved(self, rng: np.random.Generator) -> 'Finding':
        """This finding with every unstated attribute it takes drawn from `rng`."""
        fill = {}
        for attr, choices in ATTRIBUTES[self.name].items():
            # Always draw, so a stated attribute does not shift the draws of the others.
            pick = choices[int(rng.integers(len(choices)))]
            if attr == 'severity':
                pick = 'moderate' if rng.random() < 0.5 else pick
            if getattr(self, attr) in ('', 0):
                fill[attr] = pick
        return dataclasses.replace(self, **fill)

    def describe(self) -> str:
        """Short human-readable text (contact sheet captions)."""
        words = [self.severity, self.side, self.zone, self.kind,
                 f'rib {self.rib}' if self.rib else '', self.name.lower()]
        return ' '.join(w for w in words if w)


@dataclasses.dataclass(frozen=True)
class Patient:
    """Patient and acquisition variation; everything a normal study varies by."""

    scale: float = 0.96  # body size in the image (1 = thorax wall near the image border)
    aspect: float = 1.0  # thorax height / width relative to the average
    rotation: float = 0.0  # in-plane rotation, degrees
    shift_x: float = 0.0  # positioning offset, canonical units
    shift_y: float = 0.0
    inspiration: float = 0.0  # diaphragm depth: + deeper inspiration (lower domes)
    heart: float = 1.0  # normal heart size variation
    exposure: float = 1.0  # brightness gain
    contrast: float = 0.0  # S-curve strength of the film response
    noise: float = 0.02  # quantum noise std, in [0, 1] intensity units
    anatomy: int = 0  # which vessel-tree variant draws the lung markings

    @classmethod
    def sample(cls, rng: np.random.Generator) -> 'Patient':
        u = [float(v) for v in rng.random(10)]
        return cls(scale=0.9 + 0.1 * u[0], aspect=0.94 + 0.12 * u[1],
                   rotation=-4.0 + 8.0 * u[2], shift_x=-0.04 + 0.08 * u[3],
                   shift_y=-0.04 + 0.08 * u[4], inspiration=-1.0 + 2.0 * u[5],
                   heart=0.94 + 0.1 * u[6], exposure=0.88 + 0.24 * u[7],
                   contrast=0.1 + 0.5 * u[8], noise=0.012 + 0.02 * u[9],
                   anatomy=int(rng.integers(_NUM_ANATOMIES)))

    @classmethod
    def from_seed(cls, seed: int) -> 'Patient':
        return cls.sample(_rng(seed, 0))


@dataclasses.dataclass(frozen=True)
class Findings:
    """What one study shows: its findings (at most one per name) and the patient."""

    items: tuple[Finding, ...] = ()
    patient: Optional[Patient] = None  # None: derived from the render seed

    def __post_init__(self):
        object.__setattr__(self, 'items', tuple(self.items))
        names = [f.name for f in self.items]
        if len(set(names)) != len(names):
            raise ValueError(f'Findings.items repeats a finding name: {names}; give each once '
                             '(use side="bilateral" for both sides).')

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.items)

    @property
    def abnormal(self) -> int:
        return int(bool(self.items))

    def get(self, name: str) -> Optional[Finding]:
        return next((f for f in self.items if f.name == name), None)

    def labels(self) -> np.ndarray:
        """Image truth as an int8[14] label array (OBSERVATIONS order): every entry is known.

        No Finding follows CheXpert: positive when nothing but support devices is present (the
        extra IU findings count as findings); `abnormal` also counts devices (IU MeSH).
        """
        out = np.full(symbols.NUM_OBSERVATIONS, symbols.LABEL_NEGATIVE, np.int8)
        for f in self.items:
            if f.name in symbols.OBSERVATIONS:
                out[symbols.OBSERVATIONS.index(f.name)] = symbols.LABEL_POSITIVE
        if set(self.names) <= {'Support Devices'}:
            out[0] = symbols.LABEL_POSITIVE
        return out

    def describe(self) -> str:
        return '; '.join(f.describe() for f in self.items) or 'normal'


# ------------------------------------------------------------------------------------ helpers

_NUM_ANATOMIES = 4
_Box = tuple[float, float, float, float]  # canonical x0, x1, y0, y1
_Win = tuple[slice, slice]


def _rng(seed: int, *keys: int) -> np.random.Generator:
    if int(seed) < 0:
        raise ValueError(f'seed must be >= 0, got {seed}.')
    return np.random.default_rng([int(seed), *keys])


def _finding_key(name: str) -> int:
    return 1 + FINDING_NAMES.index(name)


def _clip01(t):
    return np.clip(t, 0.0, 1.0)


def _smooth(t):
    t = _clip01(t)
    return t * t * (3.0 - 2.0 * t)


def _ellipse(x, y, cx, cy, rx, ry, soft=0.08):
    """Solid ellipse with a soft rim (compact support: exactly 0 outside)."""
    r2 = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
    return _clip01((1.0 - r2) / soft)


def _bump(x, y, cx, cy, rx, ry):
    """Smooth dome-shaped blob, exactly 0 outside the ellipse."""
    t = _clip01(1.0 - ((x - cx) / rx) ** 2 - ((y - cy) / ry) ** 2)
    return t * t


def _tube(x, y, points, width):
    """Line profile (1 on the polyline, 0 beyond `width`)."""
    d2 = None
    for (ax, ay), (bx, by) in zip(points[:-1], points[1:]):
        dx, dy = bx - ax, by - ay
        px, py = x - ax, y - ay
        t = _clip01((px * dx + py * dy) / (dx * dx + dy * dy + 1e-12))
        ex, ey = px - t * dx, py - t * dy
        e2 = ex * ex + ey * ey
        d2 = e2 if d2 is None else np.minimum(d2, e2)
    return _clip01(1.0 - np.sqrt(d2) / width)


def _blur3(a: np.ndarray) -> np.ndarray:
    """[1, 2, 1] / 4 blur along both axes (edges kept)."""
    b = a.copy()
    b[1:-1] = 0.5 * a[1:-1] + 0.25 * (a[:-2] + a[2:])
    out = b.copy()
    out[:, 1:-1] = 0.5 * b[:, 1:-1] + 0.25 * (b[:, :-2] + b[:, 2:])
    return out


def _points_box(points, pad) -> _Box:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs) - pad, max(xs) + pad, min(ys) - pad, max(ys) + pad


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> np.ndarray:
    return ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)


def _upsample(g: np.ndarray, n: int) -> np.ndarray:
    """Bilinear resize of a square array to n x n."""
    m = g.shape[0]
    pos = np.linspace(0.0, m - 1.0, n)
    i0 = np.minimum(np.floor(pos).astype(int), m - 2)
    f = pos - i0
    rows = g[i0] * (1 - f)[:, None] + g[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f) + rows[:, i0 + 1] * f


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """Standard normal samples (4 images' worth); a view reads them from a seeded offset."""
    return np.random.default_rng(2024).standard_normal(4 * size * size, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _patch_texture(size: int) -> np.ndarray:
    """Smooth [0, 1] noise (2*size square) that makes airspace densities patchy."""
    rng = np.random.default_rng(12345)
    n = 2 * size
    tex = sum(amp * _upsample(rng.random((cells, cells)), n)
              for cells, amp in ((12, 1.0), (24, 0.7), (48, 0.4)))
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return tex.astype(np.float32)


@functools.lru_cache(maxsize=16)
def _vessel_texture(size: int, anatomy: int, lateral: bool) -> np.ndarray:
    """Branching vessel trees from the hila, in the canonical frame (size x size)."""
    rng = np.random.default_rng([77, anatomy, int(lateral)])
    tex = np.zeros((size, size), np.float32)
    grid = _grid(size)
    if lateral:
        roots = [((0.05, -0.05), np.linspace(0.0, 2 * np.pi, 13)[:-1])]
    else:
        roots = [((-0.2, -0.05), np.linspace(0.55 * np.pi, 1.45 * np.pi, 8)),
                 ((0.22, -0.03), np.linspace(-0.45 * np.pi, 0.45 * np.pi, 8))]
    stack = []
    for root, angles in roots:
        for a in angles:
            stack.append((root, a + rng.normal(0, 0.08), 0.13, 0.016, 5))
    while stack:
        (px, py), a, length, width, depth = stack.pop()
        q = (px + length * math.cos(a), py + length * math.sin(a))
        box = _points_box([(px, py), q], width)
        c0, c1 = np.searchsorted(grid, [box[0], box[1]])
        r0, r1 = np.searchsorted(grid, [box[2], box[3]])
        if c1 > c0 and r1 > r0:
            x, y = grid[None, c0:c1], grid[r0:r1, None]
            prof = _tube(x, y, [(px, py), q], width) ** 2 * (width / 0.016) ** 0.5
            np.maximum(tex[r0:r1, c0:c1], prof, out=tex[r0:r1, c0:c1])
        if depth:
            for sign in (-1.0, 1.0):
                stack.append((q, a + sign * rng.uniform(0.25, 0.5) + rng.normal(0, 0.1),
                              length * rng.uniform(0.72, 0.86), width * 0.72, depth - 1))
    return _blur3(tex)


# ------------------------------------------------------------------------------------ canvas

class _Canvas:
    """One view being drawn: canonical coordinates of every pixel and the density built so far."""

    def __init__(self, size: int, patient: Patient):
        self.size = size
        th = math.radians(patient.rotation)
        sx, sy = patient.scale, patient.scale * patient.aspect
        # canonical = m @ (pixel - shift); pixel = inv(m) @ canonical + shift.
        self.m = np.array([[math.cos(th) / sx, math.sin(th) / sx],
                           [-math.sin(th) / sy, math.cos(th) / sy]])
        self.m_inv = np.linalg.inv(self.m).tolist()
        self.shift = (patient.shift_x, patient.shift_y)
        u = _grid(size)[None, :] - np.float32(patient.shift_x)
        v = _grid(size)[:, None] - np.float32(patient.shift_y)
        m = self.m.astype(np.float32)
        self.x = m[0, 0] * u + m[0, 1] * v
        self.y = m[1, 0] * u + m[1, 1] * v
        self.d = np.zeros((size, size), np.float32)
        self.regions: dict[str, list[_Win]] = {}

    def win(self, box: _Box, owner: str = '') -> Optional[_Win]:
        """Pixel window covering canonical `box`; recorded as `owner`'s region when given."""
        x0, x1, y0, y1 = box
        (a, b), (c, d) = self.m_inv
        half = self.size / 2.0
        cols = [(a * x + b * y + self.shift[0] + 1.0) * half - 0.5
                for x in (x0, x1) for y in (y0, y1)]
        rows = [(c * x + d * y + self.shift[1] + 1.0) * half - 0.5
                for x in (x0, x1) for y in (y0, y1)]
        c0, r0 = max(math.floor(min(cols)) - 1, 0), max(math.floor(min(rows)) - 1, 0)
        c1 = min(math.ceil(max(cols)) + 2, self.size)
        r1 = min(math.ceil(max(rows)) + 2, self.size)
        if c1 <= c0 or r1 <= r0:
            return None
        w = (slice(r0, r1), slice(c0, c1))
        if owner:
            self.regions.setdefault(owner, []).append(w)
        return w

    def add(self, box: _Box, fn: Callable, owner: str = ''):
        """d[window] += fn(x, y) over the window of `box`."""
        w = self.win(box, owner)
        if w is not None:
            self.d[w] += fn(self.x[w], self.y[w])

    def sample(self, tex: np.ndarray, w: _Win) -> np.ndarray:
        """Nearest-neighbour lookup of a canonical-frame texture over window `w`."""
        n = tex.shape[0]
        col = np.clip(((self.x[w] + 1.0) * (n / 2.0)).astype(np.int32), 0, n - 1)
        row = np.clip(((self.y[w] + 1.0) * (n / 2.0)).astype(np.int32), 0, n - 1)
        return np.take(tex.ravel(), row * n + col)

    def patches(self, w: _Win, rng: np.random.Generator) -> np.ndarray:
        """A random crop of the patch texture the size of window `w`, standardised in it."""
        tex = _patch_texture(self.size)
        h, wd = w[0].stop - w[0].start, w[1].stop - w[1].start
        oy, ox = rng.integers(0, self.size, 2)
        crop = tex[oy:oy + h, ox:ox + wd]
        return (crop - crop.mean()) / (crop.std() + 1e-3)

    def image(self, patient: Patient, noise_rng: np.random.Generator) -> np.ndarray:
        """Blur (focal spot, screen), film response, exposure and quantum noise -> uint8."""
        i = _clip01(_blur3(self.d) * np.float32(patient.exposure))
        i += np.float32(patient.contrast) * i * (1.0 - i) * (i - 0.35)
        bank = _noise_bank(self.size)
        start = int(noise_rng.integers(bank.size - i.size))
        i += bank[start:start + i.size].reshape(i.shape) * np.float32(patient.noise)
        return (_clip01(i) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- shared anatomy

_SEV = {'mild': 0, 'moderate': 1, 'severe': 2}
_RIB = 0.09  # rib density
_ZONE_FRONTAL = {'upper': (0.42, -0.42), 'middle': (0.38, 0.0), 'lower': (0.52, 0.32)}
_ZONE_LATERAL = {'upper': (0.12, -0.42), 'middle': (-0.3, 0.05), 'lower': (0.35, 0.36)}
_AIRSPACE = {  # density, (base, contrast) of the patchiness, extent per severity
    'Consolidation': (0.38, (0.85, 0.3), (0.10, 0.15, 0.21)),  # dense, confluent
    'Lung Opacity': (0.28, (0.65, 0.2), (0.12, 0.18, 0.25)),  # hazy
    'Pneumonia': (0.38, (0.5, 0.5), (0.13, 0.19, 0.26)),  # patchy
}


def _sides(f: Finding) -> tuple[int, ...]:
    """Frontal x sign of the finding's side(s): the patient's right is the image left."""
    return {'right': (-1,), 'left': (1,), 'bilateral': (-1, 1)}[f.side]


def _heart_frontal(p: Patient, f: Findings):
    """Heart ellipse (cx, cy, rx, ry, tilt): long axis down towards the patient's left."""
    sev = f.get('Cardiomegaly')
    grow = (1.0, 1.0) if sev is None else ((1.2, 1.08), (1.32, 1.13), (1.48, 1.2))[
        _SEV[sev.severity]]
    rx, ry = 0.4 * p.heart * grow[0], 0.26 * grow[1]
    return 0.08 + 0.45 * (rx - 0.4), 0.24 + 0.5 * (ry - 0.26), rx, ry, 0.35


def _tilted(x, y, e, soft=0.08):
    """Soft mask of a tilted ellipse e = (cx, cy, rx, ry, tilt)."""
    cx, cy, rx, ry, t = e
    dx, dy = x - cx, y - cy
    a = (dx * math.cos(t) + dy * math.sin(t)) / rx
    b = (dy * math.cos(t) - dx * math.sin(t)) / ry
    return _clip01((1.0 - a * a - b * b) / soft)


def _tilted_box(e, pad=0.0) -> _Box:
    cx, cy, rx, ry, t = e
    ex = math.hypot(rx * math.cos(t), ry * math.sin(t)) + pad
    ey = math.hypot(rx * math.sin(t), ry * math.cos(t)) + pad
    return cx - ex, cx + ex, cy - ey, cy + ey


def _mediastinum_frontal(x, y, widen):
    """Soft mask of the mediastinum above the heart (aortic knob bulging to the image right)."""
    knob = 0.06 * _clip01(1.0 - ((y + 0.36) / 0.1) ** 2) * (x > 0.0)
    half = (0.13 + knob) * (1.0 + widen * _clip01((y + 0.78) / 0.2) * _clip01((0.2 - y) / 0.2))
    return _clip01((half - np.abs(x - 0.01)) / 0.03) * _clip01((y + 1.0) / 0.1)


def _dome_y(p: Patient, s: int) -> float:
    """Frontal dome peak height: the right dome (s=-1) sits higher."""
    return (0.36 if s < 0 else 0.41) + 0.05 * p.inspiration


def _lung_margins(xp, y, p: Patient, s: int):
    """Signed margins (lateral, medial, bottom) of one frontal hemithorax envelope."""
    h = _clip01(1.0 - ((y + 0.15) / 0.6) ** 2)
    q = np.where(y < -0.15, np.sqrt(h), np.float32(1.0))
    lat = 0.44 + 0.38 * q + 0.04 * _clip01(y + 0.15) - xp
    med = xp - 0.44 + 0.40 * q
    bot = _dome_y(p, s) + 1.5 * (xp - 0.36) ** 2 - y
    return lat, med, bot


def _costophrenic_y(p: Patient, s: int) -> float:
    return _dome_y(p, s) + 1.5 * 0.48 ** 2


# ------------------------------------------------------------------------------ frontal view

def _frontal(c: _Canvas, p: Patient, f: Findings, place: Callable[[str], np.random.Generator]):
    x, y = c.x, c.y
    # Soft tissue: torso with sloping shoulders and neck, thicker in the middle.
    wb = 0.24 + 0.74 * _smooth((y + 1.0) / 0.32)
    thick = _clip01(1.0 - (x / wb) ** 2)
    c.d += 0.03 + _clip01((wb - np.abs(x)) / 0.04) * (0.3 + 0.42 * thick)

    heart = _heart_frontal(p, f)
    ecm, eff, ptx, edema = (f.get(n) for n in (
        'Enlarged Cardiomediastinum', 'Pleural Effusion', 'Pneumothorax', 'Edema'))
    widen = 0.0 if ecm is None else (0.35, 0.55, 0.8)[_SEV[ecm.severity]]
    vessels = _vessel_texture(c.size, p.anatomy, False)
    for s in (-1, 1):
        box = ((-0.92, 0.02) if s < 0 else (-0.02, 0.92)) + (-0.86, 0.9)
        w = c.win(box)
        for g in (eff, ptx):  # these change the whole hemithorax
            if g is not None and s in _sides(g):
                c.win(box, g.name)
        xs, ys = x[w], y[w]
        xp = xs * s
        lat, med, bot = _lung_margins(xp, ys, p, s)
        env = np.minimum(np.minimum(lat, med), bot)
        if eff is not None and s in _sides(eff):
            height = (0.13, 0.33, 0.55)[_SEV[eff.severity]]
            level = _costophrenic_y(p, s) - height * (0.45 + 0.55 * (xp / 0.84) ** 2)
            env = np.minimum(env, level - ys)
        air = _clip01(env / 0.03)
        air *= 1.0 - _tilted(xs, ys, heart)
        air *= 1.0 - _mediastinum_frontal(xs, ys, widen)
        marks = c.sample(vessels, w)
        if edema is not None:
            marks = marks * (1.3, 1.5, 1.8)[_SEV[edema.severity]]
        # Darker apices and periphery, lighter bases under the overlying soft tissue.
        depth = (0.27 + 0.17 * thick[w]) * (1.0 - 0.22 * _clip01(ys * 2.0))
        dens = air * (0.16 * marks - depth) + 0.07 * _bump(xp, ys, 0.2, -0.04, 0.1, 0.16)
        if ptx is not None and s in _sides(ptx):
            gap = (0.05, 0.11, 0.2)[_SEV[ptx.severity]]
            outer = _clip01((gap - lat) / 0.006)  # pleural air, no lung markings
            dens -= air * (outer * (0.1 + 0.16 * marks) - 0.04 * (1.0 - outer))
            dens += 0.12 * air * _clip01(1.0 - np.abs(lat - gap) / 0.008)
        phi = _rib_phase(xp, ys)
        dens += _RIB * _rib_profile(phi) * _rib_extent(xp, phi)
        ant = _clip01((np.cos(2 * np.pi * (ys + 0.5 + 0.35 * xp) / 0.14) - 0.55) / 0.45)
        ant *= _clip01((xp - 0.28) / 0.1) * _clip01((0.84 - xp) / 0.05)
        ant *= _clip01((0.2 - ys) / 0.1) * _clip01((ys + 0.62) / 0.1)
        t = xp - 0.06
        clav = _clip01(1.0 - np.abs(ys + 0.6 + 0.45 * t - 0.3 * t * t) / 0.03)
        clav *= _clip01((xp - 0.05) / 0.03) * _clip01((0.76 - xp) / 0.03)
        c.d[w] += dens + 0.04 * ant + 0.14 * clav

    # Trachea and stomach bubble hold air.
    c.add((-0.05, 0.07, -1.0, -0.28), lambda xs, ys: -0.1 * _clip01(
        (0.035 - np.abs(xs - 0.01)) / 0.015) * _clip01((-0.32 - ys) / 0.05))
    gy = 0.62 + 0.05 * p.inspiration
    c.add((0.34, 0.6, gy - 0.08, gy + 0.08),
          lambda xs, ys: -0.12 * _ellipse(xs, ys, 0.47, gy, 0.11, 0.07, 0.5))
    # Thoracic spine: vertebral bodies and disc spaces seen through the mediastinum.
    c.add((-0.1, 0.1, -1.0, 1.0), lambda xs, ys: _clip01((0.075 - np.abs(xs)) / 0.025) * (
        0.03 + 0.02 * _clip01(np.cos(2 * np.pi * ys / 0.11) + 0.3)))
    # The silhouettes above already carry cardiomegaly and a wide mediastinum.
    if f.get('Cardiomegaly') is not None:
        c.win(_tilted_box(heart), 'Cardiomegaly')
    if ecm is not None:
        c.win((-0.4, 0.4, -1.0, 0.22), ecm.name)
    for item in f.items:
        draw = _DRAW[item.name][0]
        if draw is not None:
            draw(c, p, item, place(item.name))


def _rib_phase(xp, y):
    """Rib coordinate: rib k's centre line is phase k-1 (posterior ribs sag laterally)."""
    return (y + 0.8 - _rib_sag(xp)) / 0.118


def _rib_sag(xp):
    return 0.9 * (xp - 0.35) ** 2 - 0.1


def _rib_profile(phi):
    return _clip01((np.cos(2 * np.pi * phi) - 0.4) / 0.6)


def _rib_extent(xp, phi):
    """Ribs 1-10 between the spine and the lateral chest wall."""
    return (_clip01((xp - 0.09) / 0.04) * _clip01((0.86 - xp) / 0.05)
            * _clip01(phi + 0.4) * _clip01(9.4 - phi))


def _lung_env(xs, ys, p: Patient, s: int):
    lat, med, bot = _lung_margins(xs * s, ys, p, s)
    return _clip01(np.minimum(np.minimum(lat, med), bot) / 0.03)


def _zone_centres(fr: Finding, rng, lateral: bool, spread: float = 0.04):
    """Centre of the finding in each of its sides, jittered within its zone."""
    out = []
    for s in _sides(fr):
        jx, jy = rng.uniform(-spread, spread, 2)
        if lateral:
            zx, zy = _ZONE_LATERAL[fr.zone]
            out.append((s, zx + jx, zy + jy))
        else:
            zx, zy = _ZONE_FRONTAL[fr.zone]
            out.append((s, s * (zx + jx), zy + jy))
    return out


def _f_airspace(c, p, fr, rng, lateral=False):
    dens, (base, contrast), extents = _AIRSPACE[fr.name]
    r = extents[_SEV[fr.severity]]
    env = _lat_env if lateral else _lung_env
    for s, cx, cy in _zone_centres(fr, rng, lateral):
        w = c.win((cx - r, cx + r, cy - r, cy + r), fr.name)
        if w is None:
            continue
        xs, ys = c.x[w], c.y[w]
        patch = _clip01(base + contrast * c.patches(w, rng))
        c.d[w] += dens * np.sqrt(_bump(xs, ys, cx, cy, r, 0.9 * r)) * patch * env(xs, ys, p, s)


def _f_edema(c, p, fr, rng):
    k = (0.6, 1.0, 1.4)[_SEV[fr.severity]]
    for s in (-1, 1):
        w = c.win((min(0.0, s * 0.86), max(0.0, s * 0.86), -0.55, 0.5), fr.name)
        xs, ys = c.x[w], c.y[w]
        haze = 0.16 * k * _bump(xs, ys, s * 0.27, -0.02, 0.34, 0.42) ** 0.6 * _clip01(
            0.8 + 0.2 * c.patches(w, rng))
        kerley = sum(_tube(xs, ys, [(s * 0.66, 0.12 + 0.05 * j), (s * 0.76, 0.12 + 0.05 * j)],
                           0.007) for j in range(int(2 + 2 * k)))
        c.d[w] += (haze + 0.08 * k * kerley) * _lung_env(xs, ys, p, s)


def _f_atelectasis(c, p, fr, rng, lateral=False):
    width = (0.014, 0.02, 0.028)[_SEV[fr.severity]]
    env = _lat_env if lateral else _lung_env
    for s, cx, cy in _zone_centres(fr, rng, lateral, 0.03):
        half, tilt = rng.uniform(0.13, 0.18), rng.uniform(-0.15, 0.15)
        pts = [(cx - half, cy - half * tilt), (cx + half, cy + half * tilt)]
        c.add(_points_box(pts, width), lambda xs, ys, pts=pts, s=s: 0.24 * _tube(
            xs, ys, pts, width) ** 0.7 * env(xs, ys, p, s), fr.name)


def _f_lesion(c, p, fr, rng, lateral=False):
    ((_, cx, cy),) = _zone_centres(fr, rng, lateral, 0.05)
    r = 0.5 * LESION_MM[fr.kind][_SEV[fr.severity]] * _MM
    lobes = [(cx, cy, r)]
    if fr.kind == 'mass':  # lobulated
        lobes = [(cx + 0.3 * r * math.cos(a), cy + 0.3 * r * math.sin(a), 0.72 * r)
                 for a in rng.uniform(0, 2 * np.pi, 3)] + [(cx, cy, 0.8 * r)]
    c.add((cx - 1.1 * r, cx + 1.1 * r, cy - 1.1 * r, cy + 1.1 * r), lambda xs, ys: 0.27 * (
        np.maximum.reduce([_ellipse(xs, ys, lx, ly, lr, lr, 0.25) for lx, ly, lr in lobes])),
        fr.name)


def _f_granuloma(c, p, fr, rng, lateral=False):
    ((_, cx, cy),) = _zone_centres(fr, rng, lateral, 0.08)
    r = rng.uniform(2.5, 4.0) * _MM
    c.add((cx - r, cx + r, cy - r, cy + r),
          lambda xs, ys: 0.5 * _ellipse(xs, ys, cx, cy, r, r, 0.3), fr.name)


def _f_pleural_other(c, p, fr, rng):
    t = (0.04, 0.06, 0.085)[_SEV[fr.severity]]
    for s in _sides(fr):
        def thickening(xs, ys, s=s):
            lat, med, bot = _lung_margins(xs * s, ys, p, s)
            inside = _clip01(np.minimum(lat, bot) / 0.01) * _clip01(med / 0.02)
            return 0.3 * _clip01(1.0 - lat / t) * inside * _clip01((0.1 - ys) / 0.1)
        c.add((min(s * 0.2, s * 0.86), max(s * 0.2, s * 0.86), -0.8, 0.1), thickening, fr.name)


def _f_fracture(c, p, fr, rng):
    (s,) = _sides(fr)
    xf = rng.uniform(0.5, 0.68)
    yk = -0.8 + (fr.rib - 1) * 0.118 + _rib_sag(xf)

    def change(xs, ys):
        xp = xs * s
        if fr.kind == 'healed':  # callus: a fusiform bony bulge around the rib
            return 0.12 * _bump(xp, ys, xf, yk, 0.05, 0.035)
        phi = _rib_phase(xp, ys)
        own = (np.abs(phi - (fr.rib - 1)) < 0.5) * _rib_extent(xp, phi)
        step = 0.35 * _clip01(1.0 - np.abs(xp - xf) / 0.09) * (xp > xf)  # displaced fragment
        gap = _clip01((np.abs(xp - xf) - 0.012) / 0.01)
        return _RIB * own * (_rib_profile(phi + step) * gap - _rib_profile(phi))
    c.add((s * xf - 0.1, s * xf + 0.1, yk - 0.08, yk + 0.08), change, fr.name)


def _f_device(c, p, fr, rng, lateral=False):
    s = _sides(fr)[0]
    if fr.kind == 'pacemaker':
        gx, gy = (-0.72, -0.5) if lateral else (s * 0.55, -0.56)
        lead = ([(gx, gy), (-0.45, -0.62), (-0.1, -0.3), (-0.2, 0.15), (-0.35, 0.3)] if lateral
                else [(gx - s * 0.04, gy), (s * 0.25, -0.62), (-0.12, -0.3), (-0.14, 0.12),
                      (0.15, 0.38)])
        rx, ry = (0.04, 0.07) if lateral else (0.085, 0.06)
        c.add((gx - rx, gx + rx, gy - ry, gy + ry), lambda xs, ys: 0.7 * np.sqrt(
            np.sqrt(_ellipse(xs, ys, gx, gy, rx, ry, 0.6))), fr.name)
        path, amp = lead, 0.45
    elif fr.kind == 'central line':
        path = ([(0.0, -1.0), (-0.04, -0.6), (-0.12, -0.22)] if lateral
                else [(s * 0.3, -1.0), (s * 0.2, -0.72), (-0.1, -0.5), (-0.09, -0.22)])
        amp = 0.35
    elif fr.kind == 'endotracheal tube':
        top, tip = ((-0.01, -1.0), (0.06, -0.42)) if lateral else ((0.01, -1.0), (0.01, -0.45))
        for d in (-0.022, 0.022):
            wall = [(top[0] + d, top[1]), (tip[0] + d, tip[1])]
            c.add(_points_box(wall, 0.01),
                  lambda xs, ys, wall=wall: 0.3 * _tube(xs, ys, wall, 0.007), fr.name)
        return
    else:  # enteric tube down the oesophagus into the stomach
        path = ([(0.14, -1.0), (0.2, 0.1), (0.1, 0.45), (-0.15, 0.6)] if lateral
                else [(0.03, -1.0), (0.04, -0.2), (0.1, 0.35), (0.4, 0.52), (0.5, 0.5)])
        amp = 0.3
    c.add(_points_box(path, 0.01), lambda xs, ys: amp * _tube(xs, ys, path, 0.008), fr.name)


def _f_degenerative(c, p, fr, rng, lateral=False):
    k = _SEV[fr.severity]
    r = (0.014, 0.019, 0.025)[k]
    for j in rng.choice(9, size=3 + 2 * k, replace=False):
        ly = 0.11 * (j - 4.0)
        if lateral:  # anterior osteophytes at the endplates
            cx = 0.5 - 0.4 * r
        else:
            cx = (1 if rng.random() < 0.5 else -1) * (0.078 + 0.5 * r)
        c.add((cx - r, cx + r, ly - r, ly + r),
              lambda xs, ys, cx=cx, ly=ly: 0.35 * _bump(xs, ys, cx, ly, r, 0.7 * r), fr.name)


def _f_hernia(c, p, fr, rng, lateral=False):
    r = (0.09, 0.12, 0.16)[_SEV[fr.severity]]
    cx, cy = (0.2, 0.34) if lateral else (0.03, 0.36)

    def sac(xs, ys):  # retrocardiac soft tissue with an air-fluid level
        inside = _ellipse(xs, ys, cx, cy, r, 0.8 * r, 0.15)
        return inside * (0.07 - 0.2 * _clip01((cy - 0.15 * r - ys) / 0.006))
    c.add((cx - r, cx + r, cy - 0.8 * r, cy + 0.8 * r), sac, fr.name)


# ------------------------------------------------------------------------------ lateral view

def _lat_margins(z, y, p: Patient):
    """Signed margins (anterior, posterior, bottom) of the lungs on the lateral view."""
    h = _clip01(1.0 - ((y + 0.22) / 0.54) ** 2)
    q = np.where(y < -0.22, np.sqrt(h), np.float32(1.0))
    return (z - 0.03 + 0.63 * q, 0.03 + 0.6 * q - z,
            0.42 + 0.05 * p.inspiration + 0.24 * ((z + 0.15) / 0.78) ** 2 - y)


def _lat_env(zs, ys, p: Patient, s: int = 0):
    del s
    ant, post, bot = _lat_margins(zs, ys, p)
    return _clip01(np.minimum(np.minimum(ant, post), bot) / 0.03)


def _heart_lateral(p: Patient, f: Findings):
    """Heart ellipse on the lateral view, long axis from upper-posterior to lower-anterior."""
    sev = f.get('Cardiomegaly')
    grow = (1.0, 1.0) if sev is None else ((1.15, 1.12), (1.25, 1.2), (1.38, 1.3))[
        _SEV[sev.severity]]
    rx, ry = 0.33 * p.heart * grow[0], 0.25 * grow[1]
    return -0.2 + 0.4 * (rx - 0.33), 0.27 + 0.3 * (ry - 0.25), rx, ry, -0.75


def _lateral(c: _Canvas, p: Patient, f: Findings, place: Callable[[str], np.random.Generator]):
    z, y = c.x, c.y
    top = 1.0 - _smooth((y + 1.0) / 0.3)
    front = -0.74 + 0.08 * y * y + 0.42 * top
    back = 0.84 - 0.05 * y * y - 0.3 * top
    c.d += 0.03 + _clip01((z - front) / 0.04) * _clip01((back - z) / 0.04) * 0.62

    heart = _heart_lateral(p, f)
    ecm, eff, ptx, edema = (f.get(n) for n in (
        'Enlarged Cardiomediastinum', 'Pleural Effusion', 'Pneumothorax', 'Edema'))
    aorta = [(-0.16, 0.02), (-0.17, -0.38), (-0.02, -0.52), (0.2, -0.42), (0.31, 0.3)]
    reach = 0.0 if ecm is None else (0.1, 0.15, 0.21)[_SEV[ecm.severity]]
    wide = (-0.22 - reach, -0.25, reach + 0.06, 0.3)  # ellipse cx, cy, rx, ry
    box = (-0.66, 0.7, -0.82, 0.72)
    w = c.win(box)
    for g in (eff, ptx):
        if g is not None:
            c.win(box, g.name)
    zs, ys = z[w], y[w]
    ant, post, bot = _lat_margins(zs, ys, p)
    env = np.minimum(np.minimum(ant, post), bot)
    if eff is not None:
        height = (0.1, 0.26, 0.45)[_SEV[eff.severity]] * (1.15 if eff.side == 'bilateral' else 1)
        level = (0.66 + 0.05 * p.inspiration
                 - height * (0.45 + 0.55 * ((zs + 0.6) / 1.23) ** 2))
        env = np.minimum(env, level - ys)
    air = _clip01(env / 0.035)
    air *= 1.0 - 0.8 * _tilted(zs, ys, heart)
    air *= 1.0 - 0.2 * _tube(zs, ys, aorta, 0.09)
    if ecm is not None:  # anterior mediastinum fills the retrosternal clear space
        air *= 1.0 - 0.75 * _ellipse(zs, ys, *wide, 0.8)
    marks = c.sample(_vessel_texture(c.size, p.anatomy, True), w)
    if edema is not None:
        marks = marks * (1.3, 1.5, 1.8)[_SEV[edema.severity]]
    dens = air * (0.12 * marks - 0.28) + 0.05 * _bump(zs, ys, 0.05, -0.05, 0.14, 0.16)
    if ptx is not None:  # apical-posterior lucency
        gap = (0.04, 0.08, 0.14)[_SEV[ptx.severity]]
        upper = _clip01((-0.05 - ys) / 0.1)
        dens -= air * upper * _clip01((gap - post) / 0.006) * (0.08 + 0.1 * marks)
        dens += 0.07 * air * upper * _clip01(1.0 - np.abs(post - gap) / 0.008)
    ribs = _clip01((np.cos(2 * np.pi * (ys - 0.4 * zs) / 0.13) - 0.5) / 0.5)
    dens += 0.03 * ribs * _clip01(zs / 0.2) * _clip01((0.7 - zs) / 0.05) * _clip01(env / 0.05)
    c.d[w] += dens

    trachea = [(-0.02, -1.0), (0.08, -0.12)]
    c.add(_points_box(trachea, 0.04), lambda zs, ys: -0.1 * _tube(zs, ys, trachea, 0.035) ** 0.3)
    c.add((-0.76, -0.6, -0.55, 0.3), lambda zs, ys: 0.06 * _clip01(
        (0.03 - np.abs(zs - 0.05 * ys * ys + 0.68)) / 0.012) * _clip01((0.3 - ys) / 0.05)
        * _clip01((ys + 0.55) / 0.05))
    gy = 0.68 + 0.05 * p.inspiration
    c.add((-0.36, -0.12, gy - 0.06, gy + 0.06),
          lambda zs, ys: -0.1 * _ellipse(zs, ys, -0.24, gy, 0.11, 0.05, 0.5))
    c.add((0.44, 0.7, -1.0, 1.0),
          lambda zs, ys: _clip01(np.minimum(zs - 0.46, 0.68 - zs) / 0.02) * (
              0.03 + 0.03 * _clip01((np.cos(2 * np.pi * ys / 0.11) + 0.7) / 0.5)))
    if f.get('Cardiomegaly') is not None:
        c.win(_tilted_box(heart), 'Cardiomegaly')
    if ecm is not None:
        c.win((wide[0] - wide[2], wide[0] + wide[2], wide[1] - wide[3], wide[1] + wide[3]),
              ecm.name)
    for item in f.items:
        draw = _DRAW[item.name][1]
        if draw is not None:
            draw(c, p, item, place(item.name))


def _lat_edema(c, p, fr, rng):
    k = (0.6, 1.0, 1.4)[_SEV[fr.severity]]
    w = c.win((-0.4, 0.5, -0.5, 0.45), fr.name)
    zs, ys = c.x[w], c.y[w]
    haze = 0.12 * k * _bump(zs, ys, 0.05, -0.02, 0.45, 0.47) ** 0.6 * _clip01(
        0.8 + 0.2 * c.patches(w, rng))
    c.d[w] += haze * _lat_env(zs, ys, p)


def _lat_pleural_other(c, p, fr, rng):
    t = (0.03, 0.045, 0.065)[_SEV[fr.severity]] * (1.3 if fr.side == 'bilateral' else 1.0)

    def thickening(zs, ys):
        ant, post, bot = _lat_margins(zs, ys, p)
        inside = _clip01(np.minimum(post, bot) / 0.01) * _clip01(ant / 0.02)
        return 0.18 * _clip01(1.0 - post / t) * inside * _clip01((0.1 - ys) / 0.1)
    c.add((-0.1, 0.7, -0.8, 0.1), thickening, fr.name)


def _lateral_of(fn):
    return functools.partial(fn, lateral=True)


# name -> (frontal drawer, lateral drawer); None: shown by the anatomy (or not on that view).
_DRAW = {
    'Enlarged Cardiomediastinum': (None, None),
    'Cardiomegaly': (None, None),
    'Pleural Effusion': (None, None),
    'Pneumothorax': (None, None),
    'Lung Opacity': (_f_airspace, _lateral_of(_f_airspace)),
    'Consolidation': (_f_airspace, _lateral_of(_f_airspace)),
    'Pneumonia': (_f_airspace, _lateral_of(_f_airspace)),
    'Edema': (_f_edema, _lat_edema),
    'Atelectasis': (_f_atelectasis, _lateral_of(_f_atelectasis)),
    'Lung Lesion': (_f_lesion, _lateral_of(_f_lesion)),
    'calcified granuloma': (_f_granuloma, _lateral_of(_f_granuloma)),
    'Pleural Other': (_f_pleural_other, _lat_pleural_other),
    'Fracture': (_f_fracture, None),  # rib fractures are rarely seen on the lateral view
    'Support Devices': (_f_device, _lateral_of(_f_device)),
    'degenerative spine': (_f_degenerative, _lateral_of(_f_degenerative)),
    'hiatal hernia': (_f_hernia, _lateral_of(_f_hernia)),
}


# ------------------------------------------------------------------------------ public API

def _render(findings: Findings, seed: int, size: int, views: int):
    if views not in (1, 2):
        raise ValueError(f'views must be 1 (frontal) or 2 (frontal, lateral), got {views}.')
    if size < 32:
        raise ValueError(f'size must be >= 32 pixels, got {size}.')
    patient = findings.patient or Patient.from_seed(seed)
    resolved = Findings(tuple(item.resolved(_rng(seed, 1, _finding_key(item.name)))
                              for item in findings.items), patient)
    images, canvases = [], []
    for view, draw in enumerate((_frontal, _lateral)[:views]):
        c = _Canvas(size, patient)
        draw(c, patient, resolved, lambda name, view=view: _rng(seed, 2 + view, _finding_key(name)))
        images.append(c.image(patient, _rng(seed, 9, view)))
        canvases.append(c)
    return np.stack(images), canvases


def render_study(findings: Findings, *, seed: int, size: int = 256, views: int = 2) -> np.ndarray:
    """uint8 [views, size, size] radiographs (view 0 frontal, view 1 lateral) of `findings`.

    Unstated attributes (side, severity, ...) and all fine placement come from `seed`; the patient
    comes from `findings.patient`, or from `seed` when that is None.
    """
    return _render(findings, seed, size, views)[0]


def finding_regions(findings: Findings, *, seed: int, size: int = 256,
                    views: int = 2) -> dict[str, np.ndarray]:
    """Per finding, a bool [views, size, size] mask of the pixels its drawing may change."""
    _, canvases = _render(findings, seed, size, views)
    out = {}
    for name in findings.names:
        mask = np.zeros((views, size, size), bool)
        for v, c in enumerate(canvases):
            for rows, cols in c.regions.get(name, ()):  # + the reach of the final blur
                mask[v, max(rows.start - 1, 0):rows.stop + 1,
                     max(cols.start - 1, 0):cols.stop + 1] = True
        out[name] = mask
    return out


# ------------------------------------------------------------------------------ contact sheet

def _contact_examples() -> list[tuple[str, Findings]]:
    F = Finding
    return [
        ('normal', Findings()),
        ('normal', Findings()),
        ('normal', Findings()),
        ('cardiomegaly', Findings((F('Cardiomegaly', severity='severe'),))),
        ('pleural effusion', Findings((F('Pleural Effusion', side='left', severity='moderate'),))),
        ('pneumothorax', Findings((F('Pneumothorax', side='right', severity='moderate'),))),
        ('pneumonia', Findings((F('Pneumonia', side='right', zone='lower', severity='severe'),))),
        ('consolidation', Findings((F('Consolidation', side='left', zone='upper',
                                      severity='moderate'),))),
        ('edema', Findings((F('Edema', severity='severe'),
                            F('Cardiomegaly', severity='moderate')))),
        ('lung mass', Findings((F('Lung Lesion', side='left', zone='upper', kind='mass',
                                  severity='moderate'),))),
        ('atelectasis', Findings((F('Atelectasis', side='bilateral', zone='lower',
                                    severity='severe'),))),
        ('wide mediastinum', Findings((F('Enlarged Cardiomediastinum', severity='severe'),))),
        ('devices', Findings((F('Support Devices', side='left', kind='pacemaker'),
                              F('calcified granuloma', side='right', zone='upper')))),
        ('spine, hernia', Findings((F('degenerative spine', severity='severe'),
                                    F('hiatal hernia', severity='moderate')))),
        ('rib fracture', Findings((F('Fracture', side='left', kind='acute', rib=6),
                                   F('Pleural Other', side='right', severity='severe')))),
    ]


def contact_sheet(path: str, size: int = 160):
    """Writes a PNG grid of studies (frontal + lateral) captioned with their findings."""
    examples = _contact_examples()
    cols, caption = 5, 34
    rows = -(-len(examples) // cols)
    cell_w, cell_h = 2 * size + 8, size + caption
    sheet = Image.new('L', (cols * cell_w, rows * cell_h), 255)
    draw = ImageDraw.Draw(sheet)
    for i, (title, findings) in enumerate(examples):
        views = render_study(findings, seed=1000 + i, size=size)
        x0, y0 = (i % cols) * cell_w, (i // cols) * cell_h
        for v, img in enumerate(views):
            sheet.paste(Image.fromarray(img), (x0 + v * size, y0))
        draw.text((x0 + 2, y0 + size + 2), title.upper(), fill=0)
        lines = textwrap.wrap(findings.describe(), width=max(10, cell_w // 6 - 1))[:2]
        for j, line in enumerate(lines):
            draw.text((x0 + 2, y0 + size + 12 + 10 * j), line, fill=70)
    atomic.write_with(path, lambda tmp: sheet.save(tmp, format='PNG', optimize=True))


def main(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--contact-sheet', metavar='OUT.png', required=True,
                        help='write a grid of normal and abnormal phantom studies')
    parser.add_argument('--size', type=int, default=160, help='pixels per view')
    args = parser.parse_args(argv)
    contact_sheet(args.contact_sheet, size=args.size)
    print(f'wrote {args.contact_sheet}')


if __name__ == '__main__':
    main()
