"""Synthetic breast MRI anatomy (prone, T1 fat-saturated, post contrast), plane by plane.

``BreastMR.render(z)`` returns the noiseless plane; blur, the coil bias field and Rician noise
at the series' SNR are applied by :mod:`detector.lab.scanner` in the writer.
"""

from __future__ import annotations

import numpy as np

from detector.lab.shapes import Blob, Texture3D, blob_bbox, ellipse, make_blob, paint, soft
from detector.lab.trees import Segment, grow_forest, tube_fraction


class BreastMR:
    """Prone breast MRI, T1-weighted fat-saturated, after contrast (the Duke set's look)."""

    def __init__(self, rng: np.random.Generator, size: int, n_slices: int, dz: float) -> None:
        self.rng = rng
        self.size = size
        self.fov = float(rng.uniform(320, 360))
        self.spacing = self.fov / size
        self.dz = dz
        self.x0 = -self.fov / 2 + self.spacing / 2
        self.y0 = -self.fov / 2 + self.spacing / 2
        self.chest_cy = float(rng.uniform(55, 70))
        self.chest_a = float(rng.uniform(150, 168))
        self.chest_b = float(rng.uniform(85, 100))
        self.wall_y = self.chest_cy - self.chest_b * 0.82
        self.breast_x = float(rng.uniform(78, 95))
        self.breast_w = float(rng.uniform(58, 78))
        self.breast_d = float(rng.uniform(65, 110))
        self.density = float(rng.uniform(-0.6, 0.8))  # higher -> denser fibroglandular tissue
        self.half_height = float(rng.uniform(70, 95))
        cover = n_slices * self.dz
        centre = float(rng.uniform(-0.35, 0.35)) * max(self.half_height - cover / 2, 0)
        self.z = [round(centre - cover / 2 + self.dz * (k + 0.5), 3) for k in range(n_slices)]
        grid = min(128, size)
        self.fgt = Texture3D(rng, n_slices, self.dz, grid, 3.0, self.fov)
        self.fine = Texture3D(rng, n_slices, self.dz, grid, 1.2, self.fov)
        self.bias_coef = rng.normal(scale=0.12, size=5)
        self.vessels: list[Segment] = []
        for side in (-1, 1):
            for _ in range(3):
                root = np.array(
                    [
                        side * (self.breast_x + rng.uniform(-30, 30)),
                        self.wall_y,
                        rng.uniform(-40, 40),
                    ]
                )
                d = np.array([rng.uniform(-0.3, 0.3), -1.0, rng.uniform(-0.4, 0.4)])
                self.vessels += grow_forest(
                    rng,
                    [(root, d, rng.uniform(1.0, 1.6), 22.0)],
                    4,
                    lambda pts: np.ones(len(pts), bool),
                )
        self.blobs: list[Blob] = []

    def profile(self, z: float | np.ndarray) -> np.ndarray:
        u = (np.asarray(z) + 10.0) / self.half_height
        return np.sqrt(np.clip(1 - u**2, 0, 1))

    def breast_fraction(self, x, y, z, edge: float = 1.0, inset: float = 0.0) -> np.ndarray:  # noqa: ANN001
        p = self.profile(z)
        out = np.zeros(np.broadcast(x, y).shape)
        for side in (-1, 1):
            w = self.breast_w * np.sqrt(p) - inset
            d = self.breast_d * p - inset
            base = self.wall_y + 12
            yy = np.where(y < base, (base - y) / np.maximum(d, 1), (y - base) / 45.0)
            q = np.sqrt(((x - side * self.breast_x) / np.maximum(w, 1)) ** 2 + yy**1.8)
            frac = soft(q, np.maximum(np.minimum(w, d), 1), edge)
            out = np.maximum(out, frac * (p > 0.05))
        return out

    def inside_breast(self, p: np.ndarray, margin: float = 0.0) -> bool:
        return bool(self.breast_fraction(p[0], p[1], p[2], inset=margin) > 0.5)

    def add_masses(self, n: int) -> list[Blob]:
        rng = self.rng
        tries = 0
        while len(self.blobs) < n and tries < 400:
            tries += 1
            radius = float(np.exp(rng.uniform(np.log(3.0), np.log(14.0))))
            side = rng.choice([-1, 1])
            c = np.array(
                [
                    side * self.breast_x + rng.uniform(-50, 50),
                    self.wall_y - rng.uniform(10, 90),
                    rng.uniform(self.z[0] - 0.4 * self.dz, self.z[-1] + 0.4 * self.dz),
                ]
            )
            if not self.inside_breast(c, margin=radius + 6):
                continue
            if any(np.linalg.norm(c - b.centre) < radius + b.radius + 6 for b in self.blobs):
                continue
            kind = "rim-enhancing-mass" if radius > 6 and rng.random() < 0.4 else "mass"
            self.blobs.append(make_blob(rng, c, radius, kind, float(rng.uniform(850, 1250))))
        return self.blobs

    def render(self, z: float) -> np.ndarray:
        """The noiseless, unblurred plane at ``z`` mm (signal before coil bias and noise)."""
        kz = (z - self.z[0]) / self.dz
        n = self.size
        sp = self.spacing
        xs = self.x0 + sp * np.arange(n)
        ys = self.y0 + sp * np.arange(n)
        x, y = np.meshgrid(xs, ys)
        edge = max(sp, 0.6)
        img = np.zeros((n, n))
        fgt_t = self.fgt.slice(kz, n)
        fine = self.fine.slice(kz, n)
        # Body outline = thorax + breasts: skin, suppressed fat, then the breast parenchyma;
        # the chest wall (pectoral muscle, ribs, lungs, heart) is painted last, over the base.
        chest = ellipse(x, y, 0, self.chest_cy, self.chest_a, self.chest_b, edge)
        br = self.breast_fraction(x, y, z, edge)
        paint(img, np.maximum(chest, br), 330.0)
        chest_fat = ellipse(x, y, 0, self.chest_cy, self.chest_a - 2, self.chest_b - 2, edge)
        br_fat = self.breast_fraction(x, y, z, edge, inset=1.8)
        paint(img, np.maximum(chest_fat, br_fat), 112.0 + 12 * fine)
        deep = self.breast_fraction(x, y, z, edge, inset=9.0)
        # Fibroglandular tissue: denser behind the nipple, thresholded smooth 3-D texture.
        centre_w = np.zeros_like(x)
        for side in (-1, 1):
            centre_w = np.maximum(centre_w, np.exp(-(((x - side * self.breast_x) / 45.0) ** 2)))
        level = 0.8 * fgt_t + 1.4 * centre_w + self.density - 1.0
        fgt = 1 / (1 + np.exp(-level / 0.3))
        paint(img, deep * fgt, 330.0 + 60 * fine + 40 * fgt_t)
        muscle = ellipse(x, y, 0, self.chest_cy, self.chest_a - 14, self.chest_b - 12, edge)
        paint(img, muscle, 250.0 + 12 * fine)
        inner = ellipse(x, y, 0, self.chest_cy + 6, self.chest_a - 30, self.chest_b - 26, edge)
        paint(img, inner, 120.0)
        for j in range(9):
            ang = np.pi * (0.08 + 0.84 * j / 8)
            rx = (self.chest_a - 22) * np.cos(ang)
            ry = self.chest_cy + 6 - (self.chest_b - 18) * np.sin(ang) * 0.95
            paint(img, ellipse(x, y, rx, ry, 7, 4, edge, -ang + np.pi / 2), 60.0)
            paint(img, ellipse(x, y, rx, ry, 5, 2.5, edge, -ang + np.pi / 2), 170.0)
        for side in (-1, 1):
            paint(img, ellipse(x, y, side * 62, self.chest_cy + 20, 52, 58, edge), 35.0 + 8 * fine)
        paint(img, ellipse(x, y, 12, self.chest_cy - 2, 48, 42, edge, 0.4), 720.0 + 15 * fine)
        paint(img, ellipse(x, y, 0, self.chest_cy + 62, 16, 15, edge), 160.0)  # vertebra
        for side in (-1, 1):  # internal mammary vessels
            paint(img, ellipse(x, y, side * 22, self.wall_y + 10, 2.2, 2.2, edge), 800.0)

        vessel = tube_fraction(self.vessels, self.x0, self.y0, sp, (n, n), z)
        paint(img, vessel * br, 700.0)
        for blob in self.blobs:
            box = blob_bbox(blob, self.x0, self.y0, sp, (n, n), z)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            sub = img[r0:r1, c0:c1]
            f = blob.fraction(xs[c0:c1], ys[r0:r1], z, sp)
            paint(sub, f, blob.value + 60 * fine[r0:r1, c0:c1])
            if blob.kind == "rim-enhancing-mass":
                paint(sub, blob.fraction(xs[c0:c1], ys[r0:r1], z, sp, scale=0.62), 420.0)

        return img

    def coil_bias(self) -> np.ndarray:
        """Smooth receive-coil bias field of this series (breast coil: brighter anteriorly)."""
        n = self.size
        xs = self.x0 + self.spacing * np.arange(n)
        ys = self.y0 + self.spacing * np.arange(n)
        x, y = np.meshgrid(xs, ys)
        c = self.bias_coef
        u, v = x / self.fov, y / self.fov
        bias = np.exp(c[0] * u + c[1] * v + c[2] * u * v + c[3] * u**2 + c[4] * v**2)
        return bias * (1.0 + 0.35 * np.clip(-(y - self.wall_y) / 120.0, -0.6, 1.0))
