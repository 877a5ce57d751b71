"""Synthetic chest CT and breast MRI studies, written as valid DICOM series (the public face).

The detectors under test learn what genuine anatomy and genuine scanner noise look like, so the
phantoms must have both: anatomy defined in 3-D patient millimetres (:mod:`.chest_ct`,
:mod:`.chest_bones`, :mod:`.breast_mr`, built from :mod:`.shapes` and :mod:`.trees`) and sampled
slice by slice, so structures continue from one slice to the next as in a real series; then a
scanner model (:mod:`.scanner`: reconstruction-kernel noise at a dose-dependent level, partial
volume and breathing along z, MR Rician noise) applied per slice by :mod:`.writer`, with
headers from :mod:`.headers` and the lesion ground truth of :mod:`.lesions`.

Import from here; the modules behind it keep their helpers to themselves.
"""

from detector.lab.headers import CT_BITS_STORED, CT_INTERCEPT, CT_SLOPE, MR_BITS_STORED
from detector.lab.lesions import LESIONS_CSV, Lesion, read_lesions_csv, write_lesions_csv
from detector.lab.scanner import KERNELS, Protocol
from detector.lab.writer import MODALITIES, PhantomStudy, generate_study, write_phantoms

__all__ = [
    "CT_BITS_STORED",
    "CT_INTERCEPT",
    "CT_SLOPE",
    "KERNELS",
    "LESIONS_CSV",
    "MODALITIES",
    "MR_BITS_STORED",
    "Lesion",
    "PhantomStudy",
    "Protocol",
    "generate_study",
    "read_lesions_csv",
    "write_lesions_csv",
    "write_phantoms",
]
