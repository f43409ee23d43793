"""The `jaxvalues` command line.

Each package registers its subcommands through a `register(subparsers)` function listed in
`_COMMAND_MODULES`; a handler receives the parsed `argparse.Namespace` and returns an exit code.
User mistakes raise `JaxValuesError`: printed in one line, no traceback, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxvalues.errors import JaxValuesError

# module path -> it defines `register(subparsers)`; imported lazily so `jaxvalues --help` is fast
# and a missing optional dependency in one command does not break the others.
_COMMAND_MODULES = (
    "jaxvalues.zoo.cli",  # `models list|fetch|path`
    "jaxvalues.data.cli",
    "jaxvalues.stats.cli",
    "jaxvalues.identify.cli",
    "jaxvalues.evaluate.cli",
    "jaxvalues.distributed.cli",  # `sweep`; adds --ray/--workers to `collect` (after stats.cli)
    "jaxvalues.pipeline.cli",  # `run`
    "jaxvalues.validate",  # `validate`
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxvalues",
        description="Find, switch off and steer the neurons that encode social values in LLMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod_name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name and (mod_name == e.name or mod_name.startswith(e.name + ".")):
                continue  # an optional command package that is not installed
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except JaxValuesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work was kept; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
