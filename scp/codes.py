"""TamperScan's private coding scheme, used where DICOM has no standard concept.

No standard code exists for "synthetic manipulation of an image" or for a detector's score, so
the Structured Reports we send use these codes under the coding scheme designator ``99TMPSCN``
(PS3.16 8.2: private designators start with "99"). Every SR also carries a Coding Scheme
Identification Sequence entry naming the scheme, its version and its owner, so a receiving
system can tell where the codes come from. Codes are never reused for another meaning: a new
meaning gets a new code value, and the scheme version goes up.

| code | meaning | used as |
|---|---|---|
| TS001 | Image manipulation assessment | concept name of a qualitative evaluation |
| TS002 | Tampered | value: the region (or study) shows signs of manipulation |
| TS003 | Not tampered | value: a checked region without signs of manipulation |
| TS004 | Suspicious | value: study-level, evidence short of the tampered threshold |
| TS005 | Not scored | value: study-level, no detector could score the study |
| TS010 | Detector raw score | measurement, unitless, one per detector (algorithm id names it) |
| TS011 | Calibrated tail probability | measurement, unitless, per detector: P(genuine >= score) |
| TS012 | Fused manipulation score | measurement, unitless, the region's combined p-value |
| TS013 | False alarm rate | measurement, unitless: the rate the verdict was decided at |
| TS014 | Number of regions checked | measurement, unitless count |
| TS020 | Image manipulation detection | procedure reported; finding type of each group |
| TS021 | Reason not scored | TEXT: why no score was reached |
| TS022 | Usage statement | TEXT: "not for diagnostic use" |
| TS023 | Verdict score | measurement, unitless: the study's overall score when there is one |
"""

from __future__ import annotations

import hashlib

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

SCHEME = "99TMPSCN"
SCHEME_VERSION = "1"
SCHEME_NAME = "TamperScan private codes"
SCHEME_RESPONSIBLE = "TamperScan project"


def _code(value: str, meaning: str) -> Code:
    return Code(value, SCHEME, meaning, scheme_version=SCHEME_VERSION)


MANIPULATION_ASSESSMENT = _code("TS001", "Image manipulation assessment")
TAMPERED = _code("TS002", "Tampered")
NOT_TAMPERED = _code("TS003", "Not tampered")
SUSPICIOUS = _code("TS004", "Suspicious")
NOT_SCORED = _code("TS005", "Not scored")
RAW_SCORE = _code("TS010", "Detector raw score")
CALIBRATED_PROBABILITY = _code("TS011", "Calibrated tail probability")
FUSED_SCORE = _code("TS012", "Fused manipulation score")
FALSE_ALARM_RATE = _code("TS013", "False alarm rate")
REGIONS_CHECKED = _code("TS014", "Number of regions checked")
MANIPULATION_DETECTION = _code("TS020", "Image manipulation detection")
REASON_NOT_SCORED = _code("TS021", "Reason not scored")
USAGE_STATEMENT = _code("TS022", "Usage statement")
VERDICT_SCORE = _code("TS023", "Verdict score")

# Verdict outcome (storage.models) -> study-level value.
OUTCOME_CODES: dict[str, Code] = {
    "tampered": TAMPERED,
    "suspicious": SUSPICIOUS,
    "clean": NOT_TAMPERED,
    "not_scored": NOT_SCORED,
}

# Standard codes we use alongside ours.
UNITLESS = Code("1", "UCUM", "no units")
COUNT = Code("{count}", "UCUM", "count")


def coding_scheme_identification() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification Sequence item that documents our designator."""
    return CodingSchemeIdentificationItem(
        designator=SCHEME,
        name=SCHEME_NAME,
        version=SCHEME_VERSION,
        responsible_organization=SCHEME_RESPONSIBLE,
    )


def derived_uid(*parts: str) -> str:
    """A UID fixed by ``parts`` (a 2.25 UID from 128 bits of their SHA-256): same in, same out."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"
