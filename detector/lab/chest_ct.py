"""Synthetic chest CT anatomy: a thorax in patient millimetres, sampled plane by plane in HU.

``ChestCT.render(z)`` returns the noiseless, unblurred plane: the scanner (kernel blur, dose
dependent correlated noise, partial volume) is applied by :mod:`detector.lab.scanner` in the
writer, so noise is drawn per slice and never shared between slices. Bones live in
:mod:`detector.lab.chest_bones`.
"""

from __future__ import annotations

import numpy as np

from detector.lab.chest_bones import paint_bones
from detector.lab.shapes import Blob, Texture3D, blob_bbox, ellipse, make_blob, paint, ramp, soft
from detector.lab.trees import Segment, grow_forest, tube_fraction


class ChestCT:
    """A patient's thorax in millimetres; ``render(z)`` samples one axial plane in HU."""

    LENGTH = 290.0  # apex (t=0, z=0) to below the diaphragm domes (t=1, z=-LENGTH)

    def __init__(self, rng: np.random.Generator, size: int, n_slices: int, dz: float) -> None:
        self.rng = rng
        self.size = size
        self.fov = float(rng.uniform(340, 390))
        self.spacing = self.fov / size
        self.dz = dz
        self.x0 = -self.fov / 2 + self.spacing / 2
        self.y0 = -self.fov / 2 + self.spacing / 2 - float(rng.uniform(0, 15))
        # Body habitus.
        self.a = float(rng.uniform(148, 172))
        self.b_ant = float(rng.uniform(95, 115))
        self.b_post = self.b_ant + float(rng.uniform(0, 10))
        self.cy = float(rng.uniform(-5, 10))
        self.fat = float(rng.uniform(6, 18))
        self.muscle = float(rng.uniform(7, 11))
        self.wall = self.fat + self.muscle + 9.0
        self.phi = rng.uniform(0, 2 * np.pi, size=3)
        self.rib_phase = float(rng.uniform(0, 1))
        self.heart_x = float(rng.uniform(15, 30))
        # Coverage: the study starts somewhere with lung on every slice.
        cover = n_slices * self.dz
        t_lo, t_hi = 0.12, 0.92
        span = (t_hi - t_lo) * self.LENGTH
        start_t = t_lo + (rng.uniform(0, max(span - cover, 0)) / self.LENGTH)
        self.z_top = -start_t * self.LENGTH
        self.z = [self.z_top - cover + self.dz * (k + 1) for k in range(n_slices)]
        self.z = [round(v, 3) for v in self.z]
        self.spine_y = self.cy + self.b_post - self.wall - 18.0
        self.texture = Texture3D(rng, n_slices, self.dz, min(128, size), 2.5, self.fov)
        self.bone_tex = Texture3D(rng, n_slices, self.dz, min(128, size), 1.2, self.fov)
        self.vessels = self._grow_vessels()
        self.airways, self.airway_lumen = self._grow_airways()
        self.blobs: list[Blob] = []

    # --- anatomy as point-evaluable fields (x, y in mm, t in [0, 1] along the chest)

    def t_of(self, z: float | np.ndarray) -> np.ndarray:
        return np.asarray(-np.asarray(z) / self.LENGTH)

    def body_q(self, x: np.ndarray, y: np.ndarray, t: np.ndarray, inset: float = 0.0):
        theta = np.arctan2(y - self.cy, x)
        wobble = (
            1 + 0.025 * np.sin(2 * theta + self.phi[0]) + 0.015 * np.sin(3 * theta + self.phi[1])
        )
        width = (self.a * (0.9 + 0.1 * ramp(t, 0.0, 0.5)) - inset) * wobble
        b = np.where(y < self.cy, self.b_ant, self.b_post) * (0.93 + 0.07 * ramp(t, 0, 0.4)) - inset
        p = np.where(y < self.cy, 2.3, 3.2)
        q = (np.abs(x) / np.maximum(width, 1)) ** p + (np.abs(y - self.cy) / np.maximum(b, 1)) ** p
        return q ** (1 / p), np.minimum(width, b)

    def lung_fraction(self, x, y, t, edge: float = 1.0) -> np.ndarray:  # noqa: ANN001
        """Inside-fraction of either lung (vectorised over points or a grid)."""
        t = np.asarray(t, dtype=float)
        apex = 0.55 + 0.45 * ramp(t, -0.02, 0.22)
        q, size = self.body_q(x, y, t, inset=self.wall)
        cav = soft(q / apex, size * apex, edge)
        heart = ramp(t, 0.42, 0.62) * (1 - ramp(t, 0.95, 1.15))
        med_w = 18 + 10 * ramp(t, 0.2, 0.4)
        med = ellipse(x, y, 4.0, self.cy - 5, med_w, self.b_ant, edge)
        hrt = ellipse(x, y, self.heart_x, self.cy - 22, 66 * heart + 1, 46 * heart + 1, edge, 0.55)
        hrt = hrt * (heart > 0.02)
        spine = ellipse(x, y, 0.0, self.spine_y - 8, 30, 34, edge)
        aorta = ellipse(x, y, 24.0, self.spine_y - 32, 14, 14, edge) * ramp(t, 0.18, 0.25)
        dome_r = ellipse(
            x,
            y,
            -45,
            self.cy + 5,
            150 * ramp(t, 0.72, 1.1) + 1,
            120 * ramp(t, 0.72, 1.1) + 1,
            edge,
        )
        dome_l = ellipse(
            x,
            y,
            55,
            self.cy + 5,
            130 * ramp(t, 0.8, 1.15) + 1,
            100 * ramp(t, 0.8, 1.15) + 1,
            edge,
        )
        out = cav * (1 - med) * (1 - hrt) * (1 - spine) * (1 - aorta)
        out = out * (1 - dome_r * (t > 0.72)) * (1 - dome_l * (t > 0.8))
        return out

    def inside_lung(self, p: np.ndarray) -> bool:
        return bool(self._inside_lungs(np.asarray(p, float)[None, :])[0])

    def _inside_lungs(self, pts: np.ndarray) -> np.ndarray:
        return self.lung_fraction(pts[:, 0], pts[:, 1], self.t_of(pts[:, 2])) > 0.5

    def _grow_vessels(self) -> list[Segment]:
        rng = self.rng
        z_h = -0.45 * self.LENGTH
        roots = []
        for side in (-1, 1):
            for kind_dy, dz_h in ((-10.0, 25.0), (12.0, -15.0), (0.0, -45.0)):
                # arteries (upper, anterior), veins (lower, posterior), lower-lobe trunk
                hilum = np.array([side * 52.0, self.cy + kind_dy, z_h + dz_h])
                for d in (
                    [0, 0, 1],
                    [0, 0, -1],
                    [side, -0.6, 0.3],
                    [side, 0.6, -0.3],
                    [side, 0, 0],
                    [side * 0.5, 0.8, -0.8],
                    [side, -0.3, 0.8],
                    [side * 0.6, 0.3, -1],
                ):
                    roots.append(
                        (hilum, np.asarray(d, float), rng.uniform(3.2, 4.5), rng.uniform(20, 26))
                    )
        return grow_forest(rng, roots, 10, self._inside_lungs)

    def _grow_airways(self) -> tuple[list[Segment], float]:
        rng = self.rng
        carina = np.array([2.0, self.cy - 2.0, -0.36 * self.LENGTH])
        segs = [Segment(carina + [0, 0, 0.0], carina + [0, 0, 0.36 * self.LENGTH + 20], 9.0)]
        roots = []
        for side in (-1, 1):
            main_end = carina + np.array([side * 38.0, 6.0, -22.0])
            segs.append(Segment(carina, main_end, 6.5))
            for d in ([0, 0, 1], [0, 0, -1], [side, -0.5, 0.2], [side, 0.5, -0.5]):
                roots.append((main_end, np.asarray(d, float), 4.2, 24.0))
        segs += grow_forest(rng, roots, 6, self._inside_lungs, free_generations=2, min_radius=1.0)
        return segs, 0.72

    def add_nodules(self, n: int) -> list[Blob]:
        rng = self.rng
        z_lo, z_hi = self.z[0], self.z[-1]
        tries = 0
        while len(self.blobs) < n and tries < 400:
            tries += 1
            radius = float(np.exp(rng.uniform(np.log(2.0), np.log(15.0))))
            kind = "part-solid-nodule" if rng.random() < 0.35 and radius > 4 else "solid-nodule"
            c = np.array(
                [
                    rng.uniform(-140, 140),
                    rng.uniform(-90, 90),
                    rng.uniform(z_lo - 0.4 * self.dz, z_hi + 0.4 * self.dz),
                ]
            )
            c[1] += self.cy
            probes = [c] + [
                c + radius * 1.25 * np.asarray(v)
                for v in ([1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1])
            ]
            if not all(self.inside_lung(p) for p in probes):
                continue
            if any(np.linalg.norm(c - b.centre) < radius + b.radius + 6 for b in self.blobs):
                continue
            value = (
                float(rng.uniform(15, 55))
                if kind == "solid-nodule"
                else float(rng.uniform(-560, -380))
            )
            self.blobs.append(make_blob(rng, c, radius, kind, value))
        return self.blobs

    # --- rendering

    def render(self, z: float) -> np.ndarray:
        """The noiseless, unblurred plane at ``z`` mm in HU (the scanner model comes later)."""
        kz = (z - self.z[0]) / self.dz
        t = float(self.t_of(z))
        n = self.size
        sp = self.spacing
        xs = self.x0 + sp * np.arange(n)
        ys = self.y0 + sp * np.arange(n)
        x, y = np.meshgrid(xs, ys)
        edge = max(sp, 0.6)
        img = np.full((n, n), -1000.0, dtype=np.float64)
        tex = self.texture.slice(kz, n).astype(np.float64)
        btex = self.bone_tex.slice(kz, n).astype(np.float64)

        # Table: carbon-fibre shell under the back, foam in between.
        table_y = self.cy + self.b_post + 8
        shell = ellipse(x, y, 0, table_y + 420, 700, 420, edge) - ellipse(
            x, y, 0, table_y + 424, 700, 417, edge
        )
        paint(img, np.clip(shell, 0, 1) * (np.abs(x) < 210), 180.0)

        q, size = self.body_q(x, y, t)
        body = soft(q, size, edge)
        paint(img, body, 25.0)  # skin
        q2, size2 = self.body_q(x, y, t, inset=2.0)
        paint(img, soft(q2, size2, edge), -105.0 + 8 * tex)  # subcutaneous fat
        q3, size3 = self.body_q(x, y, t, inset=2.0 + self.fat)
        paint(img, soft(q3, size3, edge), 48.0 + 6 * tex)  # chest-wall muscle
        # Paraspinal muscles are thick: fill the back between spine and skin.
        paint(
            img,
            ellipse(x, y, 0, self.spine_y + 38, 62, 34, edge) * soft(q3, size3, edge),
            52.0 + 6 * tex,
        )
        # Intercostal / extrapleural fat line.
        q4, size4 = self.body_q(x, y, t, inset=self.wall - 3)
        paint(img, soft(q4, size4, edge), -80.0)

        # Mediastinum: fat, then organs.
        apex = 0.55 + 0.45 * ramp(t, -0.02, 0.22)
        qc, sc = self.body_q(x, y, t, inset=self.wall)
        cavity = soft(qc / apex, sc * apex, edge)
        paint(img, cavity, -95.0 + 10 * tex)  # mediastinal fat fills the cavity first
        heart = float(ramp(t, 0.42, 0.62) * (1 - ramp(t, 0.95, 1.15)))
        if heart > 0.02:
            paint(
                img,
                ellipse(
                    x, y, self.heart_x, self.cy - 22, 66 * heart - 4, 46 * heart - 4, edge, 0.55
                ),
                42.0,
            )
        if t < 0.5:  # great vessels above the heart
            up = 1 - ramp(t, 0.42, 0.5)
            if t > 0.22:
                paint(
                    img, up * ellipse(x, y, 8, self.cy - 35, 15, 15, edge), 42.0
                )  # ascending aorta
                paint(
                    img, up * ellipse(x, y, 30, self.cy - 30, 13, 14, edge), 40.0
                )  # pulmonary trunk
            else:
                arch = ramp(t, 0.15, 0.2)
                paint(img, arch * ellipse(x, y, 10, self.cy - 15, 30, 11, edge, 0.5), 42.0)
            paint(img, ellipse(x, y, -24, self.cy - 28, 10, 11, edge), 38.0)  # SVC
            if t < 0.3:
                for dx in (-14, 10, 22):  # supra-aortic branches
                    paint(img, ellipse(x, y, dx, self.cy - 30, 5.5, 5.5, edge), 40.0)
        paint(img, ellipse(x, y, 24, self.spine_y - 32, 12, 12, edge) * ramp(t, 0.18, 0.25), 40.0)
        paint(img, ellipse(x, y, 8, self.spine_y - 24, 7, 6, edge), 35.0)  # oesophagus
        paint(img, ellipse(x, y, 8, self.spine_y - 24, 2.0, 1.5, edge), -900.0)

        # Upper abdomen under the domes.
        if t > 0.72:
            dr = ramp(t, 0.72, 1.1)
            paint(
                img,
                cavity * ellipse(x, y, -45, self.cy + 5, 150 * dr + 1, 120 * dr + 1, edge),
                58.0 + 4 * tex,
            )
        if t > 0.8:
            dl = ramp(t, 0.8, 1.15)
            paint(
                img,
                cavity * ellipse(x, y, 55, self.cy + 5, 130 * dl + 1, 100 * dl + 1, edge),
                45.0 + 4 * tex,
            )

        # Lungs: parenchyma with a dependent (posterior) density gradient and texture.
        lung = self.lung_fraction(x, y, t, edge)
        grad = np.clip((y - self.cy) / (2 * self.b_post) + 0.5, 0, 1)
        paren = -885.0 + 55.0 * grad + 18.0 * tex
        vessel = tube_fraction(self.vessels, self.x0, self.y0, sp, (n, n), z)
        paren = paren * (1 - vessel) + 40.0 * vessel
        paint(img, lung, paren)
        # Airways: soft-tissue walls, air lumen (trachea and bronchi also in the mediastinum).
        wall = tube_fraction(self.airways, self.x0, self.y0, sp, (n, n), z)
        lumen = tube_fraction(self.airways, self.x0, self.y0, sp, (n, n), z, self.airway_lumen)
        region = np.maximum(lung, cavity)
        paint(img, wall * region, 10.0)
        paint(img, lumen * region, -990.0)

        # Nodules.
        for blob in self.blobs:
            box = blob_bbox(blob, self.x0, self.y0, sp, (n, n), z)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            sub = img[r0:r1, c0:c1]
            frac = blob.fraction(xs[c0:c1], ys[r0:r1], z, sp)
            if blob.kind == "part-solid-nodule":
                paint(sub, frac, blob.value + 40 * tex[r0:r1, c0:c1])
                core = blob.fraction(xs[c0:c1], ys[r0:r1], z, sp, scale=0.42)
                paint(sub, core, 30.0 + 8 * tex[r0:r1, c0:c1])
            else:
                paint(sub, frac, blob.value + 10 * tex[r0:r1, c0:c1])

        paint_bones(self, img, x, y, t, z, edge, btex)
        return img
