"""Forensic checks that need no training data: each adapts to the series it is looking at.

Every check follows :class:`detector.interface.Detector` with ``kind = FORENSIC``: a raw score
and evidence map per location, and a null distribution fitted once per series from reference
locations of that same series (:mod:`detector.forensics.references`), so a fresh installation
gives calibrated verdicts from its first study, on whatever scanner sent it. What each check
borrows from which published work is in docs/detectors.md ("Forensic checks").
"""

VERSION = "forensic-2"  # what verdicts and SRs call the checks' version; bump on any change
