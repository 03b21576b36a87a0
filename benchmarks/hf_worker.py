"""The HF transformers side of `python -m qwen3vl.bench`: one process, metrics as JSON on stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen3VLForConditionalGeneration, StoppingCriteria, StoppingCriteriaList

from qwen3vl.bench import median_time, peak_rss_gb

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class StepClock(StoppingCriteria):
    """Record the time after every generation step; never stops generation."""

    def __init__(self, sync):
        self.sync = sync
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.sync()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def measure(checkpoint: Path, inputs_path: Path, dtype: str, decode_tokens: int, batches: list[int],
            device: str) -> dict:
    data = dict(np.load(inputs_path))
    start = time.perf_counter()
    model = Qwen3VLForConditionalGeneration.from_pretrained(checkpoint, dtype=TORCH_DTYPES[dtype]).to(device).eval()
    load_seconds = time.perf_counter() - start

    def batch_inputs(batch: int) -> dict:
        ids = torch.from_numpy(data["input_ids"].astype(np.int64))[None].repeat(batch, 1).to(device)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": torch.from_numpy(data["token_types"].astype(np.int32))[None].repeat(batch, 1).to(device),
            "pixel_values": torch.from_numpy(np.concatenate([data["pixel_values"]] * batch)).to(device),
            "image_grid_thw": torch.from_numpy(np.concatenate([data["image_grid_thw"]] * batch)).to(device),
        }

    single = batch_inputs(1)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def encode():
        with torch.no_grad():
            model.model.get_image_features(single["pixel_values"], single["image_grid_thw"])
        sync()

    def prefill(inputs):
        with torch.no_grad():
            model(**inputs, logits_to_keep=1)
        sync()

    encode()
    vision_seconds = median_time(encode, 3)
    prefill(single)
    prefill_seconds = median_time(lambda: prefill(single), 3)
    metrics = {"load_seconds": load_seconds, "vision_ms": 1e3 * vision_seconds, "prefill_ms": 1e3 * prefill_seconds}

    for batch in batches:
        inputs = single if batch == 1 else batch_inputs(batch)
        clock = StepClock(sync)
        with torch.no_grad():
            model.generate(**inputs, do_sample=False, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens,
                           stopping_criteria=StoppingCriteriaList([clock]))
        # The first timestamp follows the prefill and first token; the rest are cached decoding steps.
        steps = len(clock.times) - 1
        metrics[f"decode_tokens_per_s_batch{batch}"] = batch * steps / (clock.times[-1] - clock.times[0])
    metrics["peak_rss_gb"] = peak_rss_gb()
    metrics["device"] = device
    return metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hf_worker")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--dtype", choices=sorted(TORCH_DTYPES), required=True)
    parser.add_argument("--decode-tokens", type=int, required=True)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    print(json.dumps(measure(args.checkpoint, args.inputs, args.dtype, args.decode_tokens, batches, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
