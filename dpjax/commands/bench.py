"""`dpjax bench NAME [ARGS...]`: runs `benchmarks/NAME.py` (from a source checkout).

Each benchmark prints a table and takes its own options (`dpjax bench NAME --help`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from dpjax.errors import ConfigError, unknown_name


def benchmarks_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in benchmarks_dir().glob("*.py") if not p.stem.startswith("_"))


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark from benchmarks/ and print its table", description=__doc__
    )
    parser.add_argument("name", metavar="NAME", help="benchmark name (file in benchmarks/)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="options passed to it")
    parser.set_defaults(func=run)


def run(args) -> int:
    if not benchmarks_dir().is_dir():
        raise ConfigError(
            "benchmarks/ not found: `dpjax bench` runs from a source checkout (pip install -e .)"
        )
    if args.name not in available():
        raise unknown_name("benchmark", args.name, available())
    path = benchmarks_dir() / f"{args.name}.py"
    spec = importlib.util.spec_from_file_location(f"dpjax_bench_{args.name}", path)
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import would: dataclasses (and pickling) look their
    # module up in sys.modules.
    sys.modules[spec.name] = module
    sys.argv = [str(path), *args.args]
    spec.loader.exec_module(module)
    return int(module.main(args.args) or 0)
