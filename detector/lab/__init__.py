"""The tamper lab: synthetic studies, attacker-style tampering and exact ground truth.

Nothing public can be downloaded here, yet every detector must be measured. The lab writes
realistic DICOM phantoms (:mod:`.phantoms`), tampers them the way CT-GAN and its successors do,
with two independently written attack families (:mod:`.attacks` runs :mod:`.attacks_a` and
:mod:`.attacks_b` / :mod:`.whitebox`), and records every tampered and genuine location in the
manifest formats users of the BTD paper and of the CHAIMELEON tool already have
(:mod:`.manifest`).
"""

from detector.lab.manifest import ManifestRow, read_manifest, write_btd, write_chaimeleon
from detector.lab.phantoms import Lesion, PhantomStudy, generate_study, write_phantoms

__all__ = [
    "Lesion",
    "ManifestRow",
    "PhantomStudy",
    "generate_study",
    "read_manifest",
    "write_btd",
    "write_chaimeleon",
    "write_phantoms",
]
