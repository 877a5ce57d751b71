"""BTD's configuration records: the network, its schedule, and how a residual is scored.

Kept apart from ``detector.btd`` (which builds and runs the model) so the checkpoint reader
can describe the released weights without importing the model code: no import cycle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: The paper's patch sizes.
DEFAULT_PATCH = {"CT": 96, "MR": 128}
REDUCTIONS = ("mse", "centre_mse")

#: Training samples t uniformly in [0, this] (``tamperscan train --max-timestep``); scoring uses
#: t = 0. At t = 50 the sigmoid schedule's noise is 0.13 of the [-1, 1] range (about 180 HU),
#: several times CT scanner noise, so the model learns the noise levels it is asked about.
#: The paper trained on all 1,000 steps (``None`` here).
DEFAULT_TRAIN_MAX_TIMESTEP = 50


@dataclass(frozen=True)
class BTDModelConfig:
    """Network and schedule hyper-parameters; the defaults are the released models'."""

    dim: int = 32
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    image_size: int = 96
    timesteps: int = 1000
    sampling_timesteps: int = 250
    objective: str = "pred_noise"
    beta_schedule: str = "sigmoid"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dim_mults"] = list(self.dim_mults)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> BTDModelConfig:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        if "dim_mults" in known:
            known["dim_mults"] = tuple(int(m) for m in known["dim_mults"])
        return cls(**known)


@dataclass(frozen=True)
class BTDScoring:
    """How a residual becomes a score (see the module docstring)."""

    t: int = 0
    reduction: str = "mse"
    centre_size: int | None = None  # for "centre_mse"; None = half the patch

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.t < 0:
            raise ValueError(f"timestep t must be >= 0, got {self.t}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BTDScoring:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
