"""Console entry points: ``maskrate-preprocess`` and ``python -m maskrate preprocess``."""

from __future__ import annotations

import sys

from ._maskrate import preprocess_cli

USAGE = """usage: python -m maskrate preprocess INPUT... --out DIR [flags]
       python -m maskrate preprocess merge|inspect ...

The same command, flags and output as maskrate's `preprocess` binary
(`python -m maskrate preprocess --help` lists them)."""


def preprocess_main(argv: list[str] | None = None) -> int:
    """Runs the ``preprocess`` command line (``argv`` without the program name)."""
    args = sys.argv[1:] if argv is None else argv
    try:
        return preprocess_cli(list(args))
    except KeyboardInterrupt:
        return 130


def main(argv: list[str] | None = None) -> int:
    """``python -m maskrate COMMAND ...``; the one command is ``preprocess``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] != "preprocess":
        print(f"unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return preprocess_main(args[1:])
