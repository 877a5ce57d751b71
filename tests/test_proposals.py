"""Automatic region proposals find the phantom lesions and stay inside the anatomy."""

from __future__ import annotations

import pytest

from detector.lab.phantoms import generate_study
from detector.proposals import body_mask, lung_mask, propose
from detector.slices import dataset_to_slice


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_every_lesion_centre_gets_a_blob_proposal(modality: str) -> None:
    study = generate_study(modality, 6, seed=5, size=256)
    assert study.lesions
    for lesion in study.lesions:
        image = dataset_to_slice(study.datasets[lesion.slice_index])
        proposals = propose(image, stride_px=0)
        assert all(p.source == "proposal" for p in proposals)
        assert any(abs(p.x - lesion.x) <= 4 and abs(p.y - lesion.y) <= 4 for p in proposals), (
            f"{modality} lesion at ({lesion.x}, {lesion.y}) on slice {lesion.slice_index} missed"
        )


def test_window_grid_covers_the_lungs_only() -> None:
    study = generate_study("CT", 2, seed=3, size=256)
    image = dataset_to_slice(study.datasets[0])
    lungs = lung_mask(image)
    assert 0.05 < lungs.mean() < 0.6
    assert (lungs & ~body_mask(image)).sum() == 0
    windows = [p for p in propose(image, stride_px=24) if p.source == "window"]
    assert len(windows) > 10
    assert all(lungs[p.y, p.x] for p in windows)
