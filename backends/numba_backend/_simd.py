r"""In-register table lookups for the fast-scan kernels: the instruction set, chosen safely.

The fast-scan kernels (:mod:`.fastscan`) look up 16-entry byte tables for 32 or 64 nibbles
at once with a byte shuffle, as FAISS's ``IndexPQFastScan`` does (André et al., VLDB 2015).
Numba has no such operation, so :func:`group_sums` is a Numba ``@intrinsic`` that emits the
LLVM IR itself (llvmlite): vector loads of a block's code bytes, the nibble split, the shuffle,
and ``uint16`` accumulation with the even/odd trick (a 16-bit lane sums two adjacent bytes;
a second accumulator of the lanes shifted right by 8 recovers the odd bytes' sum, and the even
bytes' is the difference), exactly the integer sums of :func:`polarquant.fastscan.scan_sums`
over one group of bytes.

**The variant is chosen in Python before anything is compiled** (:func:`variant`): an
intrinsic for an instruction the compilation target lacks aborts the process inside LLVM, not
with a Python exception.  The target is Numba's: the CPU features it compiles for are
``NUMBA_CPU_FEATURES`` when set (``NUMBA_CPU_NAME=generic`` sets none), else the host's as
Numba reads them (``numba.core.codegen.get_host_cpu_features``, which also honours
``NUMBA_ENABLE_AVX=0``).  A variant is used only when that feature set has what it needs:

==============  ====================================================  =======================
variant         lookup                                                needs
==============  ====================================================  =======================
``avx2``        ``llvm.x86.avx2.pshuf.b``: 32 lookups, one byte of    ``+avx2``
                32 vectors per step
``avx512bw``    ``llvm.x86.avx512.pshuf.b.512``: 64 lookups, two      ``+avx512f,+avx512bw``
                bytes of 32 vectors per step
``shuffle16``   target-independent IR (variable ``extractelement``    x86 ``+ssse3``, or an
                into ``insertelement``) that LLVM turns into 16-byte  AArch64 target
                shuffles (SSSE3 ``pshufb``, NEON ``tbl``)
``scalar``      no intrinsic: plain loops                             nothing
==============  ====================================================  =======================

Preference when several can run: :data:`PREFERENCE` (``avx2`` first: on the AMD Zen 4 this
was measured on, the 64-byte form was slower, ``docs/performance.md``).  The environment
variable ``POLARQUANT_FASTSCAN`` forces one; a variant the target cannot run is a
``ValueError`` naming the missing features, never a crash.  ``shuffle16`` compiles on any
target (its IR names no instruction) and is exact everywhere; on AArch64 it was inspected in
cross-compiled assembly only.
"""

from __future__ import annotations

import functools
import os

import llvmlite.binding as llb
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "VARIANTS",
    "PREFERENCE",
    "VARIANT_ENV",
    "available",
    "variant",
    "variant_code",
    "group_sums",
    "block_keys",
]

#: Every variant, by its code in the compiled kernels (:func:`variant_code`).
VARIANTS = ("scalar", "shuffle16", "avx2", "avx512bw")
#: The order in which the available variants are preferred.
PREFERENCE = ("avx2", "avx512bw", "shuffle16", "scalar")
#: The environment variable that forces a variant.
VARIANT_ENV = "POLARQUANT_FASTSCAN"

_NEEDS = {"avx2": ("avx2",), "avx512bw": ("avx512f", "avx512bw"), "scalar": ()}

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)


def target_features() -> frozenset[str]:
    """The CPU features Numba compiles for (``+name`` entries of its feature string)."""
    from numba.core import codegen, config

    features = config.CPU_FEATURES
    if features is None:
        features = codegen.get_host_cpu_features()
    return frozenset(f[1:] for f in str(features).split(",") if f.startswith("+"))


def _arch() -> str:
    return llb.get_process_triple().split("-", 1)[0]


def _missing(name: str, features: frozenset[str], arch: str) -> str | None:
    """None if ``name`` can run on the target, else what it lacks."""
    if name == "shuffle16":
        if arch in ("aarch64", "arm64") or "ssse3" in features:
            return None
        return "an SSSE3 (x86) or AArch64 target"
    if name in ("avx2", "avx512bw") and arch not in ("x86_64", "amd64", "i686", "i386"):
        return f"an x86 target (this is {arch})"
    lacking = [f for f in _NEEDS[name] if f not in features]
    return None if not lacking else "the CPU features " + ", ".join("+" + f for f in lacking)


def available() -> dict[str, str | None]:
    """Every variant mapped to ``None`` if the compilation target can run it, else why not."""
    features, arch = target_features(), _arch()
    return {name: _missing(name, features, arch) for name in VARIANTS}


@functools.cache
def _chosen(forced: str) -> str:
    can = available()
    if forced:
        name = forced.strip().lower()
        if name not in VARIANTS:
            raise ValueError(
                f"{VARIANT_ENV}={forced!r} is not a fast-scan variant; valid: {', '.join(VARIANTS)}"
            )
        if can[name] is not None:
            raise ValueError(
                f"{VARIANT_ENV}={forced!r}: the compilation target lacks {can[name]} "
                "(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES, or the host CPU)"
            )
        return name
    return next(name for name in PREFERENCE if can[name] is None)


def variant() -> str:
    """The variant the kernels use: ``POLARQUANT_FASTSCAN`` if set (and runnable), else the
    first of :data:`PREFERENCE` that the target can run."""
    return _chosen(os.environ.get(VARIANT_ENV, ""))


def variant_code(name: str) -> int:
    """The compile-time constant of a variant in the kernels (its index in :data:`VARIANTS`)."""
    return VARIANTS.index(name)


# -- the intrinsic ---------------------------------------------------------------------------------
def _splat(ty, n, value):
    return ir.Constant(ir.VectorType(ty, n), [ir.Constant(ty, value)] * n)


def _load(builder, base, offset, width):
    """``<width x i8>`` at byte ``offset`` (i64) of the i8 pointer ``base``, unaligned."""
    ptr = builder.bitcast(builder.gep(base, [offset]), ir.PointerType(ir.VectorType(I8, width)))
    return builder.load(ptr, align=1)


def _shuffle(builder, table, index, width, name):
    """``width`` lookups: byte ``i`` of the result is byte ``index[i]`` (a nibble) of the
    16-byte lane of ``table`` that holds ``i``."""
    vec = ir.VectorType(I8, width)
    if name in ("avx2", "avx512bw"):
        llvm_name = "llvm.x86.avx2.pshuf.b" if width == 32 else "llvm.x86.avx512.pshuf.b.512"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec]), llvm_name
        )
        return builder.call(fn, [table, index])
    # shuffle16: per 16-byte lane, element i = table[lane base + index[i]] (target-independent)
    base = ir.Constant(vec, [ir.Constant(I8, (i // 16) * 16) for i in range(width)])
    index = builder.or_(index, base)
    out = ir.Constant(vec, None)
    for i in range(width):
        k = builder.zext(builder.extract_element(index, ir.Constant(I32, i)), I32)
        out = builder.insert_element(out, builder.extract_element(table, k), ir.Constant(I32, i))
    return out


def _group(builder, name, width, code_base, high_bases, low_bases, nsteps):
    """The IR of one group of bytes: ``<32 x i16>`` sums per query (``len(high_bases)``
    queries sharing each load of the codes), ``nsteps`` steps of ``width`` bytes."""
    half = width // 2
    v16 = ir.VectorType(I16, half)
    zero = ir.Constant(v16, [0] * half)
    accs = []
    for _ in high_bases:
        pair = (cgutils.alloca_once_value(builder, zero), cgutils.alloca_once_value(builder, zero))
        for acc in pair:
            builder.store(zero, acc)
        accs.append(pair)
    nibble = _splat(I8, width, 0x0F)
    four, eight = _splat(I8, width, 4), _splat(I16, half, 8)
    with cgutils.for_range(builder, nsteps) as loop:
        offset = builder.mul(loop.index, ir.Constant(I64, width))
        code = _load(builder, code_base, offset, width)
        high, low = builder.lshr(code, four), builder.and_(code, nibble)
        for (a, b), hb, lb in zip(accs, high_bases, low_bases, strict=True):
            r1 = _shuffle(builder, _load(builder, hb, offset, width), high, width, name)
            r2 = _shuffle(builder, _load(builder, lb, offset, width), low, width, name)
            r1, r2 = builder.bitcast(r1, v16), builder.bitcast(r2, v16)
            builder.store(builder.add(builder.load(a), builder.add(r1, r2)), a)
            odd = builder.add(builder.lshr(r1, eight), builder.lshr(r2, eight))
            builder.store(builder.add(builder.load(b), odd), b)
    interleave = ir.Constant(
        ir.VectorType(I32, width), [k for j in range(half) for k in (j, half + j)]
    )
    out = []
    for a, b in accs:
        a, b = builder.load(a), builder.load(b)
        even = builder.sub(a, builder.shl(b, eight))
        sums = builder.shuffle_vector(even, b, interleave)  # <width x i16>: byte order
        if width == 64:  # bytes j and j + 1 of the same 32 vectors: add the halves
            lo = builder.shuffle_vector(
                sums, sums, ir.Constant(ir.VectorType(I32, 32), list(range(32)))
            )
            hi = builder.shuffle_vector(
                sums, sums, ir.Constant(ir.VectorType(I32, 32), list(range(32, 64)))
            )
            sums = builder.add(lo, hi)
        out.append(sums)
    return out


def _bases(builder, codes, tables, start, q0, g0, nqb):
    """Pointers to a group's first code byte and to each query's high and low tables there."""
    nbytes = cgutils.unpack_tuple(builder, tables.shape)[2]
    row = builder.mul(nbytes, ir.Constant(I64, 32))  # one (nbytes, 32) table half
    first = builder.mul(g0, ir.Constant(I64, 32))
    code_base = builder.gep(codes.data, [builder.add(start, first)])
    high, low = [], []
    for t in range(nqb):
        q = builder.mul(builder.add(q0, ir.Constant(I64, t)), builder.mul(row, ir.Constant(I64, 2)))
        high.append(builder.gep(tables.data, [builder.add(q, first)]))
        low.append(builder.gep(tables.data, [builder.add(builder.add(q, row), first)]))
    return code_base, high, low


def _steps(builder, g0, g1, width):
    return builder.udiv(
        builder.mul(builder.sub(g1, g0), ir.Constant(I64, 32)), ir.Constant(I64, width)
    )


def _literals(which, queries):
    if not isinstance(which, types.IntegerLiteral) or not isinstance(queries, types.IntegerLiteral):
        return None
    name = VARIANTS[which.literal_value]
    return name, queries.literal_value, 64 if name == "avx512bw" else 32


@intrinsic(prefer_literal=True)
def group_sums(typingctx, which, queries, blocks, start, luts, q0, g0, g1, out):
    """``out[t, v] = sum_{g0 <= j < g1} luts[q0+t, 0, j, blocks[.., j, v] >> 4] + luts[q0+t, 1,
    j, blocks[.., j, v] & 15]`` (uint16) for ``t < queries`` and the 32 vectors ``v`` of the
    block whose byte 0 is at flat offset ``start`` of ``blocks``.

    ``which`` (a compile-time constant, :func:`variant_code`) picks the lookup; ``queries``
    (a constant, 1 or 4) queries share each load of the codes.  ``luts`` is uint8 ``(nq, 2,
    nbytes, 32)``: per byte ``j`` of a vector, the high nibble's table and the low nibble's,
    each written twice (one copy per 16-byte lane).  Exact while every sum stays below
    ``2**16``: at most :data:`polarquant.fastscan.GROUP_BYTES` bytes per call.
    """
    lit = _literals(which, queries)
    if lit is None:
        return None
    name, nqb, width = lit
    sig = types.void(
        which, queries, blocks, types.intp, luts, types.intp, types.intp, types.intp, out
    )

    def codegen(context, builder, signature, args):
        _, _, blocks_v, start_v, luts_v, q0_v, g0_v, g1_v, out_v = args
        codes = context.make_array(signature.args[2])(context, builder, blocks_v)
        tables = context.make_array(signature.args[4])(context, builder, luts_v)
        result = context.make_array(signature.args[8])(context, builder, out_v)
        code_base, high, low = _bases(builder, codes, tables, start_v, q0_v, g0_v, nqb)
        sums = _group(
            builder, name, width, code_base, high, low, _steps(builder, g0_v, g1_v, width)
        )
        v32 = ir.VectorType(I16, 32)
        for t, vec in enumerate(sums):
            ptr = builder.gep(result.data, [ir.Constant(I64, 32 * t)])
            builder.store(vec, builder.bitcast(ptr, ir.PointerType(v32)), align=2)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def block_keys(
    typingctx,
    which,
    queries,
    blocks,
    start,
    luts,
    q0,
    groups,
    scale,
    shift,
    base,
    bias,
    weight,
    thr,
    keys,
):
    """The keys of the 32 vectors of a full block for queries ``q0 ... q0 + queries - 1``, and
    the lanes that beat the thresholds: returns a uint32 mask, bit ``v`` set when ``thr[t] <
    keys[t, v] < inf`` for some ``t`` (a key that is not finite is no candidate).

    The sums of every group of bytes ``groups[g] = (g0, g1)`` (as :func:`group_sums`) widened to
    ``uint32`` and added; then, in float32 with the reference's operations in its order
    (:func:`polarquant.fastscan.scan_keys`), ``keys[t, v] = scale[base + v] * (S + bias[q0 +
    t]) + weight[q0 + t] * shift[base + v]``, vectorised: 32 lanes of one register.  ``scale``
    and ``shift`` must hold ``base + 32`` entries (full blocks only).
    """
    lit = _literals(which, queries)
    if lit is None:
        return None
    name, nqb, width = lit
    sig = types.uint32(
        which,
        queries,
        blocks,
        types.intp,
        luts,
        types.intp,
        groups,
        scale,
        shift,
        types.intp,
        bias,
        weight,
        thr,
        keys,
    )

    def codegen(context, builder, signature, args):
        (
            _,
            _,
            blocks_v,
            start_v,
            luts_v,
            q0_v,
            groups_v,
            scale_v,
            shift_v,
            base_v,
            bias_v,
            weight_v,
            thr_v,
            keys_v,
        ) = args
        arr = {
            i: context.make_array(signature.args[i])(context, builder, args[i])
            for i in (2, 4, 6, 7, 8, 10, 11, 12, 13)
        }
        codes, tables, bounds = arr[2], arr[4], arr[6]
        ngroups = cgutils.unpack_tuple(builder, bounds.shape)[0]
        i32x32 = ir.VectorType(I32, 32)
        totals = []
        for _ in range(nqb):
            acc = cgutils.alloca_once_value(builder, ir.Constant(i32x32, [0] * 32))
            builder.store(ir.Constant(i32x32, [0] * 32), acc)
            totals.append(acc)
        with cgutils.for_range(builder, ngroups) as loop:
            at = builder.mul(loop.index, ir.Constant(I64, 2))
            g0 = builder.load(builder.gep(bounds.data, [at]))
            g1 = builder.load(builder.gep(bounds.data, [builder.add(at, ir.Constant(I64, 1))]))
            code_base, high, low = _bases(builder, codes, tables, start_v, q0_v, g0, nqb)
            sums = _group(
                builder, name, width, code_base, high, low, _steps(builder, g0, g1, width)
            )
            for acc, vec in zip(totals, sums, strict=True):
                builder.store(builder.add(builder.load(acc), builder.zext(vec, i32x32)), acc)
        f32x32 = ir.VectorType(ir.FloatType(), 32)

        def row(a, offset):  # <32 x float> at element `offset` of a float32 array
            ptr = builder.bitcast(builder.gep(a.data, [offset]), ir.PointerType(f32x32))
            return builder.load(ptr, align=4)

        def splat(value):
            vec = builder.insert_element(ir.Constant(f32x32, None), value, ir.Constant(I32, 0))
            return builder.shuffle_vector(
                vec, ir.Constant(f32x32, None), ir.Constant(i32x32, [0] * 32)
            )

        s, sh = row(arr[7], base_v), row(arr[8], base_v)
        infinity = ir.Constant(f32x32, [ir.Constant(ir.FloatType(), float("inf"))] * 32)
        mask = ir.Constant(I32, 0)
        for t, acc in enumerate(totals):
            q = builder.add(q0_v, ir.Constant(I64, t))
            b = splat(builder.load(builder.gep(arr[10].data, [q])))
            w = splat(builder.load(builder.gep(arr[11].data, [q])))
            limit = splat(builder.load(builder.gep(arr[12].data, [ir.Constant(I64, t)])))
            key = builder.fmul(s, builder.fadd(builder.uitofp(builder.load(acc), f32x32), b))
            key = builder.fadd(key, builder.fmul(w, sh))
            out = builder.bitcast(
                builder.gep(arr[13].data, [ir.Constant(I64, 32 * t)]), ir.PointerType(f32x32)
            )
            builder.store(key, out, align=4)
            above = builder.fcmp_ordered(">", key, limit)  # false for NaN
            finite = builder.fcmp_ordered("<", key, infinity)  # +inf is no candidate either
            mask = builder.or_(mask, builder.bitcast(builder.and_(above, finite), I32))
        return mask

    return sig, codegen
