"""Dataset sources: raw files on disk -> a stream of `RawStudy` records.

One function per dataset, dispatched on `data_cfg.name` by `get_studies`. Sources only read and
validate; cleaning, tokenizing, labelling and image resizing happen in the tfds builders, so every
source is treated the same way downstream. Images are loaded lazily (`RawStudy.load_views`), so a
reports-only prepare never touches them.

- iu_xray: the R2Gen layout (`<source_dir>/annotation.json` [+ `images/<id>/0.png`]) or the raw
  OpenI release (`NLMCXR_reports.tgz` [+ `NLMCXR_png/` extracted]) in manual_dir/source_dir. The
  normal/abnormal label is MeSH "normal" from the OpenI XML when `abnormal_from == 'dataset'`.
- mimic_cxr: an R2Gen-style MIMIC annotation.json plus MIMIC-CXR-JPG under manual_dir; the
  'dataset' label is the official CheXpert "No Finding" of mimic-cxr-2.0.0-chexpert.csv(.gz) when
  present.
- phantom, iu_phantom: the built-in synthetic corpora (`jima_jax.data.phantom_corpus`).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import pathlib
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from jima_jax.data import entities as entities_lib
from jima_jax.data import openi
from jima_jax.data.types import SPLITS, RawStudy

OPENI_REPORTS = "NLMCXR_reports.tgz"
OPENI_PNG = "NLMCXR_png.tgz"
OPENI_PNG_DIR = "NLMCXR_png"
MIMIC_CHEXPERT_LABELS = ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv")
# R2Gen's IU X-ray ratios, used when the raw OpenI release has no split of its own.
OPENI_SPLIT_FRACTIONS = (("train", 0.7), ("val", 0.1), ("test", 0.2))


class BadStudyError(ValueError):
    """A study that cannot be prepared; the message names the study and the file."""


def repo_root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[2]


def shared_data_dir() -> pathlib.Path:
    """$JIMA_SHARED_DATA, else ../shared/data next to the repository."""
    env = os.environ.get("JIMA_SHARED_DATA")
    return pathlib.Path(env) if env else (repo_root().parent / "shared" / "data").resolve()


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """Any PNG/JPEG (modes L, RGB, RGBA, P, LA, I;16, ...) -> uint8 HxW grayscale.

    16-bit and float images are scaled by their own range instead of clipped at 255.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                a = np.asarray(im, np.float64)
                lo, hi = float(a.min()), float(a.max())
                return np.round((a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0).astype(np.uint8)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA").convert("RGB")
            return np.asarray(im.convert("L"), np.uint8)
    except FileNotFoundError as e:
        raise ValueError(f"image file {path} is missing") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"image file {path} cannot be decoded ({e})") from e


def _views_loader(study_id: str, paths: Sequence[pathlib.Path]) -> Callable[[], list[np.ndarray]]:
    def load() -> list[np.ndarray]:
        if not paths:
            raise BadStudyError(f"study {study_id}: no image files listed.")
        views = []
        for p in paths:
            try:
                views.append(read_grayscale(p))
            except ValueError as e:
                raise BadStudyError(f"study {study_id}: {e}.") from e
        return views
    return load


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}).") from e


def r2gen_entries(path: pathlib.Path) -> Iterator[tuple[str, dict]]:
    """(split, entry) pairs of an R2Gen annotation.json, validated."""
    data = _read_json(path)
    if not isinstance(data, dict) or not set(data) & set(SPLITS):
        raise ValueError(f"{path}: expected an object with keys {SPLITS} (the R2Gen annotation format).")
    for split in SPLITS:
        for n, entry in enumerate(data.get(split, [])):
            if not isinstance(entry, dict) or "id" not in entry or "report" not in entry:
                raise ValueError(f"{path}: {split}[{n}] needs at least 'id' and 'report'.")
            if not isinstance(entry["report"], str):
                raise ValueError(f"{path}: {split}[{n}] (id {entry['id']}): 'report' must be a string.")
            yield split, entry


def _entry_entities(data_cfg, entry: dict, where: str) -> Optional[tuple[str, ...]]:
    if data_cfg.entities == "lexicon":
        return None
    if data_cfg.entities != "annotation":
        raise ValueError(f"data.entities must be 'lexicon' or 'annotation', got {data_cfg.entities!r}.")
    if "tokens" not in entry:
        raise ValueError(f"{where}: data.entities='annotation' but the entry has no 'tokens' field; "
                         "supply precomputed entities or set data.entities='lexicon'.")
    return entities_lib.annotation_entities(entry["tokens"], where)


def _first_existing(candidates: Sequence[pathlib.Path]) -> Optional[pathlib.Path]:
    return next((c for c in candidates if c.exists()), None)


def _dirs(data_cfg, default: pathlib.Path) -> tuple[pathlib.Path, Optional[pathlib.Path]]:
    source = pathlib.Path(data_cfg.source_dir).expanduser() if data_cfg.source_dir else default
    manual = pathlib.Path(data_cfg.manual_dir).expanduser() if data_cfg.manual_dir else None
    return source, manual


# ---------------------------------------------------------------------- IU X-ray
def openi_reports_path(data_cfg) -> Optional[pathlib.Path]:
    """Where NLMCXR_reports.tgz is (manual_dir first), or None."""
    source, manual = _dirs(data_cfg, shared_data_dir() / "iu_xray")
    candidates = ([manual / OPENI_REPORTS] if manual else []) + [
        source / OPENI_REPORTS, source / "openi" / OPENI_REPORTS]
    return _first_existing(candidates)


def _mesh_abnormal(data_cfg) -> Optional[dict[str, int]]:
    """study id -> 1 abnormal / 0 normal from the MeSH terms, or None when not used/available."""
    if data_cfg.abnormal_from != "dataset":
        return None
    path = openi_reports_path(data_cfg)
    if path is None:
        return None
    return {sid: int(not r.mesh_normal) for sid, r in openi.reports_by_study(path).items()}


def _hash_split(study_id: str) -> str:
    u = int(hashlib.sha256(study_id.encode()).hexdigest()[:12], 16) / float(1 << 48)
    edge = 0.0
    for split, fraction in OPENI_SPLIT_FRACTIONS:
        edge += fraction
        if u < edge:
            return split
    return OPENI_SPLIT_FRACTIONS[-1][0]


def iu_annotation_path(data_cfg) -> pathlib.Path:
    source, _ = _dirs(data_cfg, shared_data_dir() / "iu_xray")
    return source / "annotation.json"


def iu_xray_studies(data_cfg, *, openi_reports: Optional[pathlib.Path] = None,
                    openi_png_dir: Optional[pathlib.Path] = None) -> Iterator[RawStudy]:
    """IU X-ray from the R2Gen layout when annotation.json exists, else from the raw OpenI release
    (archives found in manual_dir/source_dir, or given explicitly, e.g. just downloaded)."""
    source, manual = _dirs(data_cfg, shared_data_dir() / "iu_xray")
    annotation = iu_annotation_path(data_cfg)
    if annotation.is_file():
        yield from _iu_r2gen(data_cfg, annotation)
    else:
        yield from _iu_openi(data_cfg, source, manual, openi_reports, openi_png_dir)


def _iu_r2gen(data_cfg, annotation: pathlib.Path) -> Iterator[RawStudy]:
    images = annotation.parent / "images"
    if not data_cfg.reports_only and not images.is_dir():
        raise FileNotFoundError(f"{images} not found (IU X-ray images, R2Gen layout <id>/0.png); "
                                "set data.reports_only=True to prepare the text side only.")
    mesh = _mesh_abnormal(data_cfg)
    for split, entry in r2gen_entries(annotation):
        sid = str(entry["id"])
        paths = [images / p for p in entry.get("image_path", [])]
        yield RawStudy(
            id=sid, split=split, report=entry["report"],
            load_views=None if data_cfg.reports_only else _views_loader(sid, paths),
            abnormal=mesh.get(sid) if mesh is not None else None,
            entities=_entry_entities(data_cfg, entry, f"{annotation} study {sid}"),
            meta={"image_path": list(entry.get("image_path", []))})


def _iu_openi(data_cfg, source: pathlib.Path, manual: Optional[pathlib.Path],
              reports: Optional[pathlib.Path], png_dir: Optional[pathlib.Path]) -> Iterator[RawStudy]:
    reports = reports or openi_reports_path(data_cfg)
    if reports is None:
        where = ", ".join(str(p) for p in ([manual] if manual else []) + [source])
        raise FileNotFoundError(
            f"IU X-ray: neither {source / 'annotation.json'} (R2Gen layout) nor {OPENI_REPORTS} "
            f"(OpenI release) found in {where}. Set data.source_dir/data.manual_dir, or run the "
            "prepare command with --download to fetch the OpenI archives.")
    if data_cfg.entities == "annotation":
        raise ValueError("data.entities='annotation' needs an annotation.json with 'tokens'; the "
                         "OpenI release has none. Use data.entities='lexicon'.")
    if not data_cfg.reports_only:
        png_dir = png_dir or _first_existing(([manual / OPENI_PNG_DIR] if manual else []) + [
            source / OPENI_PNG_DIR])
        if png_dir is None:
            raise FileNotFoundError(f"OpenI images ({OPENI_PNG_DIR}/ or {OPENI_PNG}) not found next to "
                                    f"{reports}; set data.reports_only=True for the text side only.")
    for r in openi.read_reports(reports):
        if not r.findings.strip() or not r.image_ids:
            continue  # R2Gen keeps studies with a findings section and images only
        sid = r.study_ids[0]
        paths = [png_dir / f"{i}.png" for i in r.image_ids] if png_dir else []
        yield RawStudy(
            id=sid, split=_hash_split(sid), report=r.findings,
            load_views=None if data_cfg.reports_only else _views_loader(sid, paths),
            abnormal=int(not r.mesh_normal) if data_cfg.abnormal_from == "dataset" else None,
            meta={"image_ids": list(r.image_ids), "xml": r.file})


# ---------------------------------------------------------------------- MIMIC-CXR
def _mimic_dataset_labels(manual: Optional[pathlib.Path]) -> Optional[dict[str, int]]:
    """study_id -> abnormal from the official CheXpert labels (No Finding == 1 -> normal)."""
    path = _first_existing([manual / n for n in MIMIC_CHEXPERT_LABELS]) if manual else None
    if path is None:
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    out = {}
    with opener(path, "rt", newline="") as f:
        for row in csv.DictReader(f):
            if "study_id" not in row or "No Finding" not in row:
                raise ValueError(f"{path}: expected columns 'study_id' and 'No Finding'.")
            out[row["study_id"].lstrip("s")] = int(row["No Finding"].strip() not in ("1", "1.0"))
    return out


def mimic_cxr_studies(data_cfg) -> Iterator[RawStudy]:
    """MIMIC-CXR: R2Gen-style annotation.json (source_dir or manual_dir) + MIMIC-CXR-JPG files."""
    source = pathlib.Path(data_cfg.source_dir).expanduser() if data_cfg.source_dir else None
    manual = pathlib.Path(data_cfg.manual_dir).expanduser() if data_cfg.manual_dir else None
    annotation = _first_existing([d / "annotation.json" for d in (source, manual) if d])
    if annotation is None:
        raise FileNotFoundError("MIMIC-CXR: annotation.json (R2Gen format) not found in data.source_dir "
                                "or data.manual_dir; MIMIC-CXR is credentialed and must be supplied by you.")
    entries = list(r2gen_entries(annotation))
    roots = ([manual / "files", manual, manual / "images"] if manual else []) + (
        [source / "images"] if source else [])
    root = None
    if not data_cfg.reports_only and entries:
        first = entries[0][1].get("image_path") or [""]
        root = _first_existing([r for r in roots if (r / first[0]).is_file()])
        if root is None:
            raise FileNotFoundError(f"MIMIC-CXR image {first[0]} not found under any of "
                                    f"{[str(r) for r in roots]}; set data.manual_dir to MIMIC-CXR-JPG.")
    labels = _mimic_dataset_labels(manual) if data_cfg.abnormal_from == "dataset" else None
    for split, entry in entries:
        sid = str(entry["id"])
        study_id = str(entry.get("study_id", "")).lstrip("s")
        paths = [root / p for p in entry.get("image_path", [])] if root else []
        yield RawStudy(
            id=sid, split=split, report=entry["report"],
            load_views=None if data_cfg.reports_only else _views_loader(sid, paths),
            abnormal=labels.get(study_id) if labels is not None else None,
            entities=_entry_entities(data_cfg, entry, f"{annotation} study {sid}"),
            meta={"study_id": study_id, "subject_id": str(entry.get("subject_id", ""))})


# ---------------------------------------------------------------------- dispatch
def get_studies(data_cfg, **kwargs) -> Iterator[RawStudy]:
    """RawStudy stream of the dataset named `data_cfg.name`."""
    name = data_cfg.name
    if name == "iu_xray":
        return iu_xray_studies(data_cfg, **kwargs)
    if name == "mimic_cxr":
        return mimic_cxr_studies(data_cfg)
    if name in ("phantom", "iu_phantom"):
        from jima_jax.data import phantom_corpus  # lazy: another module, only needed here
        fn = phantom_corpus.synthetic_studies if name == "phantom" else phantom_corpus.iu_phantom_studies
        return fn(data_cfg)
    raise ValueError(f"Unknown dataset data.name={name!r}; use phantom | iu_phantom | iu_xray | mimic_cxr.")
