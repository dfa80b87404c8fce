"""Sphinx configuration of the polarquant documentation.

Build from the repository root (warnings are errors, nitpicky cross-references)::

    python -m pip install -e ".[docs]"
    python -m sphinx -W --keep-going -n -b html docs docs/_build/html

Everything is local: no intersphinx, no fonts, analytics or scripts fetched at
build time, so the site builds offline.

Tutorials. The notebooks live outside ``docs/``, in ``../tutorials/*.ipynb``
(committed without outputs). The site shows them **executed**, with every output
and figure: ``python -m polarquant.course execute`` runs them at scale 0.1 and
writes the executed copies to ``docs/_generated/executed/`` (or the folder named
by ``POLARQUANT_DOCS_EXECUTED``; ``tests/test_docs.py`` points it at the copies
the tutorial tests executed). At build time :func:`copy_tutorials` copies into
``docs/_generated/tutorials/`` (git-ignored by ``docs/.gitignore``) the executed
copy of each notebook whose recorded digest matches the committed notebook, or
else the committed notebook, which myst-nb then executes itself at scale 0.1
(``nb_execution_mode = "cache"``, cached under ``_build``). Each copy is the
site edition of :func:`polarquant.course.site_edition`: solutions collapsed.
:func:`fill_generated_toctrees` writes the toctree of ``tutorials.md`` from the
notebooks found, so a new notebook shows up without any change under ``docs/``.

Math is rendered by MathJax 3 served from the site itself
(``sphinx-mathjax-offline`` copies it into ``_static/mathjax``): no CDN.
``_static/print.css`` is a print layout (no navigation, full width, no breaks
inside equations and figures).

Backends. ``api/backends.md`` documents the accelerated backend packages
(``backends/numba_backend``, ``backends/cupy_backend``) only once they exist,
and optional imports (numba, cupy) that are not installed are mocked, so the
build needs neither.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import shutil
import sys
from pathlib import Path

from docutils import nodes
from sphinx.transforms import SphinxTransform

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
TUTORIALS_SRC = ROOT / "tutorials"
GENERATED = DOCS / "_generated"
TUTORIALS_DST = GENERATED / "tutorials"
#: Executed notebooks written by ``python -m polarquant.course execute`` (or the test suite).
EXECUTED = Path(os.environ.get("POLARQUANT_DOCS_EXECUTED") or GENERATED / "executed")
#: Scale of the notebooks myst-nb executes itself (those without a current executed copy).
os.environ.setdefault("POLARQUANT_TUTORIAL_SCALE", "0.1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(None, [str(TUTORIALS_SRC), os.environ.get("PYTHONPATH")])
)  # `import plotting` in the kernels myst-nb starts

# polarquant is normally installed (pip install -e ".[docs]"); fall back to the checkout.
try:
    import polarquant
except ImportError:  # pragma: no cover - only without an install
    sys.path.insert(0, str(ROOT))
    import polarquant

# -- project ---------------------------------------------------------------------------------
project = "polarquant"
author = "polarquant developers"
copyright = "polarquant developers (Apache-2.0)"
release = polarquant.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ------------------------------------------------------------------------------
extensions = [
    "myst_nb",  # MyST Markdown pages and .ipynb notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 from _static/mathjax, not a CDN
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
nitpicky = True  # also on the command line (-n); every cross-reference must resolve

# -- MyST / myst-nb --------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
# Executed copies (see the module docstring) carry ``mystnb.execution_mode = "off"``; a notebook
# without a current copy is executed here, once, and cached.
nb_execution_mode = "cache"
nb_execution_in_temp = True
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_merge_streams = True
# Notebooks are written by the tutorials work, not here: their heading levels are theirs.
suppress_warnings = ["myst.header"]

# -- autodoc / napoleon ----------------------------------------------------------------------
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Optional dependencies that are not installed here are mocked (never the installed ones).
autodoc_mock_imports = [
    name for name in ("numba", "cupy", "cupyx") if importlib.util.find_spec(name) is None
]
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# Parameter and return types of numpydoc are free text ("array, shape (..., d)",
# {"haar", "hadamard"}), shown as written rather than turned into class references.
napoleon_use_param = False
napoleon_use_rtype = False
napoleon_use_ivar = True

# Cross-references that cannot resolve without intersphinx, or are not references at all.
# Everything else (every :func:, :meth:, :class:, :mod:, :attr:, :data: written in a
# docstring or a page) must resolve: a typo there fails the build.
nitpick_ignore_regex = [
    # types from signatures that live outside polarquant (nothing is fetched)
    ("py:class", r"(numpy|np|os|collections\.abc|typing|contextlib|contextvars|types)\..*"),
    ("py:class", r"(ndarray|dtype|ArrayLike|NDArray|Any|Iterator|Callable|Mapping|Sequence)"),
    (
        "py:.*",
        r"(math|numpy|scipy|numba|cupy|contextvars|array_api_compat|array_api_strict)(\..*)?",
    ),
    # free-text numpydoc types ("dict of str -> array", {"haar", "hadamard"}) and their words
    ("py:class", r".*[^\w.].*"),
    (
        "py:class",
        r"(array|array_like|array-like|optional|callable|sequence|scalar|iterable|"
        r"mapping|path-like|file-like|namespace|module|device|default)",
    ),
    # private helpers (polarquant._seeding, turboquant._TurboQuant) are not documented
    ("py:.*", r"\.*(\w+\.)*_[a-zA-Z]\w*(\..*)?"),
]

# -- HTML ------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"polarquant {release}"
html_static_path = ["_static"]
html_css_files = [("print.css", {"media": "print"})]
html_js_files = ["print.js"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 8,
    "use_edit_page_button": False,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_sidebars = {"index": [], "changelog": [], "installation": []}
html_show_sourcelink = False


# -- build-time hooks ------------------------------------------------------------------------
TUTORIALS_MARKER = "<!-- tutorials-toctree -->"
BACKENDS_MARKER = "<!-- accelerated-backends -->"
ACCELERATED = ("numba_backend", "cupy_backend")


def tutorial_notebooks() -> list[Path]:
    """The committed notebooks ``../tutorials/*.ipynb``, sorted by name."""
    if not TUTORIALS_SRC.is_dir():
        return []
    return sorted(p for p in TUTORIALS_SRC.glob("*.ipynb") if p.is_file())


def executed_copy(src: Path):
    """The executed copy of ``src`` in :data:`EXECUTED` if it was made from these very bytes."""
    from polarquant.course import METADATA_KEY, source_digest

    copy = EXECUTED / src.name
    if not copy.is_file():
        return None
    import nbformat

    nb = nbformat.read(copy, as_version=4)
    if nb.metadata.get(METADATA_KEY, {}).get("source_sha256") != source_digest(src):
        return None
    return nb


def copy_tutorials(app=None) -> None:
    """Write the site edition of every ``../tutorials/*.ipynb`` into ``docs/_generated/tutorials/``.

    The executed copy is used where it is current (``mystnb.execution_mode = "off"``), the
    committed notebook otherwise (myst-nb executes it).  Files are written only when their
    bytes changed (so incremental builds do not re-read untouched notebooks), and copies whose
    source is gone are removed.  The folder is git-ignored.
    """
    import nbformat

    from polarquant.course import site_edition

    TUTORIALS_DST.mkdir(parents=True, exist_ok=True)
    wanted = {p.name: p for p in tutorial_notebooks()}
    for old in TUTORIALS_DST.iterdir():
        if old.name not in wanted:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
    stale = []
    for name, src in wanted.items():
        nb = executed_copy(src)
        if nb is None:
            stale.append(name)
            nb = nbformat.read(src, as_version=4)
        else:
            nb.metadata["mystnb"] = {"execution_mode": "off"}
        data = nbformat.writes(site_edition(nb)).encode("utf-8")
        dst = TUTORIALS_DST / name
        if not dst.exists() or dst.read_bytes() != data:
            dst.write_bytes(data)
    if stale and app is not None:
        from sphinx.util import logging

        logging.getLogger(__name__).info(
            f"executing {len(stale)} notebooks without a current executed copy in {EXECUTED} "
            "(python -m polarquant.course execute writes them)"
        )


def accelerated_backends() -> list[str]:
    """Accelerated backend modules that exist in this checkout (``polarquant.backends.*``)."""
    found = []
    for name in ACCELERATED:
        try:
            spec = importlib.util.find_spec(f"polarquant.backends.{name}")
        except ImportError:
            spec = None
        if spec is not None and (spec.origin or spec.submodule_search_locations):
            pkg = ROOT / "backends" / name
            if (pkg / "__init__.py").is_file() or (ROOT / "backends" / f"{name}.py").is_file():
                found.append(name)
    return found


def _tutorials_block() -> str:
    names = [p.stem for p in tutorial_notebooks()]
    if not names:
        return (
            "```{note}\nNo tutorial notebook has been committed yet: they appear here as "
            "soon as `tutorials/*.ipynb` exist.\n```\n"
        )
    entries = "\n".join(f"_generated/tutorials/{n}" for n in names)
    return f"```{{toctree}}\n:maxdepth: 1\n\n{entries}\n```\n"


def _backends_block() -> str:
    blocks = []
    for name in accelerated_backends():
        mods = [f"polarquant.backends.{name}"]
        pkg = ROOT / "backends" / name
        if pkg.is_dir():
            subs = sorted(m.name for m in pkgutil.iter_modules([str(pkg)]))
            mods += [f"polarquant.backends.{name}.{sub}" for sub in subs if not sub.startswith("_")]
        for mod in mods:
            blocks.append(f"## `{mod}`\n\n```{{eval-rst}}\n.. automodule:: {mod}\n```\n")
    if not blocks:
        return (
            "The accelerated backends (`numba_backend`, `cupy_backend`) are not part of "
            "this checkout yet; see the {doc}`../backends`.\n"
        )
    return "\n".join(blocks)


def fill_generated_toctrees(app, docname: str, source: list[str]) -> None:
    """``source-read`` hook: fill the markers of ``tutorials.md`` and ``api/backends.md``."""
    if docname == "tutorials" and TUTORIALS_MARKER in source[0]:
        source[0] = source[0].replace(TUTORIALS_MARKER, _tutorials_block())
    elif docname == "api/backends" and BACKENDS_MARKER in source[0]:
        source[0] = source[0].replace(BACKENDS_MARKER, _backends_block())


def always_reread(app, env, added, changed, removed) -> list[str]:
    """The pages whose generated part depends on files outside ``docs/``."""
    return ["tutorials", "api/backends"]


def resolve_reexports(app, env, node, contnode):
    """Resolve references across polarquant's re-exports.

    The public classes are documented once, under their public names
    (``polarquant.TurboQuantMSE``); their modules (``polarquant.turboquant``)
    document the rest.  A reference written against the other spelling, or an
    unqualified name used inside a re-exported class's docstring (its
    ``py:module`` is then ``polarquant``), is retried against the name of the
    module that defines the object.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    domain = env.get_domain("py")
    builder = app.builder
    fromdoc = node.get("refdoc")
    candidates = []
    public = polarquant.__all__
    parts = target.lstrip("~.").split(".")
    modname, clsname = node.get("py:module"), node.get("py:class")
    # polarquant.<module>.<Name>[.attr] -> polarquant.<Name>[.attr]
    if len(parts) >= 3 and parts[0] == "polarquant":
        for i in range(2, len(parts)):
            if parts[i] in public:
                candidates.append(".".join(["polarquant", *parts[i:]]))
                break
    # <Name>[.attr] with Name public -> polarquant.<Name>[.attr]
    if parts[0] in public:
        candidates.append(".".join(["polarquant", *parts]))
    if modname and len(parts) == 1:
        owner = sys.modules.get(modname)
        # an unqualified name inside a class documented under its public name
        # (py:module is then "polarquant"): retry in the module that defines the class
        obj = getattr(owner, clsname.split(".")[0], None) if owner and clsname else None
        defining = getattr(obj, "__module__", None) if obj is not None else None
        if defining and defining != modname:
            candidates.append(f"{defining}.{parts[0]}")
        # an attribute of a public class named in its module's docstring
        for name in public:
            cls = getattr(polarquant, name, None)
            if getattr(cls, "__module__", None) == modname and hasattr(cls, parts[0]):
                candidates.append(f"polarquant.{name}.{parts[0]}")
    for cand in candidates:
        for reftype in (node.get("reftype"), "obj"):
            newnode = node.deepcopy()
            newnode["reftarget"] = cand
            found = domain.resolve_xref(env, fromdoc, builder, reftype, cand, newnode, contnode)
            if found is not None:
                return found
    return None


class DocstringSectionsAreNotLabels(SphinxTransform):
    """Keep section titles inside docstrings out of the global label namespace.

    With docutils 0.22, the titles of sections written in docstrings ("Symbols",
    "Numerics"...) become *explicit* names, which Sphinx registers as global
    ``:ref:`` labels; two modules with a "Symbols" section then collide
    ("duplicate label").  On the API pages, which define no labels of their own,
    those names are made implicit again (still usable as in-page anchors).
    Runs just before Sphinx collects labels (``SphinxDomains``, priority 850).
    """

    default_priority = 840

    def apply(self, **kwargs) -> None:
        current = getattr(self.env, "current_document", None)  # Sphinx >= 8.2
        docname = current.docname if current is not None else self.env.docname
        if not docname.startswith("api/"):
            return
        doc = self.document
        for section in doc.findall(nodes.section):
            for name in section["names"]:
                if doc.nametypes.get(name):
                    doc.nametypes[name] = False


def setup(app):
    app.add_transform(DocstringSectionsAreNotLabels)
    app.connect("builder-inited", copy_tutorials)
    app.connect("source-read", fill_generated_toctrees)
    app.connect("env-get-outdated", always_reread)
    app.connect("missing-reference", resolve_reexports)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
