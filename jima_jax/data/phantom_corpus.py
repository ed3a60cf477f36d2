"""The two phantom sources: a synthetic report corpus and IU X-ray reports with phantom images.

`synthetic_studies` samples findings from an imbalanced, IU X-ray-like distribution (about one
study in three normal, the rarest findings in well under 2% of studies), renders them with
`phantom.render_study` and writes the findings section from a template grammar with many weighted
paraphrases, so both JIMA imbalances (normal/abnormal and frequent/infrequent tokens) exist by
construction and every report states exactly what its image shows.

`iu_phantom_studies` keeps the real IU X-ray report text (R2Gen `annotation.json`) and renders each
study's image from what the labeler and a few attribute rules read in its report: the real text
distribution with an image signal under our control. Uncertain mentions are drawn as mild findings.

Both yield `types.RawStudy` records with lazy `load_views`; everything is deterministic per study
(study seeds are hashes of the configured seed and the study id, never Python's salted hash()).
Each record's `meta['findings']` is what its image was drawn from; `truth_labels` turns it into the
row the prepared phantom datasets store (`PreparedSplit.truth_labels`, phantom-truth evaluation).
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any, Iterator, Sequence

import numpy as np

from jima_jax.data import phantom, sources, types
from jima_jax.data.phantom import Finding, Findings
from jima_jax.text import symbols

# Bump when the renderer, the grammar, the distributions or the stored fields change: prepared
# phantom data depend on it (it is part of their prepare fingerprint and their tfds version).
VERSION = '1.1.0'

# Columns of a drawn-truth row: the 14 CheXpert observations (OBSERVATIONS order, "No Finding"
# included) and then the three non-CheXpert IU findings the phantom also draws.
TRUTH_COLUMNS = symbols.OBSERVATIONS + phantom.EXTRA_FINDINGS


def truth_labels(findings: Findings) -> np.ndarray:
    """int8[len(TRUTH_COLUMNS)] of 1/0: what the image was drawn from (`Findings.labels()` for the
    14 observations, then one entry per extra finding). Every entry is known, none is uncertain."""
    extra = [int(name in findings.names) for name in phantom.EXTRA_FINDINGS]
    return np.concatenate([findings.labels(), np.asarray(extra, np.int8)]).astype(np.int8)


# ------------------------------------------------------------------------ finding distribution

NORMAL_SHARE = 1.0 / 3.0  # IU X-ray: MeSH "normal" marks ~1/3 of the studies (spec section 2)
# Share of all studies showing each finding (IU X-ray-like; the rarest well under 2%).
PREVALENCE = {
    'degenerative spine': 0.18,
    'calcified granuloma': 0.14,
    'Cardiomegaly': 0.12,
    'Lung Opacity': 0.11,
    'Atelectasis': 0.09,
    'Lung Lesion': 0.06,
    'Pleural Effusion': 0.05,
    'Support Devices': 0.05,
    'Enlarged Cardiomediastinum': 0.04,
    'Fracture': 0.04,
    'Pleural Other': 0.03,
    'Consolidation': 0.025,
    'Edema': 0.018,
    'hiatal hernia': 0.015,
    'Pneumonia': 0.012,
    'Pneumothorax': 0.006,
}
# Attribute distributions: value -> weight.
_SEVERITY = {'mild': 0.5, 'moderate': 0.35, 'severe': 0.15}
_SIDE = {'right': 0.45, 'left': 0.4, 'bilateral': 0.15}
_SIDE_OFTEN_BOTH = {'right': 0.35, 'left': 0.35, 'bilateral': 0.3}
_ZONE = {'lower': 0.5, 'upper': 0.3, 'middle': 0.2}
_ATTRIBUTE_WEIGHTS = {
    'Atelectasis': dict(side=_SIDE_OFTEN_BOTH, zone={'lower': 0.8, 'middle': 0.2}),
    'Pleural Effusion': dict(side=_SIDE_OFTEN_BOTH),
    'Pleural Other': dict(side=_SIDE_OFTEN_BOTH),
    'calcified granuloma': dict(zone={'upper': 0.45, 'middle': 0.25, 'lower': 0.3}),
    'Lung Lesion': dict(kind={'nodule': 0.85, 'mass': 0.15}),
    'Fracture': dict(kind={'healed': 0.7, 'acute': 0.3}),
    'Support Devices': dict(kind={'pacemaker': 0.4, 'central line': 0.3,
                                  'endotracheal tube': 0.15, 'enteric tube': 0.15}),
}


def _pick(rng: np.random.Generator, weights: dict) -> Any:
    keys = list(weights)
    p = np.asarray([weights[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


@functools.lru_cache(maxsize=8)
def _conditional_rates(normal_share: float) -> dict[str, float]:
    """Per-finding Bernoulli rates p_f = c * prevalence_f such that, drawing them independently
    and redrawing all-empty sets, each finding's overall share equals PREVALENCE[f]:
    (1 - normal_share) * p_f / (1 - prod(1 - p_j)) = prevalence_f."""
    if not 0.0 <= normal_share < 1.0:
        raise ValueError(f'data.phantom.normal_share={normal_share} must be in [0, 1).')
    m = np.asarray(list(PREVALENCE.values()))
    target = 1.0 / (1.0 - normal_share)
    if target < 1.0 / m.sum():
        raise ValueError(f'normal_share={normal_share} is too small for PREVALENCE: abnormal '
                         f'studies would need fewer than one finding each.')
    lo, hi = 1e-9, 1.0 / m.max()
    for _ in range(100):  # c / (1 - prod(1 - c m)) increases with c
        c = 0.5 * (lo + hi)
        lo, hi = (c, hi) if c / (1.0 - np.prod(1.0 - c * m)) < target else (lo, c)
    return {name: float(lo * share) for name, share in PREVALENCE.items()}


def sample_findings(rng: np.random.Generator, normal_share: float = NORMAL_SHARE) -> Findings:
    """One study's findings (every attribute stated) and patient."""
    patient = phantom.Patient.sample(rng)
    if rng.random() < normal_share:
        return Findings((), patient)
    rates = _conditional_rates(normal_share)
    names = list(rates)
    p = np.asarray([rates[n] for n in names])
    while True:
        present = rng.random(len(names)) < p
        if present.any():
            break
    items = tuple(_sample_attributes(name, rng) for name, on in zip(names, present) if on)
    return Findings(items, patient)


def _sample_attributes(name: str, rng: np.random.Generator) -> Finding:
    allowed = phantom.ATTRIBUTES[name]
    special = _ATTRIBUTE_WEIGHTS.get(name, {})
    values = {}
    for attr, choices in allowed.items():
        default = {'side': _SIDE, 'severity': _SEVERITY, 'zone': _ZONE}.get(attr)
        weights = special.get(attr) or default or {c: 1.0 for c in choices}
        weights = {k: w for k, w in weights.items() if k in choices}
        values[attr] = _pick(rng, weights)
    if name == 'Support Devices':  # pacemakers mostly left, central lines mostly right
        usual = 'left' if values['kind'] == 'pacemaker' else 'right'
        values['side'] = usual if rng.random() < 0.8 else ('right' if usual == 'left' else 'left')
    return Finding(name, **values)


# ------------------------------------------------------------------------ report grammar
# Each alternative is (weight, template); unequal weights make some phrasings frequent and others
# rare, so the vocabulary has a long tail. Moderate severity is the unmarked form ('' below).

_ADVERB = {'mild': ('mildly',), 'moderate': ('',), 'severe': ('markedly', 'severely')}
_ADJ = {
    'Cardiomegaly': {'mild': ('mild',), 'moderate': ('moderate',), 'severe': ('marked', 'severe')},
    'Enlarged Cardiomediastinum': {'mild': ('mild',), 'moderate': ('',), 'severe': ('marked',)},
    'Lung Opacity': {'mild': ('mild', 'subtle', 'faint'), 'moderate': ('',),
                     'severe': ('extensive', 'dense')},
    'Consolidation': {'mild': ('small', 'mild'), 'moderate': ('',),
                      'severe': ('extensive', 'dense')},
    'Pneumonia': {'mild': ('mild', 'early'), 'moderate': ('',), 'severe': ('extensive', 'severe')},
    'Edema': {'mild': ('mild',), 'moderate': ('moderate',), 'severe': ('severe', 'marked')},
    'Atelectasis': {'mild': ('mild', 'minimal', 'subsegmental'), 'moderate': ('',),
                    'severe': ('extensive', 'marked')},
    'Pneumothorax': {'mild': ('small',), 'moderate': ('moderate',), 'severe': ('large',)},
    'Pleural Effusion': {'mild': ('small',), 'moderate': ('moderate',), 'severe': ('large',)},
    'Pleural Other': {'mild': ('mild', 'minimal'), 'moderate': ('',), 'severe': ('marked',)},
    'degenerative spine': {'mild': ('mild',), 'moderate': ('moderate',),
                           'severe': ('severe', 'advanced')},
    'hiatal hernia': {'mild': ('small',), 'moderate': ('moderate',), 'severe': ('large',)},
}
_ORDINALS = {3: ('3rd', 'third'), 4: ('4th', 'fourth'), 5: ('5th', 'fifth'), 6: ('6th', 'sixth'),
             7: ('7th', 'seventh'), 8: ('8th', 'eighth'), 9: ('9th', 'ninth')}

_TEMPLATES = {
    'Cardiomegaly': [(4, 'the heart is {adv} enlarged'), (3, '{adj} cardiomegaly'),
                     (2, 'there is {adj} cardiomegaly'),
                     (2, 'the cardiac silhouette is {adv} enlarged'),
                     (1, 'heart size is {adv} enlarged'),
                     (1, '{adj} enlargement of the cardiac silhouette')],
    'Enlarged Cardiomediastinum': [(4, 'the mediastinum is {adv} widened'),
                                   (2, 'there is {adj} widening of the superior mediastinum'),
                                   (1, 'the mediastinal contour is {adv} widened'),
                                   (1, '{adj} mediastinal widening')],
    'Lung Opacity': [(4, 'there is {adj} opacity in the {loc}'),
                     (3, '{adj} airspace opacity in the {loc}'),
                     (2, '{adj} {loca} airspace disease'),
                     (1, 'there is an area of {adj} opacity in the {loc}'),
                     (1, '{adj} {loca} infiltrate')],
    'Consolidation': [(4, 'there is {adj} consolidation in the {loc}'),
                      (2, '{adj} {loca} consolidation'),
                      (1, '{adj} airspace consolidation of the {loc}')],
    'Pneumonia': [(3, '{adj} {loca} pneumonia'), (2, 'there is {adj} pneumonia in the {loc}'),
                  (1, 'findings of {adj} pneumonia in the {loc}')],
    'Edema': [(3, '{adj} pulmonary edema'), (2, 'there is {adj} interstitial edema'),
              (1, 'pulmonary vascular congestion with {adj} interstitial edema'),
              (1, '{adj} bilateral perihilar edema'),
              (1, '{adj} interstitial pulmonary edema with kerley b lines')],
    'Atelectasis': [(4, '{adj} {loca} atelectasis'), (2, 'there is {adj} atelectasis in the {loc}'),
                    (1, '{adj} platelike atelectasis in the {loc}')],
    'Pneumothorax': [(3, 'there is a {adj} {side} pneumothorax'),
                     (2, '{adj} {side} apical pneumothorax'),
                     (1, 'a {adj} pneumothorax is present on the {side}')],
    'Pleural Effusion': [(4, '{adj} {side} pleural {effusion}'),
                         (2, 'there is a {adj} {side} pleural {effusion}'),
                         (1, '{adj} {side} {effusion}')],
    'Pleural Other': [(3, '{adj} {side} apical pleural thickening'),
                      (1, '{adj} pleural thickening at the {apex}')],
    'Fracture': [(3, '{age} {side} {ord} rib fracture'),
                 (2, '{age} fracture of the {side} {ord} rib'),
                 (1, 'there is {a_age} fracture of the {side} {ord} rib')],
    'calcified granuloma': [(4, 'calcified granuloma in the {loc}'),
                            (2, '{loca} calcified granuloma'),
                            (1, 'a small calcified granuloma is seen in the {loc}'),
                            (1, 'there is a calcified granuloma in the {loc}')],
    'degenerative spine': [(4, '{adj} degenerative changes of the thoracic spine'),
                           (2, 'there are {adj} degenerative changes in the spine'),
                           (1, '{adj} degenerative disease of the thoracic spine'),
                           (1, '{adj} thoracic spondylosis')],
    'hiatal hernia': [(3, '{adj} hiatal hernia'), (2, 'there is a {adj} hiatal hernia'),
                      (1, 'a {adj} retrocardiac hiatal hernia is noted')],
}
_LESION = {
    'nodule': [(3, 'there is a {mm} mm nodule in the {loc}'), (2, 'a {mm} mm {loca} nodule'),
               (1, '{loca} pulmonary nodule measuring {mm} mm')],
    'mass': [(3, 'there is a {cm} cm mass in the {loc}'), (2, 'a {cm} cm {loca} mass'),
             (1, '{loca} mass measuring {cm} cm')],
}
_DEVICE = {
    'pacemaker': [(3, '{side} chest wall pacemaker with lead in the right ventricle'),
                  (2, 'there is a {side} pacemaker with lead tip in the right ventricle'),
                  (1, 'a {side} sided pacemaker is present')],
    'central line': [(3, '{side} internal jugular central venous catheter with tip in the svc'),
                     (2, '{side} central line with the tip in the superior vena cava'),
                     (1, 'a {side} jugular catheter terminates in the svc')],
    'endotracheal tube': [(3, 'endotracheal tube with tip 3 cm above the carina'),
                          (1, 'the endotracheal tube terminates above the carina')],
    'enteric tube': [(2, 'an enteric tube extends below the diaphragm into the stomach'),
                     (2, 'nasogastric tube with tip in the stomach'),
                     (1, 'a feeding tube terminates in the stomach')],
}
# Location words: (weight, text) for a noun ('{loc}') and an adjective ('{loca}') position.
_LOC_NOUN = {
    'upper': [(3, '{s} upper lobe'), (1, '{s} upper lung'), (1, '{s} upper lung zone')],
    'middle': [(3, '{mid}'), (1, '{s} midlung')],
    'lower': [(3, '{s} lower lobe'), (2, '{s} lung base'), (1, '{s} base')],
}
_LOC_NOUN_BOTH = {
    'upper': [(2, 'both upper lobes'), (1, 'bilateral upper lobes')],
    'middle': [(2, 'right middle lobe and lingula'), (1, 'midlungs bilaterally')],
    'lower': [(2, 'lung bases bilaterally'), (2, 'both lower lobes'), (1, 'both lung bases')],
}
_LOC_ADJ = {
    'upper': [(3, '{s} upper lobe'), (1, '{s} upper lung')],
    'middle': [(3, '{mid}'), (1, '{s} midlung')],
    'lower': [(2, '{s} lower lobe'), (2, '{s} basilar')],
}
_LOC_ADJ_BOTH = {'upper': [(1, 'bilateral upper lobe')], 'middle': [(1, 'bilateral midlung')],
                 'lower': [(3, 'bibasilar'), (1, 'bilateral lower lobe')]}

# Normal statements: (weight, text, the findings the sentence says are absent).
_LUNGS = ('Lung Opacity', 'Consolidation', 'Pneumonia', 'Atelectasis', 'Edema', 'Lung Lesion',
          'calcified granuloma')
_CARDIOPULMONARY = _LUNGS + ('Cardiomegaly', 'Enlarged Cardiomediastinum', 'Pneumothorax',
                             'Pleural Effusion', 'Pleural Other')
_NORMAL = {
    'heart': [(5, 'the heart is normal in size'), (4, 'heart size is normal'),
              (2, 'the heart size is within normal limits'), (2, 'normal heart size'),
              (1, 'the cardiac silhouette is normal in size'), (1, 'the heart is not enlarged'),
              (0.5, 'heart size is unremarkable'),
              (0.5, 'the cardiac silhouette is within normal limits')],
    'mediastinum': [(4, 'the mediastinum is unremarkable'),
                    (2, 'the mediastinal contour is normal'),
                    (1, 'normal mediastinal contour'),
                    (1, 'the mediastinum is within normal limits'),
                    (0.5, 'mediastinal contours are unremarkable')],
    'both': [(4, 'the cardiomediastinal silhouette is normal'),
             (3, 'the cardiomediastinal silhouette is within normal limits'),
             (2, 'cardiac and mediastinal contours are within normal limits'),
             (2, 'the cardiomediastinal silhouette is normal in size and contour'),
             (1, 'the heart and mediastinum are normal')],
    'lungs': [(6, 'the lungs are clear', _LUNGS), (2, 'the lungs are clear bilaterally', _LUNGS),
              (3, 'no focal airspace disease', ('Lung Opacity', 'Consolidation', 'Pneumonia')),
              (2, 'no focal consolidation', ('Consolidation',)),
              (1, 'the lungs are free of focal airspace disease',
               ('Lung Opacity', 'Consolidation', 'Pneumonia')),
              (1, 'the lungs are well expanded and clear', _LUNGS),
              (0.5, 'no acute cardiopulmonary abnormality', _CARDIOPULMONARY),
              (0.5, 'there is no focal airspace opacity',
               ('Lung Opacity', 'Consolidation', 'Pneumonia'))],
    'vessels': [(2, 'pulmonary vascularity is within normal limits'),
                (1, 'the pulmonary vasculature is normal')],
    'pleura': [(6, 'no pleural effusion or pneumothorax'),
               (3, 'there is no pleural effusion or pneumothorax'),
               (3, 'no pneumothorax or pleural effusion'), (1, 'no effusion or pneumothorax'),
               (0.5, 'there is no evidence of pleural effusion or pneumothorax')],
    'no_ptx': [(3, 'no pneumothorax'), (1, 'there is no pneumothorax')],
    'no_effusion': [(3, 'no pleural effusion'), (1, 'there is no pleural effusion')],
    'bones': [(3, 'no acute bony abnormality', ('Fracture',)),
              (2, 'no acute osseous abnormality', ('Fracture',)),
              (2, 'the osseous structures are intact', ('Fracture',)),
              (1, 'bony structures are intact', ('Fracture',)),
              (0.5, 'visualized osseous structures are unremarkable',
               ('Fracture', 'degenerative spine'))],
}
_ORDER = ('heart', 'lungs', 'pleura', 'bones', 'other')
_SECTION = {
    'Cardiomegaly': 'heart', 'Enlarged Cardiomediastinum': 'heart', 'Lung Opacity': 'lungs',
    'Consolidation': 'lungs', 'Pneumonia': 'lungs', 'Edema': 'lungs', 'Atelectasis': 'lungs',
    'Lung Lesion': 'lungs', 'calcified granuloma': 'lungs', 'Pneumothorax': 'pleura',
    'Pleural Effusion': 'pleura', 'Pleural Other': 'pleura', 'Fracture': 'bones',
    'degenerative spine': 'bones', 'Support Devices': 'other', 'hiatal hernia': 'other',
}


def _choose(rng: np.random.Generator, options: Sequence[tuple]) -> tuple:
    w = np.asarray([o[0] for o in options], float)
    return options[int(rng.choice(len(options), p=w / w.sum()))]


def _location(f: Finding, rng: np.random.Generator, adjective: bool) -> str:
    if f.side == 'bilateral':
        table = _LOC_ADJ_BOTH if adjective else _LOC_NOUN_BOTH
        return _choose(rng, table[f.zone])[1]
    text = _choose(rng, (_LOC_ADJ if adjective else _LOC_NOUN)[f.zone])[1]
    mid = 'right middle lobe' if f.side == 'right' else ('lingular' if adjective else 'lingula')
    return text.format(s=f.side, mid=mid)


def finding_sentence(f: Finding, rng: np.random.Generator) -> str:
    """One sentence stating finding `f` with all its attributes (all must be stated)."""
    missing = [a for a in phantom.ATTRIBUTES[f.name] if getattr(f, a) in ('', 0)]
    if missing:
        raise ValueError(f'finding_sentence needs every attribute of {f.name!r}; '
                         f'{missing} unstated.')
    if f.name == 'Lung Lesion':
        template = _choose(rng, _LESION[f.kind])[1]
    elif f.name == 'Support Devices':
        template = _choose(rng, _DEVICE[f.kind])[1]
    else:
        template = _choose(rng, _TEMPLATES[f.name])[1]
    adj = _ADJ.get(f.name, {}).get(f.severity, ('',))
    adverbs = _ADVERB.get(f.severity, ('',))
    size = phantom.LESION_MM[f.kind][phantom.SEVERITIES.index(f.severity)] if (
        f.name == 'Lung Lesion') else 0
    age = 'healed' if f.kind == 'healed' else 'acute'
    words = dict(
        adj=adj[int(rng.integers(len(adj)))], adv=adverbs[int(rng.integers(len(adverbs)))],
        loc=_location(f, rng, False) if f.zone else '',
        loca=_location(f, rng, True) if f.zone else '',
        side=f.side, ord=_ORDINALS.get(f.rib, ('', ''))[int(rng.integers(2))],
        age=age, a_age=f'{"a" if age == "healed" else "an"} {age}', mm=size, cm=size // 10,
        effusion='effusions' if f.side == 'bilateral' else 'effusion',
        apex={'right': 'right apex', 'left': 'left apex',
              'bilateral': 'lung apices'}.get(f.side, ''))
    if f.name == 'Pleural Other' and f.side == 'bilateral':
        template = template.replace('{side} apical', 'biapical')
    if f.name == 'Pleural Effusion' and f.side == 'bilateral':
        template = template.replace('there is a ', 'there are ')
    return ' '.join(template.format(**words).split())


def _normal_sentence(key: str, rng: np.random.Generator) -> str:
    return _choose(rng, _NORMAL[key])[1]


def write_report(findings: Findings, rng: np.random.Generator) -> str:
    """A findings section that states every finding and nothing the image does not show."""
    present = set(findings.names)
    sections: dict[str, list[str]] = {s: [] for s in _ORDER}
    abnormal: list[str] = []
    for f in findings.items:
        sentence = finding_sentence(f, rng)
        sections[_SECTION[f.name]].append(sentence)
        abnormal.append(sentence)
    # Normal statements only about what is absent.
    heart_ok = 'Cardiomegaly' not in present
    mediastinum_ok = 'Enlarged Cardiomediastinum' not in present
    if heart_ok and mediastinum_ok and rng.random() < 0.4:
        sections['heart'].insert(0, _normal_sentence('both', rng))
    else:
        if heart_ok and rng.random() < 0.95:
            sections['heart'].insert(0, _normal_sentence('heart', rng))
        if mediastinum_ok and rng.random() < 0.6:
            sections['heart'].append(_normal_sentence('mediastinum', rng))
    lung_options = [o for o in _NORMAL['lungs'] if not present & set(o[2])]
    if lung_options and rng.random() < 0.9:
        sections['lungs'].insert(0, _choose(rng, lung_options)[1])
    elif sections['lungs'] and 'Edema' not in present and rng.random() < 0.6:
        sections['lungs'].append('the lungs are otherwise clear')
    if 'Edema' not in present and rng.random() < 0.15:
        sections['lungs'].append(_normal_sentence('vessels', rng))
    effusion, ptx = 'Pleural Effusion' in present, 'Pneumothorax' in present
    if rng.random() < 0.85:
        key = {(False, False): 'pleura', (True, False): 'no_ptx', (False, True): 'no_effusion'}.get(
            (effusion, ptx))
        if key:
            sections['pleura'].append(_normal_sentence(key, rng))
    bone_options = [o for o in _NORMAL['bones'] if not present & set(o[2])]
    if bone_options and rng.random() < 0.5:
        sections['bones'].append(_choose(rng, bone_options)[1])
    if rng.random() < 0.1:  # the phantom's trachea is always midline
        sections['heart'].append('the trachea is midline')
    sentences = [s for key in _ORDER for s in sections[key]]
    if abnormal and rng.random() < 0.3:  # lead with the findings, as many IU reports do
        sentences = abnormal + [s for s in sentences if s not in abnormal]
    return ' '.join(s[0].upper() + s[1:] + '.' for s in sentences)


# ------------------------------------------------------------------------ the sources

def study_seed(base_seed: int, key: str) -> int:
    """Stable non-negative 63-bit seed of (configured seed, study key)."""
    digest = hashlib.sha256(f'{int(base_seed)}:{key}'.encode()).digest()
    return int.from_bytes(digest[:8], 'little') >> 1


def _views(data_cfg) -> int:
    views = int(getattr(data_cfg, 'num_views', 2))
    if views not in (1, 2):
        raise ValueError(f'data.num_views={views}: phantom studies have 1 (frontal) or 2 '
                         '(frontal, lateral) views; set data.num_views to 1 or 2.')
    return views


def _study(sid: str, split: str, report: str, findings: Findings, seed: int,
           data_cfg) -> types.RawStudy:
    load = None
    if not getattr(data_cfg, 'reports_only', False):
        load = functools.partial(phantom.render_study, findings, seed=seed,
                                 size=int(data_cfg.image_size), views=_views(data_cfg))
    return types.RawStudy(id=sid, split=split, report=report, load_views=load,
                          abnormal=findings.abnormal, meta={'findings': findings})


def synthetic_studies(data_cfg) -> Iterator[types.RawStudy]:
    """The built-in synthetic corpus: data_cfg.phantom.num_{train,val,test} studies."""
    cfg = data_cfg.phantom
    normal_share = float(getattr(cfg, 'normal_share', NORMAL_SHARE))
    for split in types.SPLITS:
        count = int(getattr(cfg, f'num_{split}'))
        if count < 0:
            raise ValueError(f'data.phantom.num_{split}={count} must be >= 0.')
        for i in range(count):
            sid = f'phantom-{split}-{i:06d}'
            seed = study_seed(cfg.seed, sid)
            rng = np.random.default_rng(seed)
            findings = sample_findings(rng, normal_share)
            yield _study(sid, split, write_report(findings, rng), findings, seed, data_cfg)


# ------------------------------------------------------------------------ IU-phantom

# How an "Other finding" mention of the labeler names one of the extra findings (also used to read
# them in generated reports: jima_jax.evaluation.phantom_truth).
EXTRA_PATTERNS = {
    'calcified granuloma': re.compile(r'granulom'),
    'degenerative spine': re.compile(r'degenerat|spondyl|osteophyt|spur'),
    'hiatal hernia': re.compile(r'hiatal|hiatus|hernia'),
}
_SEVERITY_WORDS = (
    ('mild', re.compile(r'\b(?:mild\w*|minimal\w*|small|subtle|trace|tiny|slight\w*|minor)\b')),
    ('severe', re.compile(r'\b(?:severe\w*|large|marked\w*|extensive|massive|advanced|dense|'
                          r'significant\w*|prominent)\b')),
    ('moderate', re.compile(r'\bmoderate\w*\b')),
)
_ZONE_WORDS = (
    ('upper', re.compile(r'\b(?:upper|apex|apices|apical\w*|biapical)\b')),
    ('middle', re.compile(r'\b(?:middle|mid|midlung|lingula\w*|perihilar|hilar)\b')),
    ('lower', re.compile(r'\b(?:lower|base|bases|basilar|basal|bibasilar|bibasal|retrocardiac|'
                         r'costophrenic)\b')),
)
_DEVICE_WORDS = (
    ('pacemaker', re.compile(r'\b(?:pacemaker\w*|pacer\w*|aicd|icd|defibrillator\w*|generator|'
                             r'leads?)\b')),
    ('endotracheal tube', re.compile(r'\b(?:endotracheal|et tube|tracheostomy)\b')),
    ('enteric tube', re.compile(r'\b(?:nasogastric|orogastric|ng tube|og tube|enteric|feeding|'
                                r'dobhoff|gastric)\b')),
)
_ORDINAL_WORDS = {w: n for n, ws in _ORDINALS.items() for w in ws}


_CLAUSE_BREAK = re.compile(r',|;|\b(?:and|with|but|while|whereas)\b')


def _clause(sentence: str, start: int, end: int) -> str:
    """The part of `sentence` around [start, end) between clause breaks (attributes live there)."""
    left = max((m.end() for m in _CLAUSE_BREAK.finditer(sentence, 0, start)), default=0)
    right = next((m.start() for m in _CLAUSE_BREAK.finditer(sentence, end)), len(sentence))
    return sentence[left:right]


def _side_of(text: str) -> str:
    if re.search(r'\b(?:bilateral\w*|both|bibasilar|bibasal|biapical)\b', text):
        return 'bilateral'
    right = bool(re.search(r'\bright\b', text))
    left = bool(re.search(r'\bleft\b|\blingula', text))
    return 'bilateral' if right and left else ('right' if right else ('left' if left else ''))


def _first(table, text: str) -> str:
    return next((value for value, pattern in table if pattern.search(text)), '')


def attributes_from_text(name: str, text: str, uncertain: bool = False) -> Finding:
    """A Finding for `name` with what `text` (its sentence) says about side, severity, ..."""
    allowed = phantom.ATTRIBUTES[name]
    values = dict(side=_side_of(text), severity=_first(_SEVERITY_WORDS, text),
                  zone=_first(_ZONE_WORDS, text))
    if uncertain and not values['severity']:
        values['severity'] = 'mild'  # a hedged finding is a subtle one
    if name == 'Lung Lesion':
        values['kind'] = 'mass' if re.search(r'\bmass', text) else 'nodule'
        size = re.search(r'\b(\d+(?:\.\d+)?) ?(mm|cm)\b', text)
        if size:
            mm = float(size.group(1)) * (10 if size.group(2) == 'cm' else 1)
            sizes = phantom.LESION_MM[values['kind']]
            values['severity'] = phantom.SEVERITIES[int(np.argmin([abs(mm - s) for s in sizes]))]
    elif name == 'Support Devices':
        values['kind'] = _first(_DEVICE_WORDS, text) or 'central line'
    elif name == 'Fracture':
        values['kind'] = 'healed' if re.search(
            r'\b(?:healed|healing|old|remote|chronic|prior|previous)\b', text) else 'acute'
        if re.search(r'\bribs?\b', text):
            rib = re.search(r'\b(\d+)(?:st|nd|rd|th)\b', text)
            values['rib'] = int(rib.group(1)) if rib else next(
                (n for w, n in _ORDINAL_WORDS.items() if re.search(rf'\b{w}\b', text)), 0)
    kept = {k: v for k, v in values.items() if k in allowed and v in allowed[k]}
    return Finding(name, **kept)


def findings_from_report(report: str) -> Findings:
    """The findings an IU report states (positive or uncertain), as the labeler reads them."""
    from jima_jax.text import labeler

    first: dict[str, tuple[str, bool]] = {}
    for m in labeler.find_mentions(report):
        if m.label == symbols.LABEL_NEGATIVE:
            continue
        names = [m.observation]
        if m.observation == labeler.OTHER_FINDING:
            names = [n for n, p in EXTRA_PATTERNS.items() if p.search(m.text)]
        for name in names:
            if name in phantom.ATTRIBUTES and name not in first:
                first[name] = (_clause(m.sentence, m.start, m.end),
                               m.label == symbols.LABEL_UNCERTAIN)
    # Keep the labeler's aggregate decision for the 14 observations (positive > uncertain).
    labels = labeler.label_report(report)
    items = []
    for name, (sentence, uncertain) in first.items():
        if name in symbols.OBSERVATIONS:
            label = int(labels[symbols.OBSERVATIONS.index(name)])
            if label not in (symbols.LABEL_POSITIVE, symbols.LABEL_UNCERTAIN):
                continue
            uncertain = label == symbols.LABEL_UNCERTAIN
        items.append(attributes_from_text(name, sentence, uncertain))
    items.sort(key=lambda f: phantom.FINDING_NAMES.index(f.name))
    return Findings(tuple(items))


def iu_phantom_studies(data_cfg) -> Iterator[types.RawStudy]:
    """Real IU X-ray reports, each paired with phantom views of the findings it states."""
    path = sources.iu_annotation_path(data_cfg)
    if not path.is_file():
        raise FileNotFoundError(
            f'IU-phantom needs an R2Gen annotation.json; {path} does not exist. Set '
            'data.source_dir to a folder holding annotation.json, or JIMA_SHARED_DATA to the '
            'shared data folder (with iu_xray/annotation.json).')
    base_seed = int(data_cfg.phantom.seed)
    for split, entry in sources.r2gen_entries(path):
        sid, report = entry['id'], entry['report']
        seed = study_seed(base_seed, sid)
        found = findings_from_report(report)
        findings = Findings(found.items, phantom.Patient.from_seed(seed))
        yield _study(sid, split, report, findings, seed, data_cfg)
