"""The CPU training recipe of docs/detectors.md ("Recipes"), as ``tamperscan train`` arguments.

One place for the benchmarks that train with it (``detection.py``, ``training_curve.py``).
"""

RECIPES: dict[str, list[str]] = {
    "inpaint": ["--patch-size", "64", "--model-dim", "16", "--batch-size", "32"],
    "btd": [
        "--patch-size",
        "64",
        "--model-dim",
        "16",
        "--dim-mults",
        "1,2,4",
        "--batch-size",
        "16",
        "--max-timestep",
        "50",
    ],  # fmt: skip
}
