"""Should the KV cache score keys by fast scan?  Attention fidelity of byte-table scores (not a test).

Usage::

    python benchmarks/fastscan_attention.py [--json out.json]

Fast scan replaces the float tables of a score from the codes by tables rounded to bytes
(:mod:`polarquant.fastscan`).  A search then re-ranks its candidates exactly, so its results
do not change; attention cannot, because softmax weighs every key.  The question of issue 13 is
therefore whether the rounded scores keep the attention as faithful as the exact scores from the
same codes.  Measured on the shipped real SmolLM2-135M keys and queries (3 layers, 9 query heads
sharing 3 KV heads, 192 tokens, causal masks at 32 query positions; ``polarquant.datasets``):
the mean KL divergence from the full-precision attention, ``KL(softmax(q k / 8) || softmax(est /
8))``, with the scores exact from the codes (``Quantizer.score``) and with the byte-table scores
(``delta S + offset``, times the norm and the method's constant), and the largest logit
difference between the two.
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import machine, write_json

import polarquant as pq
from polarquant import fastscan
from polarquant.metrics import attention_kl

METHODS = {
    "TurboQuantMSE 4-bit": lambda d: pq.TurboQuantMSE(d, 4, seed=0),
    "TurboQuantMSE 3-bit": lambda d: pq.TurboQuantMSE(d, 3, seed=0),
    "TurboQuantMSE 2-bit": lambda d: pq.TurboQuantMSE(d, 2, seed=0),
    "QJL m=256": lambda d: pq.QJL(d, 256, seed=0),
}


def byte_table_scores(quantizer, queries, codes) -> np.ndarray:
    """The approximate scores of fast scan: ``lambda * norm * (delta S + offset)``."""
    plan, field, factor = quantizer._table_form()
    fplan = fastscan.FastScanPlan(plan.bits, plan.n if hasattr(plan, "n") else plan.m)
    y = np.asarray(quantizer.prepare_queries(queries), np.float64)
    tq, delta, offset = fastscan.quantize_tables(fastscan.nibble_tables(fplan, y, plan.centroids))
    blocks = fastscan.to_blocks(fplan, codes.fields[field])
    sums = fastscan.scan_sums(fplan, tq, blocks, codes.n_vectors)
    norms = np.asarray(codes.fields["norms"], np.float64)
    return factor * norms[None, :] * fastscan.approximate_scores(sums, delta, offset)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    data = pq.datasets.load_smollm2_kv()
    keys, queries, positions = data["keys"], data["queries"], data["query_positions"]
    layers, heads, kv_heads = keys.shape[0], queries.shape[1], keys.shape[1]
    d = keys.shape[-1]
    scale = 1.0 / np.sqrt(d)
    rows = []
    print(
        f"{'method':<22} {'KL exact scores':>16} {'KL byte tables':>15} {'ratio':>7} {'max |dlogit|':>13}"
    )
    for name, make in METHODS.items():
        quantizer = make(d)
        kl_exact, kl_bytes, worst = [], [], 0.0
        for layer in range(layers):
            for head in range(heads):
                k = keys[layer, head // (heads // kv_heads)].astype(np.float32)
                q = queries[layer, head].astype(np.float32)
                codes = quantizer.encode(k)
                true = (q @ k.T) * scale
                exact = np.asarray(quantizer.score(q, codes), np.float64) * scale
                approx = byte_table_scores(quantizer, q, codes) * scale
                for i, p in enumerate(positions):
                    seen = slice(0, int(p) + 1)
                    kl_exact.append(attention_kl(true[i, seen], exact[i, seen]))
                    kl_bytes.append(attention_kl(true[i, seen], approx[i, seen]))
                    worst = max(worst, float(np.abs(approx[i, seen] - exact[i, seen]).max()))
        row = {
            "method": name,
            "kl_exact": float(np.mean(kl_exact)),
            "kl_byte_tables": float(np.mean(kl_bytes)),
            "max_logit_difference": worst,
        }
        row["ratio"] = row["kl_byte_tables"] / row["kl_exact"]
        rows.append(row)
        print(
            f"{name:<22} {row['kl_exact']:16.5f} {row['kl_byte_tables']:15.5f} "
            f"{row['ratio']:7.3f} {worst:13.4f}"
        )
    results = {"machine": machine(), "rows": rows}
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
