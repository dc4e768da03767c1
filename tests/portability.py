"""`make portability`: the unit tests and strict nbval under every instruction set this CPU offers.

    python tests/portability.py                     # every setting, one and two threads
    python tests/portability.py --settings avx2 --threads 1 --targets unit
    python tests/portability.py --targets nbval --notebooks book/11_real_language_model.ipynb

The book's outputs must not depend on the CPU that re-executes them. Round-off differs between
instruction sets: PyTorch's own kernels are compiled for several (``ATEN_CPU_CAPABILITY``
chooses one at start-up), and so are the BLAS (MKL: ``MKL_ENABLE_INSTRUCTIONS``) and oneDNN
(``ONEDNN_MAX_CPU_ISA``). Each setting below caps all three at one level, so one machine can
play the part of an older or a different CPU. For each setting this CPU supports and each
thread count, the script runs ``make unit`` and ``make nbval`` (strict, with the book's one
sanitize file) in a fresh process tree, checks that PyTorch really runs the requested kernels,
and prints one line per run and a summary with the date and the CPU. It exits 1 if any run
failed. Not a pytest module (its name does not start with ``test_``); not part of ``make test``
(about half an hour on the 2-core reference machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"


@dataclass(frozen=True)
class Setting:
    """One instruction-set level, as the three libraries spell it."""

    name: str  # ATEN_CPU_CAPABILITY
    cpu_flags: tuple[str, ...]  # /proc/cpuinfo flags the level needs
    torch_reports: str  # torch.backends.cpu.get_cpu_capability() under it
    mkl: str  # MKL_ENABLE_INSTRUCTIONS
    onednn: str  # ONEDNN_MAX_CPU_ISA

    def environment(self) -> dict[str, str]:
        return {"ATEN_CPU_CAPABILITY": self.name, "MKL_ENABLE_INSTRUCTIONS": self.mkl, "ONEDNN_MAX_CPU_ISA": self.onednn}


SETTINGS = (
    Setting("default", (), "DEFAULT", "SSE4_2", "SSE41"),
    Setting("avx2", ("avx2", "fma"), "AVX2", "AVX2", "AVX2"),
    Setting("avx512", ("avx512f", "avx512bw", "avx512vl", "avx512dq"), "AVX512", "AVX512", "AVX512_CORE"),
)
TARGETS = ("unit", "nbval")


def cpu_description() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags (Linux); ``platform.processor()`` elsewhere."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return model, flags


def torch_capability(env: dict[str, str]) -> str:
    """What PyTorch reports it runs under ``env`` (a fresh interpreter: the choice is made at import)."""
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    done = subprocess.run([str(PYTHON), "-c", probe], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def run(target: str, env: dict[str, str], log: Path) -> tuple[bool, float, str]:
    """``make TARGET`` under ``env``; returns (passed, seconds, pytest's closing line)."""
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(["make", "--no-print-directory", target], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    lines = [line for line in log.read_text().splitlines() if " passed" in line or " failed" in line]
    return done.returncode == 0, seconds, (lines[-1].strip() if lines else "no pytest summary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [s.name for s in SETTINGS]
    parser.add_argument("--settings", nargs="+", choices=names, default=names, help="instruction-set levels (default: all)")
    parser.add_argument("--threads", nargs="+", type=int, choices=(1, 2), default=[1, 2], help="ICL_LIB_THREADS values")
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS), help="make targets to run")
    parser.add_argument("--notebooks", nargs="+", type=Path, help="chapters for make nbval (default: all of book/)")
    parser.add_argument("--logs", type=Path, default=ROOT / "_build" / "portability", help="folder for the full logs")
    args = parser.parse_args(argv)
    if not PYTHON.is_file():
        parser.error(f"{PYTHON} not found: run `make venv` first")

    model, flags = cpu_description()
    args.logs.mkdir(parents=True, exist_ok=True)
    print(f"{dt.date.today().isoformat()}, {model}, {os.cpu_count()} cores, Python {platform.python_version()}")
    results, skipped = [], []
    for setting in (s for s in SETTINGS if s.name in args.settings):
        missing = [flag for flag in setting.cpu_flags if flag not in flags]
        if missing:
            skipped.append(f"{setting.name} (this CPU lacks {', '.join(missing)})")
            continue
        for threads in args.threads:
            env = {**os.environ, **setting.environment(), "ICL_LIB_THREADS": str(threads)}
            if args.notebooks:
                env["NBVAL_PATHS"] = " ".join(str(path) for path in args.notebooks)
            reported = torch_capability(env)
            if reported != setting.torch_reports:
                results.append((setting.name, threads, "-", False, 0.0, f"torch runs {reported}, not {setting.torch_reports}"))
                print(f"FAIL {setting.name:8} threads={threads}: torch reports {reported}", flush=True)
                continue
            for target in args.targets:
                log = args.logs / f"{target}-{setting.name}-{threads}.log"
                passed, seconds, summary = run(target, env, log)
                results.append((setting.name, threads, target, passed, seconds, summary))
                status = "pass" if passed else "FAIL"
                print(f"{status} {setting.name:8} threads={threads} make {target:6} {seconds:6.0f} s  {summary}  ({log})", flush=True)

    print("\nsettings: ATEN_CPU_CAPABILITY / MKL_ENABLE_INSTRUCTIONS / ONEDNN_MAX_CPU_ISA")
    for setting in SETTINGS:
        if setting.name in args.settings:
            print(f"  {setting.name:8} {setting.name} / {setting.mkl} / {setting.onednn}")
    for line in skipped:
        print(f"skipped: {line}")
    failed = [r for r in results if not r[3]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
