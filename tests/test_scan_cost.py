"""What makes a large series affordable changes no score: masks made once per slice, masks
carried from the index pass to the scan, noise-copy queried a slice at a time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from detector import proposals, registry
from detector.forensics.references import neighbours_of, tissue_mask
from detector.interface import Location, SliceImage
from detector.lab.phantoms import write_phantoms
from detector.series_scan import SeriesScan, order_slices
from detector.slices import SliceReadError, read_slice, series_files
from tests.test_noise_copy import _borrow

CHECKS = ("noise-consistency", "slice-consistency", "exact-repeat", "noise-copy")


@pytest.fixture(scope="module")
def series_files_ct(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("scan")
    write_phantoms("CT", 1, 10, root, seed=44, size=128)
    return series_files(next(p for p in root.iterdir() if p.is_dir()))


def _scan(files: list[Path], read=read_slice, carry: bool = True) -> list[tuple]:  # noqa: ANN001
    slices = order_slices([(f.name, f) for f in files])
    scan = SeriesScan("1.2", slices, read, [registry.create(c) for c in CHECKS], [], 0, 8, 2, 600)
    if not carry:
        scan._adopt = lambda k, image: image  # type: ignore[method-assign]
    scan.run({}, 5000)
    scan.finish()
    return [
        (
            r.slice_index,
            r.proposal.x,
            r.proposal.y,
            r.scores,
            {k: v.tobytes() for k, v in r.maps.items()},
        )
        for r in scan.regions
    ]


def test_masks_are_made_once_per_slice_and_shared_read_only(
    series_files_ct: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = proposals._body_mask
    monkeypatch.setattr(proposals, "_body_mask", lambda image: calls.append(1) or real(image))
    image = read_slice(series_files_ct[4])
    assert tissue_mask(image) is tissue_mask(image)
    proposals.propose(image)
    assert len(calls) == 1
    with pytest.raises(ValueError):
        proposals.body_mask(image)[0, 0] = True
    # New pixels, new masks: replace() does not carry them over.
    other = dataclasses.replace(image, pixels=image.pixels + 1)
    proposals.body_mask(other)
    assert len(calls) == 2


def test_carried_masks_and_an_unreadable_slice_leave_every_score_unchanged(
    series_files_ct: list[Path],
) -> None:
    assert _scan(series_files_ct) == _scan(series_files_ct, carry=False)

    broken = series_files_ct[3]

    def read(path: Path) -> SliceImage:
        if path == broken:
            raise SliceReadError(f"{path}: unreadable")
        return read_slice(path)

    assert _scan(series_files_ct, read) == _scan(series_files_ct, read, carry=False)


def test_noise_copy_batched_per_slice_equals_one_location_at_a_time(
    series_files_ct: list[Path],
) -> None:
    rng = np.random.default_rng(3)
    series, (x, y) = _borrow([read_slice(f) for f in series_files_ct], 5, rng, radius=9.0)
    locations = [
        Location(series[5], x + dx, y + dy, tuple(series), neighbours_of(series, 5))
        for dx, dy in ((0, 0), (5, -4), (-7, 6), (12, 0))
    ]
    for k in (2, 5, 7):
        ys, xs = np.nonzero(tissue_mask(series[k]))
        for i in rng.integers(0, ys.size, 5):
            locations.append(
                Location(series[k], int(xs[i]), int(ys[i]), tuple(series), neighbours_of(series, k))
            )
    together = registry.create("noise-copy").score(locations)
    alone = [registry.create("noise-copy").score([loc])[0] for loc in locations]
    assert together[0].score >= 3  # the borrowed noise is found
    for a, b in zip(together, alone, strict=True):
        assert a.score == b.score and np.array_equal(a.heatmap, b.heatmap)
