"""Phantom studies end to end: draw a protocol and a patient, render, scan, write DICOM.

This is where the scanner model meets the anatomy: every slice averages planes rendered at their
breathing-shifted positions across its slice profile, then is blurred and given noise from its
own generator
(``default_rng([seed, modality, "noise", k])``), so noise is independent per slice and the
anatomy draw does not depend on how the noise is made. Everything else comes from
``default_rng([seed, modality])``; one seed gives one byte-identical study.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from detector.lab.breast_mr import BreastMR
from detector.lab.chest_ct import ChestCT
from detector.lab.headers import (
    CT_BITS_STORED,
    CT_INTERCEPT,
    CT_SLOPE,
    MR_BITS_STORED,
    add_ct_acquisition,
    add_mr_acquisition,
    base_dataset,
    make_uid,
    study_info,
)
from detector.lab.lesions import LESIONS_CSV, Lesion, read_lesions_csv, write_lesions_csv
from detector.lab.scanner import (
    Protocol,
    breathing_shift,
    ct_scan,
    draw_protocol,
    mr_scan,
)

MODALITIES = ("CT", "MR")
NOISE_STREAM = 7  # third word of the per-slice noise generator's seed


@dataclass
class PhantomStudy:
    """One synthetic patient: one study, one series, ``datasets`` ordered by ascending z."""

    modality: str
    patient_id: str
    datasets: list[pydicom.Dataset]
    lesions: list[Lesion] = field(default_factory=list)
    slice_z_mm: list[float] = field(default_factory=list)
    protocol: Protocol | None = None

    @property
    def folder_name(self) -> str:
        return self.patient_id

    @staticmethod
    def file_name(index: int) -> str:
        return f"IM{index + 1:04d}.dcm"


def _check(modality: str, slices: int, size: int) -> str:
    modality = modality.upper()
    if modality == "MRI":
        modality = "MR"
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected CT or MR")
    if slices < 1:
        raise ValueError("slices must be at least 1")
    if size < 64:
        raise ValueError("size must be at least 64 pixels")
    return modality


class _SliceSampler:
    """Partial volume along z at the cost of one render per slice.

    Slice ``k`` averages the planes half a spacing above and below its centre: the profile's
    spread lies between a box of one spacing and one of two (every thickness drawn is 1-2
    spacings). Neighbours share those planes, so ``n`` slices need ``n + 1`` renders. Each
    plane sits where breathing moved its anatomy.
    """

    def __init__(self, scene: ChestCT | BreastMR, protocol: Protocol) -> None:
        self.scene, self.protocol = scene, protocol
        self.cache: dict[int, np.ndarray] = {}

    def plane(self, j: int) -> np.ndarray:
        if j not in self.cache:
            self.cache = {i: v for i, v in self.cache.items() if i >= j - 1}
            z = self.scene.z[0] + (j - 0.5) * self.protocol.spacing
            self.cache[j] = self.scene.render(z + breathing_shift(self.protocol, z))
        return self.cache[j]

    def scan(self, k: int, seed: int) -> np.ndarray:
        """Slice ``k`` as the scanner sees it, with noise from its own generator."""
        planes = [self.plane(k), self.plane(k + 1)]
        protocol = self.protocol
        rng = np.random.default_rng([seed, MODALITIES.index(protocol.modality), NOISE_STREAM, k])
        if protocol.modality == "CT":
            return ct_scan(rng, planes, protocol, self.scene.spacing)
        assert isinstance(self.scene, BreastMR)
        return mr_scan(rng, planes, protocol, self.scene.coil_bias())


def _dataset(info: dict, protocol: Protocol, scene, k: int, seed: int) -> pydicom.Dataset:  # noqa: ANN001
    modality = protocol.modality
    ds = base_dataset(info, modality)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage if modality == "CT" else MRImageStorage
    sop_uid = make_uid(seed, modality, "instance", k)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "TAMPERSCAN_LAB"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [round(scene.x0, 4), round(scene.y0, 4), scene.z[k]]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [round(scene.spacing, 6), round(scene.spacing, 6)]
    ds.SliceThickness = protocol.thickness
    ds.SliceLocation = scene.z[k]
    ds.Rows = scene.size
    ds.Columns = scene.size
    ds.BitsStored = CT_BITS_STORED if modality == "CT" else MR_BITS_STORED
    ds.HighBit = ds.BitsStored - 1
    if modality == "CT":
        add_ct_acquisition(ds, protocol)
    else:
        add_mr_acquisition(ds, protocol)
    return ds


def _lesions(scene: ChestCT | BreastMR, protocol: Protocol, patient_id: str) -> list[Lesion]:
    """Ground truth in image terms: the slice where breathing put each lesion's centre."""
    seen = [z + breathing_shift(protocol, z) for z in scene.z]
    out = []
    for blob in scene.blobs:
        k = int(np.argmin([abs(z - blob.centre[2]) for z in seen]))
        nominal_z = blob.centre[2] - (seen[k] - scene.z[k])
        out.append(
            Lesion(
                k,
                int(round((blob.centre[0] - scene.x0) / scene.spacing)),
                int(round((blob.centre[1] - scene.y0) / scene.spacing)),
                round(blob.radius, 2),
                blob.kind,
                round(float(nominal_z), 3),
                patient_id,
                PhantomStudy.file_name(k),
            )
        )
    return out


def generate_study(
    modality: str, slices: int, seed: int, size: int = 512, protocol: Protocol | None = None
) -> PhantomStudy:
    """One synthetic patient/study/series of ``slices`` axial slices, deterministic by seed.

    ``protocol`` overrides the drawn acquisition (kernel, dose, geometry, SNR); the patient's
    anatomy is the same either way, since the protocol draw comes first and is always made.
    """
    modality = _check(modality, slices, size)
    rng = np.random.default_rng([seed, MODALITIES.index(modality)])
    drawn = draw_protocol(rng, modality)
    if protocol is None:
        protocol = drawn
    elif protocol.modality != modality:
        raise ValueError(f"a {protocol.modality} protocol cannot scan a {modality} phantom")
    info = study_info(rng, modality, seed, protocol)
    scene: ChestCT | BreastMR
    if modality == "CT":
        scene = ChestCT(rng, size, slices, protocol.spacing)
        scene.add_nodules(int(rng.integers(2, 5)))
    else:
        scene = BreastMR(rng, size, slices, protocol.spacing)
        scene.add_masses(int(rng.integers(1, 4)))
    datasets: list[pydicom.Dataset] = []
    sampler = _SliceSampler(scene, protocol)
    for k in range(slices):
        values = sampler.scan(k, seed)
        ds = _dataset(info, protocol, scene, k, seed)
        top = (1 << ds.BitsStored) - 1
        if modality == "CT":
            stored = np.clip(np.rint((values - CT_INTERCEPT) / CT_SLOPE), 0, top)
        else:
            stored = np.clip(np.rint(values), 0, top)
        ds.PixelData = stored.astype(np.uint16).tobytes()
        datasets.append(ds)
    lesions = _lesions(scene, protocol, info["patient_id"])
    return PhantomStudy(modality, info["patient_id"], datasets, lesions, list(scene.z), protocol)


def write_phantoms(
    modality: str,
    studies: int,
    slices: int,
    out_dir: str | Path,
    seed: int,
    size: int = 512,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``studies`` phantom studies, one folder per patient, and ``lesions.csv``.

    Study ``i`` uses seed ``seed * 1000 + i`` so adding studies never changes earlier ones.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    all_lesions: list[Lesion] = []
    for i in range(studies):
        study = generate_study(modality, slices, seed * 1000 + i, size)
        folder = out / study.folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for k, ds in enumerate(study.datasets):
            ds.save_as(folder / study.file_name(k), enforce_file_format=True)
        folders.append(folder)
        all_lesions.extend(study.lesions)
        if progress is not None:
            progress(i + 1)
    lesion_file = out / LESIONS_CSV
    existing = read_lesions_csv(lesion_file) if lesion_file.exists() else []
    new_ids = {f.name for f in folders}
    keep = [les for les in existing if les.study not in new_ids]
    write_lesions_csv(keep + all_lesions, lesion_file)
    return folders
