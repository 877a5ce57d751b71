"""Family B's lesion shape models, in 3-D millimetres around the lesion centre.

Models (independent of the phantoms' and of family A's lobulated blobs):

- ``lobulated``: a sphere with Gaussian bumps on its surface (3-6 lobes);
- ``spiculated``: a lobulated core with 5-12 tapering spicules radiating from it;
- ``part-solid`` (CT): a ground-glass halo with a solid core of 30-55 % of the radius;
- ``calcified`` (CT): a solid nodule with a dense central or eccentric calcification;
- ``heterogeneous`` (MR): an enhancing mass with a darker (necrotic) centre.

:func:`occupancy` averages three planes across the slice thickness, so a lesion seen on a
thick slice has the partial-volume edge of one. Intensities and texture are chosen by the
attack; here only geometry and the per-model values relative to them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CT_MODELS = ("lobulated", "spiculated", "part-solid", "calcified")
MR_MODELS = ("lobulated", "spiculated", "heterogeneous")


@dataclass(frozen=True)
class LesionModel:
    kind: str
    radius: float  # mm
    lobes: np.ndarray  # (m, 3) unit directions of the surface bumps
    lobe_amp: np.ndarray  # (m,) relative bump heights
    lobe_width: float  # angular width (radians)
    spikes: np.ndarray  # (s, 3) unit directions
    spike_len: np.ndarray  # (s,) mm beyond the centre
    spike_width: float  # mm at the base
    core: float  # core radius / radius (part-solid, calcified, heterogeneous); 0 if none
    core_offset: np.ndarray  # (3,) mm, where the core sits (eccentric calcification)

    @property
    def reach(self) -> float:
        """Largest distance from the centre any part of the lesion reaches (mm)."""
        lobes = float(self.lobe_amp.max()) if self.lobe_amp.size else 0.0
        spikes = float(self.spike_len.max()) if self.spike_len.size else 0.0
        return max(self.radius * (1.0 + lobes), spikes) + 1.0


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def draw_model(rng: np.random.Generator, modality: str, radius: float) -> LesionModel:
    """A random lesion of one of the modality's models."""
    models = CT_MODELS if modality == "CT" else MR_MODELS
    kind = str(models[int(rng.integers(len(models)))])
    m = int(rng.integers(3, 7))
    spikes = np.zeros((0, 3))
    spike_len = np.zeros(0)
    if kind == "spiculated":
        s = int(rng.integers(5, 13))
        spikes = _unit(rng, s)
        spike_len = radius * rng.uniform(1.4, 2.4, size=s)
    core = {"part-solid": rng.uniform(0.3, 0.55), "calcified": rng.uniform(0.2, 0.45)}.get(
        kind, rng.uniform(0.3, 0.5) if kind == "heterogeneous" else 0.0
    )
    offset = np.zeros(3)
    if kind == "calcified" and rng.random() < 0.5:
        offset = _unit(rng, 1)[0] * radius * 0.35
    return LesionModel(
        kind=kind,
        radius=radius,
        lobes=_unit(rng, m),
        lobe_amp=rng.uniform(0.08, 0.3, size=m),
        lobe_width=float(rng.uniform(0.4, 0.8)),
        spikes=spikes,
        spike_len=spike_len,
        spike_width=float(rng.uniform(0.6, 1.2)),
        core=float(core),
        core_offset=offset,
    )


def _body(model: LesionModel, p: np.ndarray, edge: float) -> np.ndarray:
    d = np.linalg.norm(p, axis=-1) + 1e-9
    u = p / d[..., None]
    cosang = u @ model.lobes.T
    bumps = (model.lobe_amp * np.exp((cosang - 1.0) / model.lobe_width**2)).sum(axis=-1)
    return np.clip((model.radius * (1.0 + bumps) - d) / edge + 0.5, 0.0, 1.0)


def _spicules(model: LesionModel, p: np.ndarray, edge: float) -> np.ndarray:
    out = np.zeros(p.shape[:-1])
    for u, length in zip(model.spikes, model.spike_len, strict=True):
        t = np.clip(p @ u, 0.0, length)
        perp = np.linalg.norm(p - t[..., None] * u, axis=-1)
        width = model.spike_width * (1.0 - t / length) + 0.15
        out = np.maximum(out, np.clip((width - perp) / edge + 0.5, 0.0, 1.0))
    return out


def _core(model: LesionModel, p: np.ndarray, edge: float) -> np.ndarray:
    if model.core <= 0:
        return np.zeros(p.shape[:-1])
    d = np.linalg.norm(p - model.core_offset, axis=-1)
    return np.clip((model.core * model.radius - d) / edge + 0.5, 0.0, 1.0)


def occupancy(
    model: LesionModel,
    dx: np.ndarray,
    dy: np.ndarray,
    dz: float,
    thickness: float,
    edge: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(lesion fraction, core fraction) on a plane ``dz`` mm from the centre.

    ``dx`` (columns) and ``dy`` (rows) are mm offsets broadcast to the plane; both fractions
    are averaged over three planes spread across ``thickness``.
    """
    frac = np.zeros(np.broadcast(dx, dy).shape)
    core = np.zeros_like(frac)
    for o in (-thickness / 3, 0.0, thickness / 3):
        p = np.stack(np.broadcast_arrays(dx, dy, np.full_like(frac, dz + o)), axis=-1)
        f = _body(model, p, edge)
        if model.spikes.size:
            f = np.maximum(f, _spicules(model, p, edge))
        frac += f / 3
        core += np.minimum(_core(model, p, edge), f) / 3
    return frac, core


def texture(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Unit-std random field with a 1/f^2 spectrum above ``scale_px`` (spectral synthesis)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.sqrt(fx**2 + fy**2) + 1.0 / (scale_px * 8)
    amp = 1.0 / f**2 * np.exp(-((f * scale_px) ** 2))
    phase = rng.uniform(0, 2 * np.pi, size=amp.shape)
    field = np.fft.irfft2(amp * np.exp(1j * phase), s=shape)
    return field / (field.std() + 1e-12)
