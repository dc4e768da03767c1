"""Execute the book's chapters top to bottom, each in a fresh kernel (used by the Makefile).

    python tests/execute_notebooks.py book/*.ipynb          # re-execute in place (`make notebooks`)
    python tests/execute_notebooks.py --time book/*.ipynb   # only report run times (`make timings`)

In place, the executed notebook is written back with execution counts 1..n and no per-cell
timing metadata, so that a re-run changes the file only where an output changed. The kernel
runs in the notebook's own folder, as it does in Jupyter, in the book build and under nbval.
A notebook whose cell fails is reported and left unchanged; the others still run, and the exit
status is 1. Not a pytest module: its name does not start with ``test_``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

TIMEOUT_S = 600  # per cell; every chapter is meant to run in well under two minutes in total


def execute(path: Path, write: bool) -> float:
    """Run one notebook in a new ``python3`` kernel; return the wall-clock seconds it took."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)  # timing metadata left by other tools
    client = NotebookClient(
        nb,
        timeout=TIMEOUT_S,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    if write:
        nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="the .ipynb files to execute")
    parser.add_argument("--time", action="store_true", help="report run times; leave the files unchanged")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"not a notebook file: {path}")

    total, failed = 0.0, []
    for path in args.notebooks:
        start = time.perf_counter()
        try:
            elapsed = execute(path, write=not args.time)
        except (CellExecutionError, CellTimeoutError) as error:
            failed.append(path)
            reason = f"{getattr(error, 'ename', type(error).__name__)}: {getattr(error, 'evalue', error)}"
            print(f"{str(path):45} FAILED after {time.perf_counter() - start:.1f} s: {reason}", flush=True)
            continue
        total += elapsed
        line = f"{str(path):45} {elapsed:7.1f} s" if args.time else f"executed {path} ({elapsed:.1f} s)"
        print(line, flush=True)
    if args.time:
        print(f"{'total':45} {total:7.1f} s")
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(map(str, failed))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
