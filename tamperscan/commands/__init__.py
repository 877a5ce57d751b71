"""One module per command group; each exposes ``register(subparsers)``.

``tamperscan.cli`` discovers the modules here, so adding a command is adding a module.
A command's handler takes the parsed ``argparse.Namespace`` and returns the exit status.
"""
