"""DICOM headers of the phantom series: deterministic UIDs, patient/study/series elements and
the CT / MR acquisition elements that describe the scanner protocol actually simulated.

Headers only: pixels come from the scenes and :mod:`detector.lab.scanner`.
"""

from __future__ import annotations

import datetime as _dt
import uuid

import numpy as np
import pydicom
from pydicom.uid import UID

from detector.lab.scanner import Protocol

# Stored CT values: unsigned 12-bit, intercept -1024 -> HU in [-1024, 3071].
CT_INTERCEPT = -1024.0
CT_SLOPE = 1.0
CT_BITS_STORED = 12
MR_BITS_STORED = 12

FIRST_NAMES = [
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Claude",
    "Hedy",
    "John",
]


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:tamperscan:tamper-lab")


def make_uid(seed: int, *parts: object) -> str:
    """Deterministic ``2.25.<UUIDv5>`` UID (PS3.5 B.2).

    ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy in pydicom 3 and
    returns a random UUID4, so the name-based UUID is derived here instead.
    """
    name = "/".join(["tamperscan-lab", str(seed), *map(str, parts)])
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def base_dataset(study: dict, modality: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = study["patient_name"]
    ds.PatientID = study["patient_id"]
    ds.PatientBirthDate = study["birth_date"]
    ds.PatientSex = study["sex"]
    ds.PatientAge = study["age"]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom (TamperScan tamper lab); no real patient"
    ds.StudyInstanceUID = study["study_uid"]
    ds.StudyDate = study["date"]
    ds.StudyTime = study["time"]
    ds.ReferringPhysicianName = ""
    ds.StudyID = study["study_id"]
    ds.AccessionNumber = study["accession"]
    ds.StudyDescription = study["description"]
    ds.Modality = modality
    ds.SeriesInstanceUID = study["series_uid"]
    ds.SeriesNumber = 2
    ds.SeriesDate = study["date"]
    ds.SeriesTime = study["time"]
    ds.SeriesDescription = study["series_description"]
    ds.BodyPartExamined = study["body_part"]
    if modality == "MR":
        ds.ImageLaterality = "B"  # both breasts; satisfies the paired-body-part condition
    ds.PatientPosition = study["position"]
    ds.FrameOfReferenceUID = study["for_uid"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "TamperScan tamper lab"
    ds.ManufacturerModelName = "Synthetic phantom"
    ds.InstitutionName = "Synthetic"
    ds.SoftwareVersions = "tamperscan-lab 1"
    ds.AcquisitionNumber = 1
    ds.ContentDate = study["date"]
    ds.ContentTime = study["time"]
    ds.AcquisitionDate = study["date"]
    ds.AcquisitionTime = study["time"]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    return ds


def add_ct_acquisition(ds: pydicom.Dataset, protocol: Protocol) -> None:
    """CT Image module elements: kernel, dose, slice geometry, rescale to HU, windows."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP = 120
    ds.ExposureTime = 500
    ds.XRayTubeCurrent = int(round(protocol.mas / 0.5))
    ds.Exposure = int(round(protocol.mas))
    ds.CTDIvol = protocol.ctdi_vol
    ds.ConvolutionKernel = protocol.kernel
    ds.SpacingBetweenSlices = protocol.spacing
    ds.RescaleIntercept = CT_INTERCEPT
    ds.RescaleSlope = CT_SLOPE
    ds.RescaleType = "HU"
    ds.WindowCenter = [-600, 40]
    ds.WindowWidth = [1500, 400]


def add_mr_acquisition(ds: pydicom.Dataset, protocol: Protocol) -> None:
    """MR Image module elements of a 3-D fat-saturated T1 gradient echo, and its windows."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.ScanningSequence = "GR"
    ds.SequenceVariant = ["SP", "SS"]
    ds.ScanOptions = "FS"
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = 4.6
    ds.EchoTime = 2.3
    ds.EchoTrainLength = 1
    ds.FlipAngle = 10
    ds.MagneticFieldStrength = 1.5
    ds.ImagedNucleus = "1H"
    ds.SpacingBetweenSlices = protocol.spacing
    ds.WindowCenter = 600
    ds.WindowWidth = 1200


def study_info(rng: np.random.Generator, modality: str, seed: int, protocol: Protocol) -> dict:
    """Patient, study and series identity of one phantom (synthetic names, plausible dates)."""
    sex = "F" if modality == "MR" else str(rng.choice(["F", "M"]))
    age = int(rng.integers(42, 80))
    date = _dt.date(2020, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 1500)))
    birth = date - _dt.timedelta(days=365 * age + int(rng.integers(0, 365)))
    ct = modality == "CT"
    return {
        "patient_name": f"SYNTHETIC^{FIRST_NAMES[seed % len(FIRST_NAMES)]} {modality}{seed}",
        "patient_id": f"LAB-{modality}-{seed:06d}",
        "birth_date": birth.strftime("%Y%m%d"),
        "sex": sex,
        "age": f"{age:03d}Y",
        "study_uid": make_uid(seed, modality, "study"),
        "series_uid": make_uid(seed, modality, "series"),
        "for_uid": make_uid(seed, modality, "frame-of-reference"),
        "date": date.strftime("%Y%m%d"),
        "time": f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}00",
        "study_id": f"{seed % 100000}",
        "accession": f"SYN{seed:08d}",
        "description": "CT CHEST WO CONTRAST (SYNTHETIC)"
        if ct
        else "MRI BREAST BILATERAL W CONTRAST (SYNTHETIC)",
        "series_description": f"Chest {protocol.thickness:g} {protocol.kernel} (synthetic)"
        if ct
        else "ax t1 fs post (synthetic)",
        "body_part": "CHEST" if ct else "BREAST",
        "position": "HFS" if ct else "FFP",
    }
