"""The command line as a user runs it: a subprocess, its stdout, stderr and exit status."""

import json
import subprocess
import sys

import torch
from transformers import AutoImageProcessor, AutoProcessor, Qwen3VLForConditionalGeneration
from transformers.image_utils import load_image as hf_load_image

from tests.conftest import PROJECT_IMAGES, REPO_ROOT

DEMO_IMAGE = PROJECT_IMAGES / "astronaut.png"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qwen3vl.run", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )


def hf_greedy_text(checkpoint, prompt: str, image_path=None, new_tokens: int = 16) -> str:
    model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.image_processor = AutoImageProcessor.from_pretrained(checkpoint, backend="pil")
    content = ([{"type": "image"}] if image_path else []) + [{"type": "text", "text": prompt}]
    text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    images = [hf_load_image(str(image_path))] if image_path else None
    inputs = processor(text=[text], images=images, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=new_tokens)
    return processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def test_cli_image_prompt_matches_hf(tiny_tied):
    result = run_cli("--model", str(tiny_tied), "--image", str(DEMO_IMAGE), "--prompt", "Describe this image.",
                     "--max-new-tokens", "16", "--temperature", "0", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    expected = hf_greedy_text(tiny_tied, "Describe this image.", DEMO_IMAGE)
    assert result.stdout == expected + "\n"
    assert "tokens/s" in result.stderr


def test_cli_json_output_matches_hf(tiny_tied):
    result = run_cli("--model", str(tiny_tied), "--image", str(DEMO_IMAGE), "--prompt", "Describe this image.",
                     "--max-new-tokens", "16", "--temperature", "0", "--dtype", "float32", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["text"] == hf_greedy_text(tiny_tied, "Describe this image.", DEMO_IMAGE)
    assert report["generated_tokens"] == len(report["token_ids"])
    assert report["stop_reason"] in ("stop_token", "max_new_tokens")
    assert all(seconds >= 0 for seconds in report["timings"].values())
    assert "tokens/s" not in result.stderr


def test_cli_text_only_prompt_matches_hf(tiny_untied):
    result = run_cli("--model", str(tiny_untied), "--prompt", "Name three colours.",
                     "--max-new-tokens", "12", "--temperature", "0", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hf_greedy_text(tiny_untied, "Name three colours.", new_tokens=12) + "\n"


def test_cli_sampling_is_seeded(tiny_untied):
    args = ("--model", str(tiny_untied), "--prompt", "Hello", "--max-new-tokens", "8",
            "--temperature", "1.0", "--top-k", "50", "--top-p", "0.9")
    first = run_cli(*args, "--seed", "3")
    again = run_cli(*args, "--seed", "3")
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout


def test_cli_missing_image_fails_cleanly(tiny_tied, tmp_path):
    missing = tmp_path / "no_such_photo.jpg"
    result = run_cli("--model", str(tiny_tied), "--image", str(missing), "--prompt", "Describe this image.")
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_missing_checkpoint_fails_cleanly(tmp_path):
    result = run_cli("--model", str(tmp_path / "absent"), "--prompt", "Hi")
    assert result.returncode == 1
    assert "checkpoint directory not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_bad_options(tiny_tied):
    for option, value, message in (
        ("--top-p", "1.5", "--top-p must be in (0, 1]"),
        ("--temperature", "-1", "--temperature must be >= 0"),
        ("--max-new-tokens", "0", "--max-new-tokens must be at least 1"),
        ("--dtype", "int8", "invalid choice"),
    ):
        result = run_cli("--model", str(tiny_tied), "--prompt", "Hi", option, value)
        assert result.returncode == 2, option
        assert message in result.stderr, option
