"""tfds builder for IU X-ray (R2Gen layout or the raw OpenI release)."""

from __future__ import annotations

import pathlib
from typing import Iterable, Optional

import tensorflow_datasets as tfds

from jima_jax.data import sources
from jima_jax.data.builders.base import StudyBuilder
from jima_jax.data.types import RawStudy

# The public OpenI archives; fetched only by an explicit download (prepare --download).
OPENI_URLS = {
    'reports': 'https://openi.nlm.nih.gov/imgs/collections/NLMCXR_reports.tgz',
    'png': 'https://openi.nlm.nih.gov/imgs/collections/NLMCXR_png.tgz',
}


class IuXray(StudyBuilder):
    """IU X-ray: MeSH "normal" is the normal label; devices count as abnormal (MeSH convention)."""

    name = 'iu_xray'
    DEVICES_ARE_ABNORMAL = True
    allow_download = False  # set by prepare_dataset(download=True)

    @classmethod
    def read_studies(cls, data_cfg) -> Iterable[RawStudy]:
        return sources.iu_xray_studies(data_cfg)

    def studies(self, dl_manager: tfds.download.DownloadManager) -> Iterable[RawStudy]:
        c = self.data_cfg
        if sources.iu_annotation_path(c).is_file():
            return sources.iu_xray_studies(c)
        reports = sources.openi_reports_path(c)
        png_dir = None if c.reports_only else self._png_dir(dl_manager, reports)
        if reports is None and self.allow_download:
            urls = {k: getattr(c.openi_urls, k, '') or v for k, v in OPENI_URLS.items()}
            reports = pathlib.Path(dl_manager.download(urls['reports']))
            if not c.reports_only:
                png_dir = pathlib.Path(dl_manager.download_and_extract(urls['png']))
        return sources.iu_xray_studies(c, openi_reports=reports,
                                       openi_png_dir=png_dir and _png_root(png_dir))

    def _png_dir(self, dl_manager, reports: Optional[pathlib.Path]) -> Optional[pathlib.Path]:
        """An extracted NLMCXR_png/ next to the reports, else NLMCXR_png.tgz extracted by tfds."""
        if reports is None:
            return None
        if (reports.parent / sources.OPENI_PNG_DIR).is_dir():
            return reports.parent / sources.OPENI_PNG_DIR
        archive = reports.parent / sources.OPENI_PNG
        return pathlib.Path(dl_manager.extract(archive)) if archive.is_file() else None


def _png_root(path: pathlib.Path) -> pathlib.Path:
    """The folder holding the PNGs inside an extracted archive (top level or NLMCXR_png/)."""
    inner = path / sources.OPENI_PNG_DIR
    return inner if inner.is_dir() else path
