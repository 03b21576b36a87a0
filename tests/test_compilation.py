"""Compiled once per shape bucket: new prompts of a known bucket and a second CLI run compile nothing."""

import json
import subprocess
import sys

import numpy as np

from qwen3vl import Qwen3VL, Sampling
from qwen3vl.compilation import compilations
from tests.conftest import PROJECT_IMAGES, REPO_ROOT


def test_same_bucket_prompts_compile_once(tiny_untied):
    vlm = Qwen3VL.from_pretrained(tiny_untied, dtype="float32")
    image = PROJECT_IMAGES / "astronaut.png"
    greedy = Sampling()
    vlm.generate("Describe this image.", images=[image], max_new_tokens=20, sampling=greedy)
    after_first = compilations()

    # Other words, lengths and token counts in the same buckets, then sampling instead of greedy.
    vlm.generate("What is the person wearing?", images=[image], max_new_tokens=17, sampling=greedy)
    vlm.generate("Colours?", images=[image], max_new_tokens=30, sampling=Sampling(temperature=0.8, top_k=5, seed=3))
    assert compilations() == after_first


def test_batch_rows_equal_single_prompts(tiny_untied):
    """Right-padded rows of different lengths decode exactly as each prompt alone."""
    from qwen3vl.generate import Prompt, generate_batch

    vlm = Qwen3VL.from_pretrained(tiny_untied, dtype="float32")
    texts = ["Hi", "Write a long story about a lighthouse keeper and the sea.", "2+2="]
    prompts = [vlm.processor(text) for text in texts]
    rows = [Prompt(p.input_ids, p.token_types, p.pixel_values, p.image_grid_thw) for p in prompts]
    batch = generate_batch(vlm.params, vlm.config, rows, 12, Sampling(), vlm.stop_ids)
    for text, result in zip(texts, batch):
        single = vlm.generate(text, max_new_tokens=12, sampling=Sampling())
        assert result.token_ids == single.token_ids, text


def test_second_cli_run_compiles_nothing(tiny_tied, tmp_path):
    command = [sys.executable, "-m", "qwen3vl.run", "--model", str(tiny_tied), "--image",
               str(PROJECT_IMAGES / "astronaut.png"), "--prompt", "Describe this image.", "--max-new-tokens", "12",
               "--temperature", "0", "--json", "--compile-cache", str(tmp_path / "xla")]
    first = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    second = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    first_report, second_report = json.loads(first.stdout), json.loads(second.stdout)
    assert first_report["compilations"] > 0
    assert second_report["compilations"] == 0
    assert second_report["token_ids"] == first_report["token_ids"]
    assert np.isfinite(second_report["timings"]["prefill_seconds"])
