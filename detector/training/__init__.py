"""Training both detectors from folders of DICOM files, then calibrating them.

The package splits the job along its purposes: :mod:`.options` (what can be asked and the
network it builds), :mod:`.data` (finding slices, regions CSVs, the held-out split),
:mod:`.patches` (where patches are drawn), :mod:`.loop` (the optimiser, progress bar and
budgets) and :mod:`.run` (the whole run, checkpoint and calibration). The names callers use are
re-exported here.
"""

from detector.training.data import (
    SliceRef,
    find_dicom_slices,
    infer_modality,
    median_spacing_mm,
    read_regions_csv,
    split_holdout,
)
from detector.training.loop import FitResult, StopReason, fit, training_loss
from detector.training.options import (
    DEFAULT_BTD_MAX_TIMESTEP,
    DEFAULT_HOLE_MM,
    DEFAULT_LR,
    DEFAULT_PROPOSAL_FRACTION,
    DETECTORS,
    TrainingError,
    TrainOptions,
    build_model,
    hole_pixels,
)
from detector.training.patches import PatchDataset, calibration_patches
from detector.training.run import (
    TrainResult,
    calibrate,
    detector_from_model,
    snapshot_path,
    train,
)

__all__ = [
    "DEFAULT_BTD_MAX_TIMESTEP",
    "DEFAULT_HOLE_MM",
    "DEFAULT_LR",
    "DEFAULT_PROPOSAL_FRACTION",
    "DETECTORS",
    "FitResult",
    "PatchDataset",
    "SliceRef",
    "StopReason",
    "TrainOptions",
    "TrainResult",
    "TrainingError",
    "build_model",
    "calibrate",
    "calibration_patches",
    "detector_from_model",
    "find_dicom_slices",
    "fit",
    "hole_pixels",
    "infer_modality",
    "snapshot_path",
    "median_spacing_mm",
    "read_regions_csv",
    "split_holdout",
    "train",
    "training_loss",
]
