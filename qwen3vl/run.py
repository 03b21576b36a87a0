"""Command line: python -m qwen3vl.run --model DIR --image PATH --prompt TEXT.

The answer streams to stdout; progress, timings and errors go to stderr. Exit status: 0 on
success, 1 on a runtime error (bad checkpoint, unreadable image, ...), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3vl.run",
        description="Generate text from a Qwen3-VL checkpoint for a prompt and optional images.",
    )
    parser.add_argument("--model", required=True,
                        help="checkpoint directory (config.json + *.safetensors) or a HuggingFace Hub id")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="image file; repeat for several images; omit for a text-only prompt")
    parser.add_argument("--prompt", required=True, help="the user's question or instruction")
    parser.add_argument("--system", default=None, help="optional system message")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="maximum number of tokens to generate")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature; 0 means greedy (default: the checkpoint's "
                             "generation_config.json, greedy when it has none)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="compute dtype (default: float32 on CPU, bfloat16 on GPU and TPU)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature is not None and args.temperature < 0:
        parser.error(f"--temperature must be >= 0 (0 means greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 0:
        parser.error(f"--top-k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if not args.prompt.strip():
        parser.error("--prompt is empty")
    return args


def _load(args, console: Console):
    from qwen3vl.inference import Qwen3VL

    columns = (TextColumn("loading weights"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("load", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return Qwen3VL.from_pretrained(args.model, dtype=args.dtype, progress=update)


def run(args: argparse.Namespace) -> int:
    from qwen3vl.generate import Sampling

    console = Console(stderr=True)
    start = time.perf_counter()
    vlm = _load(args, console)
    console.print(f"loaded {vlm.checkpoint_dir} as {vlm.dtype} in {time.perf_counter() - start:.1f} s", soft_wrap=True)

    sampling = Sampling.from_generation_config(
        vlm.checkpoint_dir, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    result = vlm.generate(args.prompt, images=args.image, system=args.system,
                          max_new_tokens=args.max_new_tokens, sampling=sampling, on_text=write)
    sys.stdout.write("\n")
    generation = result.generation
    console.print(
        f"{len(generation.token_ids)} tokens ({generation.stop_reason}); prompt {generation.prompt_tokens} tokens, "
        f"prefill {generation.prefill_seconds:.2f} s (compilation included on a new shape), "
        f"decode {generation.decode_tokens_per_second:.1f} tokens/s",
        soft_wrap=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError) as error:  # our loaders raise these with a message for the user
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
