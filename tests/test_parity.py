"""The parity harness: it passes on the real model and fails, at the right stage, on each fault."""

import json
import subprocess
import sys

import pytest

from parity import faults
from parity.capture import Case, HFSide, JaxSide
from parity.compare import CaseReport, compare
from parity.suite import DEFAULT_CHECKPOINTS, make_images, quick_cases, run_suite
from parity.tolerances import FLOAT32_CAP, bound_for, depths_for
from qwen3vl.config import ModelConfig
from tests.conftest import REPO_ROOT

TIED, UNTIED = DEFAULT_CHECKPOINTS


@pytest.fixture(scope="module")
def images(tmp_path_factory, checkpoint_dirs):
    return make_images(tmp_path_factory.mktemp("parity_images"))


@pytest.fixture(scope="module")
def fault_cases(images):
    """An image case for the prefill faults and a cached decode for the decoding fault."""
    return {
        "image": Case("wide", TIED, "Describe this image.", (images["wide"],)),
        "decode": Case("decode-4", TIED, "Describe this image.", (images["tiny"],), decode_steps=4),
    }


@pytest.fixture(scope="module")
def references(fault_cases):
    hf = HFSide(TIED, "float32")
    return {name: hf.capture(case) for name, case in fault_cases.items()}


@pytest.fixture(scope="module")
def jax_side():
    return JaxSide(TIED, "float32")


def _report(jax_side, case, reference) -> CaseReport:
    captured = jax_side.capture(case, reference.get("decode.tokens"))
    stages = compare(captured, reference, "float32", depths_for(jax_side.config))
    return CaseReport(case.name, TIED.name, "float32", stages)


def test_quick_suite_passes_in_float32(images):
    reports = run_suite(quick_cases(images), ["float32"])
    for report in reports:
        assert report.first_failure is None, f"{report.case}: {report.first_failure}"
    stages = {stage.stage for report in reports for stage in report.stages}
    for expected in ("processor.pixel_values", "vision.pos_embed", "vision.deepstack.1", "text.position_ids",
                     "text.layer.2", "text.logits", "decode.7.logits", "decode.keys.2"):
        assert expected in stages


def test_image_case_passes_in_bfloat16(images):
    case = Case("square", UNTIED, "Describe this image.", (images["square"],), decode_steps=2)
    (report,) = run_suite([case], ["bfloat16"])
    assert report.first_failure is None, str(report.first_failure)


def test_unfaulted_model_passes(jax_side, fault_cases, references):
    for name, case in fault_cases.items():
        report = _report(jax_side, case, references[name])
        assert report.passed, f"{name}: {report.first_failure}"


@pytest.mark.parametrize("fault_name", sorted(faults.FAULTS))
def test_fault_fails_at_its_stage(fault_name, jax_side, fault_cases, references):
    case_name = "decode" if fault_name == "rope-delta-off-by-one" else "image"
    with faults.injected(fault_name) as fault:
        report = _report(jax_side, fault_cases[case_name], references[case_name])
    assert not report.passed
    assert report.first_failure.stage == fault.first_stage


def test_float32_bounds_at_most_1e5():
    configs = [ModelConfig.from_dir(TIED), ModelConfig.from_dir(UNTIED)]
    stages = ["vision.patch_embed", "vision.pos_embed", "vision.block.0", "vision.merger", "text.layer.0",
              "text.logits", "decode.3.logits", "decode.keys.1"]
    for config in configs:
        depths = depths_for(config)
        for stage in stages:
            bound = bound_for(stage, "float32", depths)
            assert bound.kind == "rel"
            assert 0 < bound.value <= FLOAT32_CAP


def test_bfloat16_bounds_grow_with_depth():
    depths = depths_for(ModelConfig.from_dir(TIED))
    first = bound_for("text.layer.0", "bfloat16", depths).value
    last = bound_for("text.layer.2", "bfloat16", depths).value
    assert first < last < 1.0
    assert "depth" in bound_for("text.layer.2", "bfloat16", depths).reason


def test_parity_cli_reports_fault(tmp_path, checkpoint_dirs):
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "parity", "--quick", "--fault", "exact-gelu", "--json", str(report_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stderr
    assert "first failing stage vision.block.0" in result.stdout
    document = json.loads(report_path.read_text())
    assert document["passed"] is False
    failures = {case["case"]: case["first_failure"] for case in document["cases"]}
    assert failures["wide"] == "vision.block.0"
    assert failures["text-only"] is None
