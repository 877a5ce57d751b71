"""Shared tamper-lab fixtures: one small phantom set and one tampered copy per test session.

Imported explicitly by the lab tests (``from tests.conftest_lab import ...``) so that the lead's
``tests/conftest.py`` stays untouched. Phantoms are 128x128 so the whole lab suite stays fast.
Both attack families run; family B's white-box attack targets tiny checkpoints built here
(random weights: the attack only needs a differentiable detector): inpainting and BTD together
for CT, BTD alone for MR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from detector.lab.attacks import ATTACKS, FAMILIES, TamperResult, tamper_dataset
from detector.lab.phantoms import write_phantoms

LAB_SIZE = 128
LAB_SLICES = 20


@dataclass
class LabSet:
    genuine: Path
    tampered: Path
    result: TamperResult
    models: dict[str, list[Path]]  # modality -> the white-box attack's targets


def tiny_inpaint_checkpoint(path: Path, modality: str, seed: int = 0) -> Path:
    """A 32-pixel, width-8 inpainting checkpoint in TamperScan's format."""
    import torch

    from detector.checkpoint import save_checkpoint
    from detector.inpainting import InpaintConfig, InpaintNet, InpaintScoring
    from detector.preprocess import Preprocessing

    torch.manual_seed(seed)
    cfg = InpaintConfig(patch_size=32, hole_size=16, width=8, dilations=(2, 4))
    return save_checkpoint(
        path,
        kind="inpaint",
        preprocessing=Preprocessing(modality, 32),
        model_config=cfg.to_dict(),
        scoring=InpaintScoring().to_dict(),
        model_state=InpaintNet(cfg).state_dict(),
    )


def tiny_btd_checkpoint(path: Path, modality: str, seed: int = 0) -> Path:
    """A 32-pixel, dim-8 BTD checkpoint in TamperScan's format."""
    import torch

    from detector.btd import BTDModelConfig, BTDScoring, build_diffusion
    from detector.checkpoint import save_checkpoint
    from detector.preprocess import Preprocessing

    torch.manual_seed(seed)
    cfg = BTDModelConfig(dim=8, dim_mults=(1, 2), image_size=32, timesteps=100)
    return save_checkpoint(
        path,
        kind="btd",
        preprocessing=Preprocessing(modality, 32),
        model_config=cfg.to_dict(),
        scoring=BTDScoring().to_dict(),
        model_state=build_diffusion(cfg).state_dict(),
    )


@pytest.fixture(scope="session")
def lab_set(tmp_path_factory: pytest.TempPathFactory) -> LabSet:
    root = tmp_path_factory.mktemp("lab")
    genuine = root / "genuine"
    write_phantoms("CT", 3, LAB_SLICES, genuine, seed=11, size=LAB_SIZE)
    write_phantoms("MR", 3, LAB_SLICES, genuine, seed=12, size=LAB_SIZE)
    models = {
        "CT": [
            tiny_inpaint_checkpoint(root / "CT_inpaint.ckpt", "CT"),
            tiny_btd_checkpoint(root / "CT_btd.ckpt", "CT"),
        ],
        "MR": [tiny_btd_checkpoint(root / "MR_btd.ckpt", "MR")],
    }
    tampered = root / "tampered"
    result = tamper_dataset(
        genuine,
        tampered,
        ATTACKS,
        count=0,
        seed=3,
        families=FAMILIES,
        min_rows=1,
        target_models=[p for paths in models.values() for p in paths],
    )
    return LabSet(genuine, tampered, result, models)
