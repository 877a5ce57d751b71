"""3-D grouping of flagged regions into findings (storage/findings.py)."""

from dataclasses import dataclass

from storage.findings import finding_numbers, group_findings


@dataclass
class R:
    series_uid: str
    x: int
    y: int
    radius_px: float | None
    slice_index: int | None
    z_mm: float | None = None


def test_one_lesion_on_four_slices_is_one_finding() -> None:
    regions = [R("s", 100 + k, 200, 10.0, 7 + k, 2.0 * k) for k in range(4)]
    found = group_findings(regions)
    assert len(found) == 1
    f = found[0]
    assert (f.first_slice, f.last_slice) == (7, 10)
    assert sorted(f.members) == [0, 1, 2, 3]


def test_far_apart_in_plane_or_series_or_slices_stay_separate() -> None:
    regions = [
        R("s", 100, 100, 10.0, 5),
        R("s", 300, 300, 10.0, 6),  # adjacent slice, far in plane
        R("t", 100, 100, 10.0, 6),  # other series
        R("s", 100, 100, 10.0, 12),  # same place, six slices away
    ]
    assert finding_numbers(regions) == [1, 2, 4, 3]


def test_extent_cap_splits_a_long_column() -> None:
    regions = [R("s", 50, 50, 6.0, k, 5.0 * k) for k in range(20)]  # 95 mm tall column
    found = group_findings(regions, max_extent_mm=60.0)
    assert len(found) == 2
    assert all(
        max(regions[j].z_mm for j in f.members) - min(regions[j].z_mm for j in f.members) <= 60
        for f in found
    )


def test_overlapping_regions_on_one_slice_are_one_finding() -> None:
    regions = [R("s", 50, 50, 6.0, 3), R("s", 52, 50, 6.0, 3), R("s", 150, 50, 6.0, 3)]
    assert finding_numbers(regions) == [1, 1, 2]
