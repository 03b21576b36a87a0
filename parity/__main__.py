"""python -m parity: run the parity suite against HF transformers and print the report.

Exit status: 0 when every stage of every case is within its bound, 1 when any stage fails,
2 on a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from parity import faults, report, suite

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m parity", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", type=Path, metavar="DIR",
                        help="checkpoint directory to check; repeat for several "
                             "(default: the tiny fixtures in fixtures/build)")
    parser.add_argument("--dtype", action="append", choices=DTYPES,
                        help="compute dtype; repeat for several (default: float32, bfloat16 and float16)")
    parser.add_argument("--quick", action="store_true", help="run the fast subset used by the test suite")
    parser.add_argument("--decode-steps", type=int, default=suite.DECODE_STEPS,
                        help="length of the cached-decoding case, in tokens")
    parser.add_argument("--fault", choices=sorted(faults.FAULTS),
                        help="inject one deliberate fault into the JAX model; the run must then fail")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON to PATH")
    return parser.parse_args(argv)


def _versions() -> dict[str, str]:
    import jax
    import torch
    import transformers

    return {"jax": jax.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("parity", "qwen3vl"):
        logging.getLogger(name).setLevel(logging.INFO)
    # Wide enough for every column when the output goes to a file or a CI log.
    console = Console(width=None if sys.stdout.isatty() else 160)
    checkpoints = args.checkpoint or list(suite.DEFAULT_CHECKPOINTS)
    missing = [str(path) for path in checkpoints if not (path / "config.json").is_file()]
    if missing:
        print(f"error: no checkpoint (config.json) in {', '.join(missing)}; run `make fixtures` "
              "or pass --checkpoint DIR", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as scratch:
        images = suite.make_images(Path(scratch))
        cases = suite.quick_cases(images) if args.quick else suite.default_cases(checkpoints, images, args.decode_steps)
        dtypes = args.dtype or (["float32"] if args.quick else list(DTYPES))
        render = lambda case_report: report.render_case(case_report, console)  # noqa: E731
        if args.fault:
            with faults.injected(args.fault) as fault:
                console.print(f"[yellow]fault injected:[/] {fault.description}")
                reports = suite.run_suite(cases, dtypes, render)
        else:
            reports = suite.run_suite(cases, dtypes, render)

    report.render_summary(reports, console)
    if args.json:
        report.write_json(reports, args.json, _versions())
        console.print(f"wrote {args.json}")
    return 0 if all(case_report.passed for case_report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
