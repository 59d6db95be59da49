"""The `python -m bench` command: runs one benchmark, named by its first argument.

    python -m bench compare [options]      # bench.compare: logq beside its peers
    python -m bench throughput [options]   # bench.throughput: logq beside a plain file
    python -m bench scale [options]        # bench.scale: logq and sqlite3 as the stored log grows

Each subcommand's module is imported only when it runs, so a missing optional
module fails only its own subcommand. `python -m bench SUBCOMMAND --help`
lists the options of one benchmark.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable

# Subcommand name -> module whose main(argv) runs it.
SUBCOMMANDS = {
    "compare": "bench.compare",
    "throughput": "bench.throughput",
    "scale": "bench.scale",
}

USAGE = f"usage: python -m bench {{{','.join(SUBCOMMANDS)}}} [options]"


def load_main(module_name: str) -> Callable[[list[str] | None], int] | None:
    """Import `module_name` and return its `main`, or None after an error message when the module is missing.

    A missing module that the benchmark itself imports is not caught, so its
    own error shows.
    """
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        path = module_name.replace(".", "/") + ".py"
        print(f"error: {module_name} is not available ({path} not found in this checkout)", file=sys.stderr)
        return None
    return module.main


def main(argv: list[str] | None = None) -> int:
    """Run the subcommand named by the first argument with the remaining arguments; return its exit status.

    Returns 2 after a usage message for a missing or unknown subcommand or a
    missing benchmark module.
    """
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments and arguments[0] in ("-h", "--help"):
        print(USAGE)
        print(__doc__.split("\n\n")[1])
        return 0
    if not arguments:
        print(USAGE, file=sys.stderr)
        print("error: missing subcommand; use one of: " + ", ".join(SUBCOMMANDS), file=sys.stderr)
        return 2
    name, rest = arguments[0], arguments[1:]
    if name not in SUBCOMMANDS:
        print(USAGE, file=sys.stderr)
        print(f"error: unknown subcommand {name!r}; use one of: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    run = load_main(SUBCOMMANDS[name])
    if run is None:
        return 2
    return run(rest)


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
