"""The ``polarquant`` command (also ``python -m polarquant``).

``polarquant demo``  every method on the shipped real data, next to the papers' bounds.
``polarquant info``  version, Python/NumPy, and which backends are available (and why not).
"""

from __future__ import annotations

import argparse
import platform
import sys

from . import __version__


def _info() -> str:
    import numpy as np

    from .backends import available, current_backend

    lines = [
        f"polarquant {__version__} (distribution polarquant-lab)",
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}",
        f"selected backend: {current_backend()} (POLARQUANT_BACKEND or use_backend())",
        "backends:",
    ]
    for name, why in available().items():
        lines.append(f"  {name:<6} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="polarquant",
        description="PolarQuant, QJL and TurboQuant: training-free vector and KV-cache compression.",
    )
    parser.add_argument("--version", action="version", version=f"polarquant {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="compare every method on the shipped real data")
    demo.add_argument("--seed", type=int, default=0, help="seed of rotations and sketches")
    sub.add_parser("info", help="version and available backends")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(_info())
        elif args.command == "demo":
            from .demo import main as demo_main

            print(demo_main(args.seed))
    except BrokenPipeError:  # `polarquant demo | head`: the reader left, nothing is wrong
        sys.stderr.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
