"""Console entry points: ``maskrate preprocess|inspect-batch ...`` (also ``python -m maskrate``)
and ``maskrate-preprocess``."""

from __future__ import annotations

import sys

from ._maskrate import inspect_batch_cli, preprocess_cli

USAGE = """usage: maskrate preprocess INPUT... --out DIR [flags]
       maskrate preprocess merge|inspect ...
       maskrate inspect-batch --shards DIR --step N [data flags] [--json]

Commands (each with --help):
  preprocess      corpus files (JSON lines, gzip/zstd, parquet, Arrow) to token shards: the same
                  command, flags and output as maskrate's `preprocess` binary
  inspect-batch   the masked batch of one step with the trainer's data flags (--schedule,
                  --steps, --batch-size, --seq-len, --layout, --mix, ...); --json prints this
                  rank's rows as `trainer inspect-batch --json` and MaskedBatches.batch give them

Examples:
  maskrate preprocess c4/en/ --out shards/
  maskrate inspect-batch --shards shards/ --schedule linear:0.3:0.15 --steps 1000 --step 500"""

COMMANDS = {"preprocess": preprocess_cli, "inspect-batch": inspect_batch_cli}


def _run(command, args: list[str]) -> int:
    try:
        return command(list(args))
    except KeyboardInterrupt:
        return 130


def preprocess_main(argv: list[str] | None = None) -> int:
    """Runs the ``preprocess`` command line (``argv`` without the program name)."""
    return _run(preprocess_cli, sys.argv[1:] if argv is None else argv)


def main(argv: list[str] | None = None) -> int:
    """``maskrate COMMAND ...`` / ``python -m maskrate COMMAND ...``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from . import __version__

        print(f"maskrate {__version__}")
        return 0
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"unknown command {args[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return _run(command, args[1:])
