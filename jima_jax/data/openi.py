"""The raw OpenI IU X-ray release: report XML read straight from NLMCXR_reports.tgz, MeSH terms.

The XML carries what annotation.json lacks: the MeSH major terms, whose "normal" tag is the IU
normal/abnormal label of the paper, and which we also map onto the 14 observations to measure the
labeler. Studies are matched to the R2Gen ids by the image ids ("CXR2384_IM-0942-1001" belongs to
study "CXR2384_IM-0942").
"""

from __future__ import annotations

import dataclasses
import os
import re
import tarfile
import xml.etree.ElementTree as ElementTree
from typing import Iterator, Optional

import numpy as np

from jima_jax.text.symbols import NUM_OBSERVATIONS, OBSERVATIONS

_IMAGE_SUFFIX = re.compile(r'-\d+$')


@dataclasses.dataclass(frozen=True)
class OpenIReport:
    """One XML report of the OpenI release."""

    uid: str  # "CXR1"
    file: str  # member name inside the archive
    findings: str
    impression: str
    indication: str
    comparison: str
    mesh_major: tuple[str, ...]  # e.g. ("Cardiomegaly/mild", "Pulmonary Atelectasis/base/left")
    mesh_automatic: tuple[str, ...]
    image_ids: tuple[str, ...]  # e.g. ("CXR1_1_IM-0001-3001", ...)

    @property
    def study_ids(self) -> tuple[str, ...]:
        """R2Gen-style study ids: the image ids without their trailing "-<n>"."""
        return tuple(sorted({study_id_of_image(i) for i in self.image_ids}))

    @property
    def mesh_normal(self) -> bool:
        """The paper's IU normal label: MeSH major term "normal"."""
        return 'normal' in self.mesh_major


def study_id_of_image(image_id: str) -> str:
    return _IMAGE_SUFFIX.sub('', image_id)


def _text(node: Optional[ElementTree.Element]) -> str:
    return (node.text or '').strip() if node is not None else ''


def parse_report_xml(data: bytes, file: str = '<bytes>') -> OpenIReport:
    """One OpenI XML document -> OpenIReport; a clear error naming `file` if it is not one."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as e:
        raise ValueError(f'{file}: not valid XML ({e}); re-download NLMCXR_reports.tgz.') from e
    uid = root.find('uId')
    if uid is None or not uid.get('id'):
        raise ValueError(f'{file}: no <uId id=...>; is this an OpenI NLMCXR report?')
    sections = {node.get('Label', '').upper(): _text(node) for node in root.iter('AbstractText')}
    mesh = root.find('MeSH')
    return OpenIReport(
        uid=uid.get('id'), file=file,
        findings=sections.get('FINDINGS', ''), impression=sections.get('IMPRESSION', ''),
        indication=sections.get('INDICATION', ''), comparison=sections.get('COMPARISON', ''),
        mesh_major=tuple(_text(n) for n in mesh.iter('major')) if mesh is not None else (),
        mesh_automatic=tuple(_text(n) for n in mesh.iter('automatic')) if mesh is not None else (),
        image_ids=tuple(n.get('id') for n in root.iter('parentImage') if n.get('id')))


def read_reports(path: str | os.PathLike) -> Iterator[OpenIReport]:
    """Streams every XML report of NLMCXR_reports.tgz, in archive order, without extracting it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'OpenI report archive {path} not found '
                                '(expected NLMCXR_reports.tgz).')
    try:
        with tarfile.open(path, 'r:*') as archive:
            for member in archive:
                if member.isfile() and member.name.endswith('.xml'):
                    yield parse_report_xml(archive.extractfile(member).read(),
                                           f'{path}:{member.name}')
    except tarfile.TarError as e:
        raise ValueError(f'{path}: not a readable tar archive ({e}); re-download it.') from e


def reports_by_study(path: str | os.PathLike) -> dict[str, OpenIReport]:
    """study id -> report, for matching annotation.json entries."""
    return {sid: r for r in read_reports(path) for sid in r.study_ids}


# ---------------------------------------------------------------------- MeSH -> observations
# (heading, regex the qualifiers must match or None, observation). A MeSH major term is
# "Heading/qualifier/qualifier..."; the mapping is ours, chosen to follow the CheXpert definitions.
_MESH_RULES: tuple[tuple[str, Optional[str], str], ...] = (
    ('Cardiomegaly', None, 'Cardiomegaly'),
    ('Cardiac Shadow', r'enlarged', 'Cardiomegaly'),
    ('Mediastinum', r'prominent|enlarged|widened', 'Enlarged Cardiomediastinum'),
    ('Nodule', None, 'Lung Lesion'),
    ('Mass', None, 'Lung Lesion'),
    ('Cavitation', None, 'Lung Lesion'),
    ('Density', r'round', 'Lung Lesion'),
    ('Opacity', r'round', 'Lung Lesion'),
    ('Opacity', r'^(?!.*round)', 'Lung Opacity'),
    ('Airspace Disease', None, 'Lung Opacity'),
    ('Infiltrate', None, 'Lung Opacity'),
    ('Density', r'^(?!.*round).*(lung|retrocardiac)', 'Lung Opacity'),
    ('Cicatrix', r'^(?!pleura)', 'Lung Opacity'),
    ('Markings', r'interstitial', 'Lung Opacity'),
    ('Lung Diseases, Interstitial', None, 'Lung Opacity'),
    ('Pulmonary Fibrosis', None, 'Lung Opacity'),
    ('Pulmonary Edema', None, 'Edema'),
    ('Pulmonary Congestion', None, 'Edema'),
    ('Consolidation', None, 'Consolidation'),
    ('Pneumonia', None, 'Pneumonia'),
    ('Pulmonary Atelectasis', None, 'Atelectasis'),
    ('Pneumothorax', None, 'Pneumothorax'),
    ('Hydropneumothorax', None, 'Pneumothorax'),
    ('Hemopneumothorax', None, 'Pneumothorax'),
    ('Pleural Effusion', None, 'Pleural Effusion'),
    ('Hydropneumothorax', None, 'Pleural Effusion'),
    ('Hemothorax', None, 'Pleural Effusion'),
    ('Thickening', r'pleura', 'Pleural Other'),
    ('Cicatrix', r'pleura', 'Pleural Other'),
    ('Fractures, Bone', None, 'Fracture'),
    ('Catheters, Indwelling', None, 'Support Devices'),
    ('Implanted Medical Device', None, 'Support Devices'),
    ('Tube, Inserted', None, 'Support Devices'),
    ('Medical Device', None, 'Support Devices'),
    ('Stents', None, 'Support Devices'),
)
_COMPILED_RULES = tuple((h, re.compile(q) if q else None, OBSERVATIONS.index(o))
                        for h, q, o in _MESH_RULES)

# Observations the MeSH terms speak about (No Finding comes from the "normal" tag).
MESH_COVERED = tuple(sorted({o for _, _, o in _MESH_RULES}, key=OBSERVATIONS.index))


def mesh_observations(mesh_major: tuple[str, ...]) -> np.ndarray:
    """MeSH major terms -> bool[14]: observation present per our mapping; No Finding = "normal"."""
    present = np.zeros(NUM_OBSERVATIONS, bool)
    for term in mesh_major:
        heading, _, qualifiers = term.strip().partition('/')
        for rule_heading, rule_qualifiers, index in _COMPILED_RULES:
            if heading.strip().lower() == rule_heading.lower() and (
                    rule_qualifiers is None or rule_qualifiers.search(qualifiers.lower())):
                present[index] = True
    present[OBSERVATIONS.index('No Finding')] = 'normal' in mesh_major
    return present


# ---------------------------------------------------------------------- labeler vs MeSH
@dataclasses.dataclass(frozen=True)
class MeshAgreement:
    """How the labeler agrees with the MeSH terms on a set of studies."""

    n: int
    normal_accuracy: float  # labeler normal/abnormal == MeSH "normal" tag
    normal_accuracy_indexed: float  # same, leaving out studies MeSH marks "No Indexing"
    missed_abnormal: int  # labeler normal, MeSH abnormal
    false_abnormal: int  # labeler abnormal, MeSH normal
    per_observation: dict  # observation -> dict(support, tp, fp, fn, precision, recall, f1)
    macro_f1: float  # over MESH_COVERED

    def table(self) -> str:
        """Markdown table of the per-observation figures."""
        lines = ['| observation | MeSH positives | TP | FP | FN | precision | recall | F1 |',
                 '|---|---:|---:|---:|---:|---:|---:|---:|']
        for o, m in self.per_observation.items():
            lines.append(f"| {o} | {m['support']} | {m['tp']} | {m['fp']} | {m['fn']} | "
                         f"{m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} |")
        lines.append(f'| **macro** | | | | | | | **{self.macro_f1:.3f}** |')
        return '\n'.join(lines)


def mesh_agreement(texts: list[str], meshes: list[tuple[str, ...]], *,
                   uncertain_positive: bool = True) -> MeshAgreement:
    """Labels `texts` and compares them with their studies' MeSH major terms.

    An observation counts as found when its label is positive (or uncertain, when
    `uncertain_positive`); normal/abnormal uses `labeler.abnormal_from_labels` (devices count).
    """
    from jima_jax.text import labeler

    labels = labeler.label_reports(texts)
    gold = (np.stack([mesh_observations(m) for m in meshes]) if meshes
            else np.zeros((0, NUM_OBSERVATIONS), bool))
    found_values = (1, -1) if uncertain_positive else (1,)
    pred_abnormal = np.array([labeler.abnormal_from_labels(row) for row in labels], bool)
    gold_abnormal = ~gold[:, OBSERVATIONS.index('No Finding')]
    indexed = np.array(['No Indexing' not in m for m in meshes], bool)
    agree = pred_abnormal == gold_abnormal
    per_obs = {}
    for o in MESH_COVERED:
        i = OBSERVATIONS.index(o)
        p, g = np.isin(labels[:, i], found_values), gold[:, i]
        tp, fp, fn = int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum())
        per_obs[o] = dict(support=int(g.sum()), tp=tp, fp=fp, fn=fn,
                          precision=tp / max(tp + fp, 1), recall=tp / max(tp + fn, 1),
                          f1=2 * tp / max(2 * tp + fp + fn, 1))
    return MeshAgreement(
        n=len(texts), normal_accuracy=float(agree.mean()) if len(texts) else 0.0,
        normal_accuracy_indexed=float(agree[indexed].mean()) if indexed.any() else 0.0,
        missed_abnormal=int((~pred_abnormal & gold_abnormal).sum()),
        false_abnormal=int((pred_abnormal & ~gold_abnormal).sum()),
        per_observation=per_obs, macro_f1=float(np.mean([m['f1'] for m in per_obs.values()])))


def r2gen_studies_with_mesh(annotation: str | os.PathLike, reports: str | os.PathLike, *,
                            with_impression: bool) -> tuple[list[str], list[tuple[str, ...]]]:
    """Texts (findings [+ impression]) and MeSH terms of every R2Gen study found in the XML."""
    import json

    by_study = reports_by_study(reports)
    with open(annotation, encoding='utf-8') as f:
        data = json.load(f)
    texts, meshes = [], []
    for split in ('train', 'val', 'test'):
        for e in data.get(split, []):
            r = by_study.get(str(e['id']))
            if r is None:
                continue
            texts.append(e['report'] + (' ' + r.impression if with_impression else ''))
            meshes.append(r.mesh_major)
    return texts, meshes


def main(argv: Optional[list[str]] = None) -> int:
    """python -m jima_jax.data.openi --annotation annotation.json --reports NLMCXR_reports.tgz"""
    import argparse

    parser = argparse.ArgumentParser(description='Measure the labeler against the OpenI '
                                                 'MeSH terms.')
    parser.add_argument('--annotation', required=True, help='R2Gen IU X-ray annotation.json')
    parser.add_argument('--reports', required=True, help='NLMCXR_reports.tgz')
    args = parser.parse_args(argv)
    for with_impression in (True, False):
        texts, meshes = r2gen_studies_with_mesh(args.annotation, args.reports,
                                                with_impression=with_impression)
        for uncertain_positive in (True, False):
            a = mesh_agreement(texts, meshes, uncertain_positive=uncertain_positive)
            print(f"\n## text = findings{' + impression' if with_impression else ''}, "
                  f"uncertain counted as {'positive' if uncertain_positive else 'negative'} "
                  f"({a.n} studies)\n")
            print(f"normal/abnormal agreement {a.normal_accuracy:.4f} (without 'No Indexing': "
                  f"{a.normal_accuracy_indexed:.4f}); labeler-normal but MeSH-abnormal "
                  f"{a.missed_abnormal}, labeler-abnormal but MeSH-normal {a.false_abnormal}\n")
            print(a.table())
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
