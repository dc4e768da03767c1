"""Execute the book's chapters top to bottom, each in a fresh kernel (used by the Makefile).

    python tests/execute_notebooks.py book/*.ipynb          # re-execute in place (`make notebooks`)
    python tests/execute_notebooks.py --time book/*.ipynb   # only report run times (`make timings`)
    .venv-colab/bin/python tests/execute_notebooks.py --time --kernel-prefix .venv-colab book/*.ipynb
                                                            # in the Colab versions (`make colab-check`)

In place, the executed notebook is written back with execution counts 1..n and no per-cell
timing metadata, so that a re-run changes the file only where an output changed. The kernel
runs in the notebook's own folder, as it does in Jupyter, in the book build and under nbval.
A notebook whose cell fails is reported and left unchanged; the others still run, and the exit
status is 1. With ``--kernel-prefix DIR``, a first kernel reports its Python, where it imports
``icl_lib`` from and the versions of the book's libraries, and the run stops (status 2) unless
that Python is the environment DIR's and ``icl_lib`` is installed there (not this checkout):
the ``python3`` kernel is the Python that runs this script, unless a kernel spec of that name
elsewhere points to another one. Not a pytest module: its name does not start with ``test_``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

TIMEOUT_S = 600  # per cell; every chapter is meant to run in well under two minutes in total
KERNEL = "python3"
FAILURE_LINES = 12  # of the failing cell's traceback, printed under a FAILED line

# Run in a first kernel by --kernel-prefix: what the chapters' kernel is and what it imports.
KERNEL_REPORT = """
import importlib.metadata, json, sys
versions = {}
for name in ("torch", "numpy", "matplotlib", "sympy", "transformers", "accelerate", "tokenizers",
             "gguf", "huggingface_hub", "ipykernel", "ipython"):
    try:
        versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        versions[name] = None
try:
    import icl_lib
    where = icl_lib.__file__
except ImportError:
    where = None
print(json.dumps({"executable": sys.executable, "prefix": sys.prefix, "python": sys.version.split()[0],
                  "icl_lib": where, "versions": versions}))
"""


def client_for(nb, folder: Path) -> NotebookClient:
    """A client that runs ``nb`` in a new ``python3`` kernel whose working folder is ``folder``."""
    return NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name=KERNEL,
        record_timing=False,
        resources={"metadata": {"path": str(folder.resolve())}},
    )


def kernel_report(folder: Path) -> dict:
    """What a new ``python3`` kernel started in ``folder`` runs: KERNEL_REPORT's answer."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(KERNEL_REPORT)])
    client_for(nb, folder).execute()
    text = "".join(out.text for out in nb.cells[0].outputs if out.output_type == "stream" and out.name == "stdout")
    return json.loads(text.strip().splitlines()[-1])


def check_kernel(prefix: Path, folder: Path) -> bool:
    """Print the kernel's report; whether its Python and icl_lib are those of the environment
    ``prefix``."""
    report = kernel_report(folder)
    versions = ", ".join(f"{name} {version or '(not installed)'}" for name, version in report["versions"].items())
    print(f"kernel {KERNEL}: {report['executable']} (Python {report['python']})")
    print(f"  icl_lib from {report['icl_lib']}")
    print(f"  {versions}", flush=True)
    inside = prefix.resolve()
    ok = Path(report["prefix"]).resolve() == inside
    if not ok:
        print(f"the kernel's Python is not that of {prefix} (its sys.prefix is {report['prefix']})", file=sys.stderr)
    if report["icl_lib"] is None or not Path(report["icl_lib"]).resolve().is_relative_to(inside):
        print(f"the kernel does not import icl_lib from {prefix}", file=sys.stderr)
        ok = False
    return ok


def execute(path: Path, write: bool) -> tuple[float, list[int]]:
    """Run one notebook in a new ``python3`` kernel; return the wall-clock seconds it took and
    the numbers (from 1) of the code cells that wrote to stderr."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timing metadata left by other tools
    client = client_for(nb, path.parent)
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    if write:
        nbformat.write(nb, path)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    stderr = [n for n, cell in enumerate(code, 1)
              if any(out.output_type == "stream" and out.name == "stderr" for out in cell.outputs)]
    return elapsed, stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to execute")
    parser.add_argument("--time", action="store_true", help="report run times; leave the files unchanged")
    parser.add_argument("--kernel-prefix", type=Path, metavar="DIR",
                        help="first check that the kernel runs the Python of the environment DIR and "
                             "imports icl_lib from it; print its versions")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"not a notebook file: {path}")
    if args.kernel_prefix is not None and not check_kernel(args.kernel_prefix, args.notebooks[0].parent):
        return 2

    total, failed = 0.0, []
    for path in args.notebooks:
        start = time.perf_counter()
        try:
            elapsed, stderr = execute(path, write=not args.time)
        except (CellExecutionError, CellTimeoutError) as error:
            failed.append(path)
            reason = f"{getattr(error, 'ename', type(error).__name__)}: {getattr(error, 'evalue', error)}"
            print(f"{str(path):45} FAILED after {time.perf_counter() - start:.1f} s: {reason}", flush=True)
            where = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()[-FAILURE_LINES:]
            print("\n".join("    " + line for line in where), file=sys.stderr, flush=True)
            continue
        total += elapsed
        line = f"{str(path):45} {elapsed:7.1f} s" if args.time else f"executed {path} ({elapsed:.1f} s)"
        if stderr:  # not a failure; the book's chapters write nothing to stderr where they are built
            line += f"  (stderr in code cell{'s' if len(stderr) > 1 else ''} {', '.join(map(str, stderr))})"
        print(line, flush=True)
    if args.time:
        print(f"{'total':45} {total:7.1f} s")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
