"""The ``tamperscan`` command line: subcommands discovered from ``tamperscan.commands``."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from tamperscan import __version__, commands
from tamperscan.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tamperscan",
        description="Detects tampered (deepfake) CT and MRI scans forwarded by a hospital PACS.",
        epilog="Run 'tamperscan COMMAND --help' for the options of one command. "
        "The CHAIMELEON command line ('tamperscan -mode Train|Test ...') is accepted too.",
    )
    parser.add_argument("--version", action="version", version=f"tamperscan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("-mode", "--mode"):
        # The CHAIMELEON deepfakes-detector interface: -mode Train|Test -model_path ...
        legacy = importlib.import_module("tamperscan.commands.chaimeleon")
        return int(legacy.run_legacy(args_list))
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        return int(args.handler(args))
    except ConfigError as exc:  # every command reads config.toml the same way
        print(f"tamperscan: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
