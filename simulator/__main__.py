"""``python -m simulator {phantom,replay,convert,score} ...``"""

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "phantom": "simulator.phantom",
    "replay": "simulator.replay",
    "convert": "simulator.convert",
    "score": "simulator.score",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname)
        except ImportError as e:  # e.g. an optional extra is not installed
            sub.add_parser(name, help=f"(unavailable: {e}; pip install 'openrecon-stroke[simulator]')")
            modules[name] = e
            continue
        p = sub.add_parser(name, help=mod.__doc__.strip().splitlines()[0], description=mod.__doc__)
        mod.add_arguments(p)
        modules[name] = mod
    args = parser.parse_args(argv)
    if isinstance(modules[args.command], ImportError):
        print(f"error: '{args.command}' is unavailable: {modules[args.command]}. "
              "Install the simulator extra: pip install 'openrecon-stroke[simulator]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(modules[args.command].run(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
