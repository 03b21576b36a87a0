"""Benchmark the JAX model against HF transformers on the same random weights and inputs.

    python -m qwen3vl.bench                      # Qwen3-VL-2B shape, float32 and bfloat16, 3 rounds
    python -m qwen3vl.bench --layers 4 --rounds 1   # a quick run at reduced depth

Each round runs one JAX worker process and one HF worker process per dtype, interleaved, so
that the machine's drift affects both sides alike; the report gives medians and ranges over
rounds and the ratio JAX / HF. The HF worker lives in benchmarks/hf_worker.py because this
package never imports torch. Speed does not depend on weight values, so the weights are random
(written once in HF's format and cached on disk).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_CACHE = REPO_ROOT / "bench-cache"
IMAGE_SIDE = 256  # a 256x256 image: 16x16 patches, 64 visual tokens
PROMPT_TOKENS = 86

# Published Qwen3-VL shapes (config.json of the Instruct checkpoints on the Hub).
SHAPES = {
    "2B": dict(text=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                         num_key_value_heads=8), tie=True,
               vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                           deepstack_visual_indexes=[5, 11, 17])),
    "4B": dict(text=dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8), tie=True,
               vision=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                           deepstack_visual_indexes=[5, 11, 17])),
    "8B": dict(text=dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8), tie=False,
               vision=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16,
                           deepstack_visual_indexes=[8, 16, 24])),
}


def hf_config(size: str, layers: int | None) -> dict:
    """Build the config.json of a random checkpoint at a published shape, optionally with fewer layers."""
    shape = SHAPES[size]
    text = dict(shape["text"], vocab_size=151936, head_dim=128, hidden_act="silu", rms_norm_eps=1e-6,
                max_position_embeddings=262144, model_type="qwen3_vl_text",
                rope_parameters={"rope_type": "default", "rope_theta": 5000000, "mrope_section": [24, 20, 20],
                                 "mrope_interleaved": True})
    vision = dict(shape["vision"], out_hidden_size=text["hidden_size"], num_position_embeddings=2304,
                  patch_size=16, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
                  hidden_act="gelu_pytorch_tanh", model_type="qwen3_vl_vision")
    if layers is not None:
        text["num_hidden_layers"] = layers
        vision["depth"] = max(layers, len(vision["deepstack_visual_indexes"]))
        vision["deepstack_visual_indexes"] = list(range(len(vision["deepstack_visual_indexes"])))
    return {"model_type": "qwen3_vl", "architectures": ["Qwen3VLForConditionalGeneration"],
            "text_config": text, "vision_config": vision, "tie_word_embeddings": shape["tie"],
            "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
            "vision_end_token_id": 151653, "dtype": "bfloat16"}


def write_random_checkpoint(directory: Path, raw_config: dict) -> None:
    """Write random bfloat16 weights for every declared tensor, in HF's safetensors format."""
    import ml_dtypes
    from safetensors.numpy import save_file

    from qwen3vl.config import ModelConfig
    from qwen3vl.weights import declare_params

    config = ModelConfig.from_hf_dict(raw_config)
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    shard, shard_bytes, index, number = {}, 0, {}, 1

    def flush():
        nonlocal shard, shard_bytes, number
        name = f"model-{number:05d}.safetensors"
        save_file(shard, str(directory / name))
        index.update({tensor: name for tensor in shard})
        shard, shard_bytes, number = {}, 0, number + 1

    for param in declare_params(config):
        for name in param.hf_names():
            is_norm_scale = re.search(r"norm\d?\.weight$", name) is not None
            values = np.ones(param.hf_shape, np.float32) if is_norm_scale else (
                rng.standard_normal(param.hf_shape, dtype=np.float32) * 0.02)
            shard[name] = values.astype(ml_dtypes.bfloat16)
            shard_bytes += shard[name].nbytes
            if shard_bytes > 2**31:
                flush()
    if shard:
        flush()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    (directory / "config.json").write_text(json.dumps(raw_config, indent=2))


def make_inputs(raw_config: dict) -> dict[str, np.ndarray]:
    """Build one random 256x256 image in an 86-token prompt, as token ids, token types and patches."""
    from PIL import Image

    from qwen3vl.processing import ImageProcessorConfig, preprocess_images

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8))
    pixel_values, grid = preprocess_images([image], ImageProcessorConfig())
    visual = int(np.prod(grid[0])) // 4
    text = rng.integers(0, 150000, PROMPT_TOKENS - visual - 2).astype(np.int32)
    ids = np.concatenate([text[:5], [raw_config["vision_start_token_id"]],
                          np.full(visual, raw_config["image_token_id"]), [raw_config["vision_end_token_id"]],
                          text[5:]]).astype(np.int32)
    types = (ids == raw_config["image_token_id"]).astype(np.int8)
    return {"input_ids": ids, "token_types": types, "pixel_values": pixel_values, "image_grid_thw": grid}


def measure_bandwidth(gib: int = 1) -> dict[str, float]:
    """Best of five: a numpy copy of a 1 GiB array (bytes read plus written) and a jitted JAX sum."""
    import jax
    import jax.numpy as jnp

    source = np.ones(gib * 2**28, np.float32)
    target = np.empty_like(source)
    copy_times = []
    for _ in range(5):
        start = time.perf_counter()
        np.copyto(target, source)
        copy_times.append(time.perf_counter() - start)
    device_array = jnp.asarray(source)
    total = jax.jit(jnp.sum)
    total(device_array).block_until_ready()
    sum_times = []
    for _ in range(5):
        start = time.perf_counter()
        total(device_array).block_until_ready()
        sum_times.append(time.perf_counter() - start)
    copy_rate = 2 * source.nbytes / min(copy_times) / 1e9
    sum_rate = source.nbytes / min(sum_times) / 1e9
    return {"copy_gb_per_s": copy_rate, "jax_sum_gb_per_s": sum_rate, "gb_per_s": max(copy_rate, sum_rate)}


def peak_rss_gb() -> float:
    """Return this process's peak resident memory in GB.

    Linux keeps ru_maxrss across exec, so a worker started by a larger parent would report the
    parent's peak. VmHWM in /proc belongs to the worker's own address space.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9  # the value is in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e9  # in bytes on macOS


def median_time(function, repeats: int) -> float:
    """Return the median wall time, in seconds, of `repeats` calls of `function`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def jax_worker(checkpoint: Path, inputs_path: Path, dtype: str, decode_tokens: int, batches: list[int],
               cache_dir: Path) -> dict:
    """Measure the JAX side in this process; returns the metrics as a dict."""
    process_start = time.perf_counter()
    from qwen3vl.compilation import compilations, enable_persistent_cache

    enable_persistent_cache(cache_dir)
    import jax

    from qwen3vl import model
    from qwen3vl.config import ModelConfig
    from qwen3vl.generate import Prompt, Sampling, generate_batch
    from qwen3vl.weights import load_params, param_bytes

    data = dict(np.load(inputs_path))
    config = ModelConfig.from_dir(checkpoint)
    start = time.perf_counter()
    params = load_params(checkpoint, config, dtype)
    jax.block_until_ready(params)
    load_seconds = time.perf_counter() - start

    def encode():
        visual, deepstack, _ = model.encode_vision(params, data["pixel_values"], data["image_grid_thw"], config)
        jax.block_until_ready((visual, deepstack))

    prompt = Prompt(data["input_ids"], data["token_types"], data["pixel_values"], data["image_grid_thw"])

    def prefill():
        generate_batch(params, config, [prompt], 1, Sampling())

    start = time.perf_counter()
    encode()
    prefill()
    first_prefill = time.perf_counter() - start
    vision_seconds = median_time(encode, 3)
    prefill_seconds = median_time(prefill, 3)
    metrics = {"load_seconds": load_seconds, "vision_ms": 1e3 * vision_seconds, "prefill_ms": 1e3 * prefill_seconds}

    for batch in batches:
        rows = [prompt] * batch

        def generate(tokens: int) -> float:
            start = time.perf_counter()
            generate_batch(params, config, rows, tokens, Sampling())
            return time.perf_counter() - start

        first_call = generate(decode_tokens)  # compiles this batch shape
        one_token = median_time(lambda: generate(1), 2)
        all_tokens = median_time(lambda: generate(decode_tokens), 2)
        # Like the HF side: the first token comes with the prefill, the rest are decoding steps.
        metrics[f"decode_tokens_per_s_batch{batch}"] = batch * (decode_tokens - 1) / (all_tokens - one_token)
        if batch == batches[0]:
            # The first call of each shape includes its compilation; the warm calls do not.
            metrics["compile_seconds"] = (first_prefill - vision_seconds - prefill_seconds) + (
                first_call - all_tokens)
    metrics["process_seconds"] = time.perf_counter() - process_start
    metrics["compilations"] = compilations()
    text_bytes = param_bytes(params["text"])
    metrics["decode_weight_bytes"] = text_bytes
    metrics["peak_rss_gb"] = peak_rss_gb()
    metrics["device"] = str(jax.devices()[0])
    return metrics


@dataclasses.dataclass
class Plan:
    checkpoint: Path
    inputs: Path
    dtypes: list[str]
    rounds: int
    decode_tokens: int
    batches: list[int]
    skip_hf: bool


def _run_worker(command: list[str]) -> dict:
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({' '.join(command[2:4])}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_rounds(plan: Plan, device: str) -> list[dict]:
    """Run JAX and HF workers in interleaved rounds; returns one record per worker run."""
    cold_cache = Path(tempfile.mkdtemp(prefix="qwen3vl-bench-xla-"))
    try:
        return _interleave(plan, device, cold_cache)
    finally:
        shutil.rmtree(cold_cache, ignore_errors=True)


def _interleave(plan: Plan, device: str, cold_cache: Path) -> list[dict]:
    records = []
    for round_index in range(plan.rounds):
        for dtype in plan.dtypes:
            common = ["--checkpoint", str(plan.checkpoint), "--inputs", str(plan.inputs), "--dtype", dtype,
                      "--decode-tokens", str(plan.decode_tokens), "--batches", ",".join(map(str, plan.batches))]
            # Round 0 compiles into an empty cache; later rounds start warm from it.
            cache = cold_cache / dtype
            jax_metrics = _run_worker([sys.executable, "-m", "qwen3vl.bench", "--worker", "jax",
                                       "--compile-cache", str(cache), *common])
            records.append({"side": "jax", "dtype": dtype, "round": round_index, **jax_metrics})
            print(f"round {round_index + 1}/{plan.rounds} {dtype} jax done", file=sys.stderr, flush=True)
            if not plan.skip_hf:
                hf_metrics = _run_worker([sys.executable, "-m", "benchmarks.hf_worker", "--device", device, *common])
                records.append({"side": "hf", "dtype": dtype, "round": round_index, **hf_metrics})
                print(f"round {round_index + 1}/{plan.rounds} {dtype} hf done", file=sys.stderr, flush=True)
    return records


METRICS = (
    ("vision_ms", "vision encode, ms", "lower"),
    ("prefill_ms", "prefill (vision + text), ms", "lower"),
    ("decode_tokens_per_s_batch1", "decode batch 1, tokens/s", "higher"),
    ("decode_tokens_per_s_batch8", "decode batch 8, tokens/s", "higher"),
    ("peak_rss_gb", "peak RSS, GB", "lower"),
    ("load_seconds", "load, s", "lower"),
)


def summarize(records: list[dict], bandwidth: dict, dtypes: list[str]) -> dict:
    """Medians, ranges and JAX/HF speed-up per metric and dtype, plus decode's fraction of the bound."""
    summary = {}
    for dtype in dtypes:
        rows = {}
        for key, label, better in METRICS:
            sides = {}
            for side in ("jax", "hf"):
                values = [r[key] for r in records if r["side"] == side and r["dtype"] == dtype and key in r]
                if values:
                    sides[side] = {"median": float(np.median(values)), "min": float(min(values)),
                                   "max": float(max(values))}
            if "jax" in sides and "hf" in sides:
                jax_value, hf_value = sides["jax"]["median"], sides["hf"]["median"]
                sides["speedup"] = hf_value / jax_value if better == "lower" else jax_value / hf_value
            rows[key] = {"label": label, **sides}
        jax_records = [r for r in records if r["side"] == "jax" and r["dtype"] == dtype]
        weight_bytes = jax_records[0]["decode_weight_bytes"]
        bound = bandwidth["gb_per_s"] * 1e9 / weight_bytes
        decode = rows["decode_tokens_per_s_batch1"]["jax"]["median"]
        cold = [r["compile_seconds"] for r in jax_records if r["round"] == 0]
        warm = [r["compile_seconds"] for r in jax_records if r["round"] > 0]
        summary[dtype] = {
            "metrics": rows,
            "decode_bound_tokens_per_s": bound,
            "decode_fraction_of_bound": decode / bound,
            "batch8_over_batch1": rows["decode_tokens_per_s_batch8"]["jax"]["median"] / decode
            if "decode_tokens_per_s_batch8" in rows and "jax" in rows["decode_tokens_per_s_batch8"] else None,
            "first_compile_seconds": float(np.median(cold)) if cold else None,
            "warm_start_compile_seconds": float(np.median(warm)) if warm else None,
            "warm_start_compilations": [r["compilations"] for r in jax_records if r["round"] > 0],
            "decode_weight_gb": weight_bytes / 1e9,
        }
    return summary


def machine_description() -> dict:
    import jax

    versions = {"python": platform.python_version(), "jax": jax.__version__}
    try:
        from importlib.metadata import version

        versions.update({name: version(name) for name in ("torch", "transformers")})
    except Exception:  # the HF packages are optional for --skip-hf runs
        pass
    # PyTorch's bfloat16 kernels use AMX where the processor has it, which decides that comparison.
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    flags = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {flag}" in cpuinfo]
    return {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(), "cpu_features": flags,
            "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
            "jax_backend": jax.default_backend(), "versions": versions}


def render(summary: dict, bandwidth: dict, machine: dict, plan: Plan, size: str, layers) -> str:
    """Render the report as Markdown (also shown in the terminal by rich)."""
    depth = f"{size} shape" + (f", {layers} layers" if layers else ", full depth")
    lines = [
        "# Benchmarks: qwen3vl-jax against HF transformers",
        "",
        f"Generated by `python -m qwen3vl.bench` ({depth}, random bfloat16-stored weights, one "
        f"{IMAGE_SIDE}x{IMAGE_SIDE} image in an {PROMPT_TOKENS}-token prompt, {plan.decode_tokens} new tokens, "
        f"{plan.rounds} interleaved round{'' if plan.rounds == 1 else 's'}; medians with [min-max]).",
        "",
        f"Machine: {machine['processor']}, {machine['cores']} cores, {machine['memory_gb']:.0f} GB, CPU features "
        f"{', '.join(machine.get('cpu_features', [])) or 'unknown'}, JAX backend "
        f"{machine['jax_backend']}; versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
        f"Memory bandwidth: numpy copy {bandwidth['copy_gb_per_s']:.1f} GB/s (read + write), jitted JAX sum "
        f"{bandwidth['jax_sum_gb_per_s']:.1f} GB/s; the bound uses the faster, {bandwidth['gb_per_s']:.1f} GB/s.",
        "In the last column, above 1 means JAX is better: faster, or less memory.",
        "",
    ]
    for dtype, result in summary.items():
        lines += [f"## {dtype}", "", "| metric | JAX | HF | JAX vs HF |", "|---|---|---|---|"]
        for key, row in result["metrics"].items():
            def cell(side):
                if side not in row:
                    return "-"
                return f"{row[side]['median']:.3g} [{row[side]['min']:.3g}-{row[side]['max']:.3g}]"
            speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
            lines.append(f"| {row['label']} | {cell('jax')} | {cell('hf')} | {speedup} |")
        lines += [
            "",
            f"- decode bound: {result['decode_weight_gb']:.2f} GB of text weights per token at "
            f"{bandwidth['gb_per_s']:.1f} GB/s = {result['decode_bound_tokens_per_s']:.2f} tokens/s; "
            f"JAX batch-1 decode reaches {100 * result['decode_fraction_of_bound']:.0f}% of it",
        ]
        if result["batch8_over_batch1"] is not None:
            lines.append(f"- batch 8 decodes {result['batch8_over_batch1']:.1f}x the tokens/s of batch 1")
        if result["first_compile_seconds"] is not None:
            lines.append(f"- first compile (empty cache): {result['first_compile_seconds']:.1f} s")
        if result["warm_start_compile_seconds"] is not None:
            lines.append(f"- warm start (persistent cache): {result['warm_start_compile_seconds']:.1f} s of "
                         f"compile overhead, compilations per run: {result['warm_start_compilations']}")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m qwen3vl.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="2B", help="published model shape to benchmark")
    parser.add_argument("--layers", type=int, default=None,
                        help="text layers (and at most as many vision blocks) for a quick run; default: full depth")
    parser.add_argument("--dtype", action="append", choices=("float32", "bfloat16"),
                        help="dtype to measure; repeat for several (default: float32 and bfloat16)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per dtype")
    parser.add_argument("--decode-tokens", type=int, default=32, help="tokens generated per decode measurement")
    parser.add_argument("--batches", default="1,8", help="comma-separated decode batch sizes")
    parser.add_argument("--skip-hf", action="store_true", help="measure the JAX side only")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md",
                        help="Markdown report path; the JSON goes beside it")
    parser.add_argument("--worker", choices=("jax",), help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compile-cache", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.worker == "jax":
        metrics = jax_worker(args.checkpoint, args.inputs, args.dtype[0], args.decode_tokens, batches,
                             args.compile_cache)
        print(json.dumps(metrics))
        return 0

    import jax
    from rich.console import Console
    from rich.markdown import Markdown

    console = Console(stderr=True)
    raw_config = hf_config(args.size, args.layers)
    checkpoint = BENCH_CACHE / f"qwen3vl-{args.size}-layers{args.layers or 'full'}"
    if not (checkpoint / "config.json").is_file():
        console.print(f"writing random {args.size} weights to {checkpoint} (once)")
        write_random_checkpoint(checkpoint, raw_config)
    inputs = checkpoint / "inputs.npz"
    np.savez(inputs, **make_inputs(raw_config))

    console.print("measuring memory bandwidth")
    bandwidth = measure_bandwidth()
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    plan = Plan(checkpoint, inputs, args.dtype or ["float32", "bfloat16"], args.rounds, args.decode_tokens,
                batches, args.skip_hf)
    records = run_rounds(plan, device)
    summary = summarize(records, bandwidth, plan.dtypes)
    machine = machine_description()
    report = render(summary, bandwidth, machine, plan, args.size, args.layers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"machine": machine, "bandwidth": bandwidth, "summary": summary, "records": records}, indent=2))
    console.print(Markdown(report))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
