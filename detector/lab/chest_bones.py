"""The bony thorax of the chest CT phantom: vertebrae, ribs sloping with z, sternum, scapulae."""

from __future__ import annotations

import numpy as np

from detector.lab.shapes import ellipse, paint, ramp, soft


def paint_bones(scene, img, x, y, t, z, edge, btex) -> None:  # noqa: ANN001
    """Spine, ribs, sternum and scapulae of ``scene`` (a ChestCT) painted into ``img``."""
    sy = scene.spine_y
    disc = (z % 28.0) < 5.0
    body_val = 80.0 if disc else 230.0 + 40 * btex
    paint(img, ellipse(x, y, 0, sy, 20, 17, edge), 700.0)  # vertebral body cortex
    paint(img, ellipse(x, y, 0, sy, 18, 15, edge), body_val)
    # Posterior elements: ring around the canal, spinous process.
    paint(img, ellipse(x, y, 0, sy + 27, 16, 13, edge), 600.0)
    paint(img, ellipse(x, y, 0, sy + 27, 8, 8.5, edge), 15.0)  # canal (CSF/cord)
    phase = (z % 28.0) / 28.0
    sp_len = 14 + 12 * np.cos(2 * np.pi * phase) ** 2
    paint(img, ellipse(x, y, 0, sy + 40 + sp_len / 2, 4.5, sp_len / 2 + 2, edge), 520.0)
    for side in (-1, 1):  # transverse processes
        paint(img, ellipse(x, y, side * 24, sy + 20, 11, 5, edge, side * 0.4), 550.0)
    # Ribs: oval cross-sections along the chest-wall ring, shifting with z (ribs slope).
    q_mid, _ = scene.body_q(x, y, t, inset=scene.fat + scene.muscle + 6)
    theta_px = np.arctan2(y - scene.cy, x)
    n_ribs = 11
    for side in (-1, 1):
        for j in range(n_ribs):
            base = (j + 0.5) / n_ribs * np.pi * 0.92 + 0.04 * np.pi
            ang = base + 0.18 * np.sin(2 * np.pi * (z / 40.0 + scene.rib_phase + j * 0.37))
            vis = np.sin(2 * np.pi * (z / 35.0 + j * 0.23 + scene.rib_phase))
            if vis < -0.35:
                continue
            # Mirror left/right; the first half of the ribs run anteriorly, the rest
            # posteriorly (image rows grow towards the back).
            theta = -((np.pi - ang) if side < 0 else ang)
            theta = theta if j < n_ribs // 2 else -theta
            d_ang = np.angle(np.exp(1j * (theta_px - theta)))
            near = np.abs(d_ang) < 0.12
            if not near.any():
                continue
            radial = np.abs(q_mid - 1.0)
            rib_q = np.sqrt((d_ang / 0.055) ** 2 + (radial / 0.04) ** 2)
            cortex = soft(rib_q, 5.0, edge) * near
            value = 110.0 if abs(np.sin(theta)) > 0.93 and np.sin(theta) < 0 else 850.0
            paint(img, cortex, value)
            paint(img, soft(rib_q / 0.6, 3.0, edge) * near, 260.0 + 30 * btex)
    # Sternum (anterior), scapulae (upper posterior).
    if t < 0.8:
        sq, ss = scene.body_q(x, y, t, inset=scene.fat + 2.0)
        st = ellipse(
            x,
            y,
            0,
            scene.cy - scene.b_ant * (0.93 + 0.07 * ramp(t, 0, 0.4)) + scene.fat + 12,
            16,
            7,
            edge,
        )
        paint(img, st, 500.0)
        paint(
            img,
            st
            * ellipse(
                x,
                y,
                0,
                scene.cy - scene.b_ant * (0.93 + 0.07 * ramp(t, 0, 0.4)) + scene.fat + 12,
                13,
                4.5,
                edge,
            ),
            220.0,
        )
    if t < 0.45:
        fade = 1 - ramp(t, 0.35, 0.45)
        for side in (-1, 1):
            sc = ellipse(
                x,
                y,
                side * (scene.a - 55),
                scene.cy + scene.b_post - scene.fat - 18,
                40,
                3.5,
                edge,
                side * 0.55,
            )
            paint(img, sc * fade, 650.0)
