"""TamperScan: the composition root (configuration, command line, service wiring).

The concerns live in their own top-level packages: ``scp`` (DICOM in and out), ``storage``
(database and files), ``detector`` (scoring), ``admin`` (web report). Only this package
imports all of them.
"""

__version__ = "0.1.0"
