"""The scanner model of the phantoms: acquisition protocol, blur, partial volume and noise.

A detector that learns "genuine scanner noise" must see noise shaped like a scanner's, at the
levels scanners produce, and different from one series to the next:

- CT: each series draws a reconstruction kernel (``SOFT``, ``STANDARD``, ``LUNG``), a tube
  load (mAs, hence CTDIvol) and a slice thickness / spacing pair. Noise is white noise shaped by
  the filtered back-projection noise power spectrum, NPS(f) ~ |f| * A(f)^2 (the ramp times the
  kernel's apodisation window A), scaled by ``sqrt(mAs_ref / mAs) * sqrt(T_ref / T)`` and by a
  map that grows where the body is thicker (longer ray paths, fewer photons). The same window
  A is the signal's MTF, so a sharp kernel is both sharper and noisier, as on a scanner.
- MR: Rician noise (magnitude of complex Gaussian noise) at a per-series SNR, after a blur and
  the coil's smooth bias field.
- Both: partial-volume averaging across the slice thickness and a breathing shift along z
  that varies smoothly from slice to slice.

Frequencies are in cycles per pixel (Nyquist 0.5), so a 128-pixel phantom has the same noise
texture per pixel as a 512-pixel one. Noise is drawn per slice from the generator the writer
passes in (one per slice), so no two slices share noise, as in real CT. Nothing here knows
about anatomy or DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft, ndimage


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: Hann apodisation up to ``cutoff`` with a high-frequency boost."""

    name: str
    cutoff: float  # cycles/pixel where the window reaches zero (may exceed Nyquist)
    boost: float  # edge enhancement: gain (1 + boost * (f / 0.5)^2)
    noise: float  # noise level relative to STANDARD at the same dose


KERNELS = {
    "SOFT": Kernel("SOFT", 0.40, 0.0, 0.6),
    "STANDARD": Kernel("STANDARD", 0.60, 0.0, 1.0),
    "LUNG": Kernel("LUNG", 1.00, 0.6, 2.2),
}
REF_SIGMA_HU = 14.0  # STANDARD kernel, REF_MAS, REF_THICKNESS, average body
REF_MAS = 200.0
REF_THICKNESS = 1.25
CTDI_PER_MAS = 0.075  # mGy per mAs at 120 kVp, 32 cm body phantom (typical order)
# (slice thickness, spacing) pairs in mm; thickness > spacing is an overlapping reconstruction
CT_GEOMETRIES = (
    (1.0, 1.0),
    (1.25, 1.0),
    (1.25, 1.25),
    (2.0, 1.0),
    (2.0, 2.0),
    (2.5, 2.5),
    (3.0, 3.0),
)
MR_GEOMETRIES = ((1.0, 1.0), (1.1, 1.1), (1.2, 1.2), (1.5, 1.5), (2.0, 2.0))
MR_SIGNAL = 360.0  # typical fibroglandular signal, the reference of the SNR


@dataclass(frozen=True)
class Protocol:
    """One series' acquisition: geometry, motion and noise settings (CT or MR)."""

    modality: str
    thickness: float  # mm, the slice profile's width
    spacing: float  # mm between slice centres
    breathing_mm: float  # amplitude of the z shift
    breathing_period_mm: float
    breathing_phase: float
    kernel: str = ""  # CT only
    mas: float = 0.0  # CT only
    attenuation_per_mm: float = 0.0  # CT: how strongly noise follows the path length
    snr: float = 0.0  # MR only

    @property
    def ctdi_vol(self) -> float:
        return round(self.mas * CTDI_PER_MAS, 2)

    @property
    def sigma(self) -> float:
        """Noise std of this series: HU for CT (before the thickness map), units for MR."""
        if self.modality == "MR":
            return MR_SIGNAL / self.snr
        k = KERNELS[self.kernel]
        s = REF_SIGMA_HU * k.noise * np.sqrt(REF_MAS / self.mas)
        return float(np.clip(s * np.sqrt(REF_THICKNESS / self.thickness), 4.0, 90.0))


def draw_protocol(rng: np.random.Generator, modality: str) -> Protocol:
    """A plausible protocol for one series."""
    geometries = CT_GEOMETRIES if modality == "CT" else MR_GEOMETRIES
    thickness, spacing = geometries[int(rng.integers(len(geometries)))]
    motion = {
        "breathing_mm": float(rng.uniform(0.0, 1.5 if modality == "CT" else 0.6)),
        "breathing_period_mm": float(rng.uniform(40, 90)),
        "breathing_phase": float(rng.uniform(0, 2 * np.pi)),
    }
    if modality == "MR":
        snr = float(np.exp(rng.uniform(np.log(10.0), np.log(45.0))))
        return Protocol("MR", thickness, spacing, snr=snr, **motion)
    kernel = str(rng.choice(["SOFT", "STANDARD", "LUNG"], p=[0.3, 0.4, 0.3]))
    mas = float(np.exp(rng.uniform(np.log(40.0), np.log(300.0))))
    return Protocol(
        "CT",
        thickness,
        spacing,
        kernel=kernel,
        mas=round(mas),
        attenuation_per_mm=float(rng.uniform(0.004, 0.010)),
        **motion,
    )


def breathing_shift(protocol: Protocol, z: float) -> float:
    """Where the anatomy of nominal plane ``z`` really was (mm along z) during the breath."""
    phase = 2 * np.pi * z / protocol.breathing_period_mm + protocol.breathing_phase
    return float(protocol.breathing_mm * np.sin(phase))


def radial_frequency(shape: tuple[int, int]) -> np.ndarray:
    """|f| in cycles/pixel on the FFT grid of ``shape``."""
    fy = fft.fftfreq(shape[0])[:, None]
    fx = fft.fftfreq(shape[1])[None, :]
    return np.sqrt(fx**2 + fy**2)


def apodisation(kernel: Kernel, f: np.ndarray) -> np.ndarray:
    """The kernel's window A(f): Hann to ``cutoff`` times the edge-enhancement gain."""
    hann = np.where(f < kernel.cutoff, 0.5 * (1 + np.cos(np.pi * f / kernel.cutoff)), 0.0)
    return hann * (1.0 + kernel.boost * (f / 0.5) ** 2)


def noise_power_spectrum(kernel: Kernel, f: np.ndarray) -> np.ndarray:
    """FBP noise power spectrum shape, ramp times squared apodisation (not normalised)."""
    return f * apodisation(kernel, f) ** 2


def ct_blur(img: np.ndarray, protocol: Protocol) -> np.ndarray:
    """The kernel's MTF (its window) times a small detector blur, applied in Fourier space."""
    n = img.shape[0]
    f = radial_frequency(img.shape)
    sigma_px = 0.45 * n / 512 + 0.25
    mtf = apodisation(KERNELS[protocol.kernel], f) * np.exp(-2 * (np.pi * sigma_px * f) ** 2)
    return np.real(fft.ifft2(fft.fft2(img) * mtf))


def _diagonal_paths(mu: np.ndarray, pixel_mm: float, anti: bool) -> np.ndarray:
    """Per pixel, the path integral of ``mu`` along its 45 (or 135) degree line, in mm."""
    rows, cols = np.indices(mu.shape)
    key = rows + cols if anti else rows - cols + mu.shape[1] - 1
    sums = np.bincount(key.ravel(), mu.ravel(), minlength=int(key.max()) + 1)
    return sums[key] * pixel_mm * np.sqrt(2.0)


def thickness_map(hu: np.ndarray, protocol: Protocol, pixel_mm: float) -> np.ndarray:
    """Relative noise std per pixel from the ray paths through it.

    Noise variance at a pixel is about the mean over views of 1 / photons, and photons fall
    as exp(-path); four views (0, 45, 90, 135 degrees) give a smooth map. It is 1 at the
    median body pixel.
    """
    mu = np.clip(1.0 + hu / 1000.0, 0.0, None)  # attenuation relative to water
    k = protocol.attenuation_per_mm
    views = (
        np.exp(k * mu.sum(axis=1) * pixel_mm)[:, None] * np.ones((1, hu.shape[1])),
        np.exp(k * mu.sum(axis=0) * pixel_mm)[None, :] * np.ones((hu.shape[0], 1)),
        np.exp(k * _diagonal_paths(mu, pixel_mm, anti=False)),
        np.exp(k * _diagonal_paths(mu, pixel_mm, anti=True)),
    )
    var = np.mean(views, axis=0)
    body = hu > -500
    ref = float(np.median(var[body])) if body.any() else float(np.median(var))
    out = np.sqrt(var / ref)
    return np.clip(ndimage.gaussian_filter(out, 3.0), 0.6, 1.8)


def ct_noise(
    rng: np.random.Generator, hu: np.ndarray, protocol: Protocol, pixel_mm: float
) -> np.ndarray:
    """One slice of CT noise in HU: NPS-shaped white noise times the dose and thickness level."""
    f = radial_frequency(hu.shape)
    gain = np.sqrt(noise_power_spectrum(KERNELS[protocol.kernel], f))
    white = rng.normal(size=hu.shape)
    shaped = np.real(fft.ifft2(fft.fft2(white) * gain))
    shaped /= np.sqrt(np.mean(gain**2)) + 1e-12  # unit variance for unit white noise
    return shaped * protocol.sigma * thickness_map(hu, protocol, pixel_mm)


def ct_scan(
    rng: np.random.Generator, planes: list[np.ndarray], protocol: Protocol, pixel_mm: float
) -> np.ndarray:
    """Partial-volume average of ``planes`` (HU), kernel blur, then this slice's noise."""
    img = ct_blur(np.mean(planes, axis=0), protocol)
    return img + ct_noise(rng, img, protocol, pixel_mm)


def mr_scan(
    rng: np.random.Generator, planes: list[np.ndarray], protocol: Protocol, bias: np.ndarray
) -> np.ndarray:
    """Partial-volume average, blur, coil bias, then Rician noise at the series' SNR."""
    n = planes[0].shape[0]
    img = ndimage.gaussian_filter(np.mean(planes, axis=0), 0.35 * n / 512 + 0.2) * bias
    n1 = rng.normal(scale=protocol.sigma, size=img.shape)
    n2 = rng.normal(scale=protocol.sigma, size=img.shape)
    return np.sqrt((img + n1) ** 2 + n2**2)
