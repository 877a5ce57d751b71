"""noise-copy: scan noise borrowed from elsewhere in the series is found; genuine noise is not.

The attack here is written for this test (not lab family A or B): a smooth fill carrying the
fine-scale residual of a flat area of another slice, turned or flipped and rescaled, as a
forger who wants the scanner's own noise spectrum would do it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from detector.forensics.noisecopy import MIN_HITS, NoiseCopyCheck, _transitions
from detector.forensics.references import neighbours_of, reference_locations, tissue_mask
from detector.interface import Location, SliceImage
from detector.lab.phantoms import write_phantoms
from detector.proposals import body_mask
from detector.registry import create
from detector.slices import read_slice, series_files


@pytest.fixture(scope="module")
def series_by_modality(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[SliceImage]]:
    root = tmp_path_factory.mktemp("noisecopy")
    write_phantoms("CT", 1, 16, root / "ct", seed=31, size=160)
    write_phantoms("MR", 1, 16, root / "mr", seed=32, size=160)
    out = {}
    for modality, folder in (("CT", root / "ct"), ("MR", root / "mr")):
        study = next(p for p in folder.iterdir() if p.is_dir())
        out[modality] = [read_slice(f) for f in series_files(study)]
    return out


def _borrow(
    series: list[SliceImage], k: int, rng: np.random.Generator, radius: float = 10.0
) -> tuple[list[SliceImage], tuple[int, int]]:
    """Slice ``k`` with a disc filled smoothly and covered by another slice's flat-area noise."""
    image = series[k]
    px = image.pixels.astype(np.float64)
    ys, xs = np.nonzero(ndimage.binary_erosion(tissue_mask(image), iterations=14))
    i = int(rng.integers(ys.size))
    y, x = int(ys[i]), int(xs[i])
    donor = series[(k + 5) % len(series)].pixels.astype(np.float64)
    half = int(radius) + 3
    smooth = ndimage.gaussian_filter(donor, 2)
    spread = ndimage.uniform_filter(smooth**2, 15) - ndimage.uniform_filter(smooth, 15) ** 2
    inner = np.zeros(donor.shape, dtype=bool)
    inner[half + 1 : -half - 1, half + 1 : -half - 1] = True
    inner &= ndimage.binary_erosion(body_mask(series[(k + 5) % len(series)]), iterations=half)
    flat = inner & (spread <= np.percentile(spread[inner], 15))
    dys, dxs = np.nonzero(flat)
    j = int(rng.integers(dys.size))
    dy, dx = int(dys[j]), int(dxs[j])
    patch = donor[dy - half : dy + half + 1, dx - half : dx + half + 1]
    noise = np.rot90(patch - ndimage.gaussian_filter(patch, 4.0), int(rng.integers(1, 4))).T * 1.1
    rr, cc = np.ogrid[-half : half + 1, -half : half + 1]
    alpha = np.clip((radius - np.hypot(rr, cc)) / 2.0, 0, 1)
    window = (slice(y - half, y + half + 1), slice(x - half, x + half + 1))
    level = float(np.median(px[window])) + (60.0 if image.modality == "CT" else 0.0)
    new = px.copy()
    new[window] = px[window] * (1 - alpha) + (level + noise) * alpha
    tampered = replace(image, pixels=np.round(new).astype(np.float32), source=image.source + "#t")
    return [tampered if n == k else s for n, s in enumerate(series)], (x, y)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_borrowed_noise_is_found_and_genuine_noise_is_not(
    series_by_modality: dict[str, list[SliceImage]], modality: str
) -> None:
    series = series_by_modality[modality]
    check = NoiseCopyCheck()
    genuine = check.score(reference_locations(series, 160, seed=3, with_context=True))
    # The null the verdict relies on: a genuine region never reaches MIN_HITS. Measured on
    # development seeds: 0 of 1,800 reference regions reach it, 9 reach one hit.
    assert max(r.score for r in genuine) < MIN_HITS

    rng = np.random.default_rng(5)
    found = 0
    for k in (3, 8, 12):
        tampered, (x, y) = _borrow(series, k, rng)
        loc = Location(tampered[k], x, y, tuple(tampered), neighbours_of(tampered, k))
        score = check.score([loc])[0]
        found += score.score >= MIN_HITS
        assert score.heatmap.shape == (64, 64)
    # Three 10-pixel borrowed-noise discs: each carries dozens of copied 8x8 blocks, so at
    # least two of three must clear the threshold (the dev harness found 8-9 of 18 smaller ones).
    assert found >= 2


def test_it_is_a_registered_forensic_check_with_an_analytic_null() -> None:
    check = create("noise-copy")
    assert check.kind.value == "forensic" and check.needs_context
    null = check.calibrate([])
    assert null.p_values([MIN_HITS - 1])[0] == 1.0
    assert null.p_values([MIN_HITS])[0] < 1e-5


def test_edges_are_not_noise_words() -> None:
    """A step edge gives a word with few sign changes; such words are never indexed."""
    step = np.zeros((8, 8))
    step[:, 4:] = 1
    word = np.uint64(sum(1 << (r * 8 + c) for r in range(8) for c in range(8) if step[r, c]))
    noise = np.random.default_rng(0).standard_normal((8, 8)) > 0
    noisy = np.uint64(sum(1 << (r * 8 + c) for r in range(8) for c in range(8) if noise[r, c]))
    assert _transitions(np.array([word]))[0] == 8
    assert _transitions(np.array([noisy]))[0] > 30


def test_unused_path_argument_is_ignored(tmp_path: Path) -> None:
    assert NoiseCopyCheck.create(tmp_path, "CT").name == "noise-copy"
