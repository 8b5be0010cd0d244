"""The `dpjax` command line: `dpjax collect | data | train | distill | eval | serve | export | demo | sampler-demo | bench`.

Each command lives in its own module, which exposes `register(subparsers)`; that adds one
`argparse` sub-parser and sets `func` (a callable taking the parsed namespace and returning
an exit code). Modules are imported lazily so `dpjax --help` stays fast. Every `DpjaxError`
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dpjax.errors import DpjaxError

# Module paths, each with a `register(subparsers)` function. Order = order in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "dpjax.commands.collect",
    "dpjax.commands.data",
    "dpjax.commands.train",
    "dpjax.commands.distill",
    "dpjax.commands.eval",
    "dpjax.commands.serve",
    "dpjax.commands.export",
    "dpjax.commands.demo",
    "dpjax.commands.sampler_demo",
    "dpjax.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpjax", description="Diffusion policies for robot control in JAX/Flax."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DpjaxError as e:
        print(f"dpjax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dpjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
