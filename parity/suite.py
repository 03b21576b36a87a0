"""The parity cases and the loop that runs them against HF."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from PIL import Image

from parity.capture import Case, HFSide, JaxSide
from parity.compare import CaseReport, compare
from parity.tolerances import depths_for

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "fixtures" / "build"
PHOTOS = REPO_ROOT / "fixtures" / "images"
DEFAULT_CHECKPOINTS = (FIXTURES / "tiny-tied", FIXTURES / "tiny-untied")
DECODE_STEPS = 64


def make_images(out_dir: Path) -> dict[str, Path]:
    """Write the square, wide, tall and tiny test images, cut from the shipped photos."""
    out_dir.mkdir(parents=True, exist_ok=True)
    astronaut = Image.open(PHOTOS / "astronaut.png").convert("RGB")
    cat = Image.open(PHOTOS / "chelsea.png").convert("RGB")
    variants = {
        "square": astronaut,
        "wide": cat.crop((0, 100, 451, 240)).resize((640, 200), Image.Resampling.BICUBIC),
        "tall": cat.crop((180, 20, 260, 290)).resize((90, 300), Image.Resampling.BICUBIC),
        "tiny": astronaut.resize((20, 14), Image.Resampling.BICUBIC),
    }
    paths = {}
    for name, image in variants.items():
        paths[name] = out_dir / f"{name}.png"
        image.save(paths[name])
    return paths


def default_cases(checkpoints: Iterable[Path], images: dict[str, Path],
                  decode_steps: int = DECODE_STEPS) -> list[Case]:
    prompt = "Describe this image."
    cases = []
    for checkpoint in checkpoints:
        cases += [
            Case("square", checkpoint, prompt, (images["square"],)),
            Case("wide", checkpoint, prompt, (images["wide"],)),
            Case("tall", checkpoint, prompt, (images["tall"],)),
            Case("tiny", checkpoint, prompt, (images["tiny"],)),
            Case("two-images", checkpoint, "Compare these two images.", (images["square"], images["wide"])),
            Case("text-only", checkpoint, "Write a haiku about mountains."),
            Case(f"decode-{decode_steps}", checkpoint, prompt, (images["square"],), decode_steps),
        ]
    return cases


def quick_cases(images: dict[str, Path]) -> list[Case]:
    """Return the fast subset for the test suite: one image case, text only and a short cached decode."""
    tied, untied = DEFAULT_CHECKPOINTS
    return [
        Case("wide", tied, "Describe this image.", (images["wide"],)),
        Case("text-only", untied, "Write a haiku about mountains."),
        Case("decode-8", untied, "Describe this image.", (images["tiny"],), 8),
    ]


def run_suite(cases: list[Case], dtypes: Iterable[str],
              on_report: Callable[[CaseReport], None] | None = None) -> list[CaseReport]:
    """Run every case in every dtype; models are loaded once per checkpoint and dtype."""
    reports = []
    for dtype in dtypes:
        for checkpoint in dict.fromkeys(case.checkpoint for case in cases):
            logger.info("loading %s as %s on both sides", checkpoint, dtype)
            hf, ours = HFSide(checkpoint, dtype), JaxSide(checkpoint, dtype)
            depths = depths_for(ours.config)
            for case in (case for case in cases if case.checkpoint == checkpoint):
                reference = hf.capture(case)
                captured = ours.capture(case, reference.get("decode.tokens"))
                report = CaseReport(case.name, checkpoint.name, dtype, compare(captured, reference, dtype, depths))
                reports.append(report)
                if on_report is not None:
                    on_report(report)
    return reports
