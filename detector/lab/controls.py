"""Genuine control locations for the manifests, on-lesion ones guaranteed.

A genuine tumour must never be a "hit": every manifest holds genuine rows on real lesions
(TM) beside genuine rows on plain tissue (TB), so "there is a lesion here" cannot separate
tampered from genuine. Before any attack runs, :func:`reserve_lesions` sets aside about a
quarter of each modality's lesions (at least one) and the slices they reach; no attack edits
those slices, so TM controls exist whenever a modality has two lesions or more (or one and no
removal). Controls only use slices no attack edited, and never the source of a copy-move: its
pixels now occur twice in the study, and content alone does not say which end was moved (every
copy detector rightly flags both ends; the finding names the pair), so it is no clean control
(only a lab too small to have any other on-lesion control uses one).
"""

from __future__ import annotations

import numpy as np

from detector.lab.edits import (
    LabState,
    StudySeries,
    TamperError,
    candidate_mask,
    pick_location,
    read_slice_data,
)
from detector.lab.lesions import Lesion
from detector.lab.manifest import GENUINE, ManifestRow

RESERVED_FRACTION = 0.25
SOURCE_MARGIN = 1.3  # a source disc may be up to 1/0.8 of the pasted one (family B scales)


def reserve_lesions(lab: LabState, seed: int, removal: bool) -> None:
    """Keep some lesions of every modality untouched for TM controls (own generator).

    A modality with a single lesion keeps it only when no removal is asked for: the lab then
    has on-lesion controls or a removal, not both (give more studies for both).
    """
    rng = np.random.default_rng([seed, 2501])
    for modality in sorted({st.modality for st in lab.studies}):
        pool = [
            (st, i, les) for st in lab.of_modality(modality) for i, les in lab.known_lesions(st)
        ]
        if not pool or (removal and len(pool) < 2):
            continue
        n = max(1, int(round(RESERVED_FRACTION * len(pool))))
        for j in rng.permutation(len(pool))[:n]:
            st, i, les = pool[int(j)]
            lab.kept.add(i)
            for k in range(len(st.paths)):
                if les.radius_on_slice_mm(st.z[k]) > 0 or k == les.slice_index:
                    lab.reserved.add((st.name, k))
                    lab.touched.add((st.name, k))


def copy_sources(lab: LabState, st: StudySeries) -> dict[int, list[tuple[float, float, float]]]:
    """Per slice of ``st``, (x, y, radius px) discs around the copy-move sources near it."""
    out: dict[int, list[tuple[float, float, float]]] = {}
    for rec in lab.records:
        if rec.attack != "copy-move" or rec.study != st.name or not rec.source:
            continue
        first = int(rec.source["slice_index"])
        radius = (rec.radius_mm or 12.0) / st.spacing * SOURCE_MARGIN + 6
        # and the slice either side: anatomy continues, so a copy of slice s resembles s +- 1
        for k in range(first - 1, first + int((rec.detail or {}).get("slices", 1)) + 1):
            out.setdefault(k, []).append((rec.source["x"], rec.source["y"], radius))
    return out


def _inside(x: float, y: float, discs: list[tuple[float, float, float]]) -> bool:
    return any((x - a) ** 2 + (y - b) ** 2 < r**2 for a, b, r in discs)


def _on_lesion(
    lab: LabState,
    studies: list[StudySeries],
    sources: dict[str, dict[int, list[tuple[float, float, float]]]],
) -> list[tuple[StudySeries, int, Lesion]]:
    """(study, slice, lesion) for every unedited slice through a lesion, outside ``sources``."""
    out = []
    for st in studies:
        near = sources.get(st.name, {})
        for _, les in lab.known_lesions(st):
            for k in range(len(st.paths)):
                if lab.edited(st, k) or _inside(les.x, les.y, near.get(k, [])):
                    continue
                if les.radius_on_slice_mm(st.z[k]) > 0.5 * les.radius_mm:
                    out.append((st, k, les))
    return out


def controls(lab: LabState, n: int, modality: str) -> list[ManifestRow]:
    """``n`` genuine locations on unedited slices: about half on real lesions (TM), >= 1."""
    rng = lab.rng
    studies = lab.of_modality(modality)
    rows: list[ManifestRow] = []
    sources = {st.name: copy_sources(lab, st) for st in studies}
    on_lesion = _on_lesion(lab, studies, sources)
    if not on_lesion:  # a tiny lab: a lesion beside a copy source beats no on-lesion control
        on_lesion = _on_lesion(lab, studies, {})
    if not on_lesion and any(lab.known_lesions(st) for st in studies):
        raise TamperError(f"no untouched genuine lesion left for {modality} on-lesion controls")
    rng.shuffle(on_lesion)  # type: ignore[arg-type]
    for st, k, les in on_lesion[: max(1, n // 2)]:
        rows.append(
            ManifestRow(
                lab.rel(st.paths[k]), les.x, les.y, 0, GENUINE, "TM", modality, family=GENUINE
            )
        )
    tries = 0
    while len(rows) < n and tries < 50 * max(n, 1):
        tries += 1
        st = studies[int(rng.integers(len(studies)))]
        free = [k for k in range(len(st.paths)) if not lab.edited(st, k)]
        if not free:
            continue
        k = int(rng.choice(free))
        sl = read_slice_data(st.paths[k])
        mask = candidate_mask(sl.values, st.modality, 8 / st.spacing + 4)
        loc = pick_location(rng, mask, lab.avoid(st, k) + sources[st.name].get(k, []))
        if loc is None:
            continue
        rows.append(
            ManifestRow(
                lab.rel(st.paths[k]), loc[0], loc[1], 0, GENUINE, "TB", modality, family=GENUINE
            )
        )
    if len(rows) < n:
        raise TamperError(
            f"only {len(rows)} of {n} genuine control locations could be placed in "
            f"{modality} studies: tamper fewer locations or give more studies/slices"
        )
    return rows
