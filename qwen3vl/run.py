"""Command line: python -m qwen3vl.run --model DIR --image PATH --prompt TEXT.

The answer streams to stdout, and progress, timings, warnings and errors go to stderr. With
--json, stdout receives one JSON object after generation instead, and stderr only warnings and
errors. Exit status: 0 on success, 1 on a runtime error (bad image, bad checkpoint, a prompt too
long for the model, ...), 2 on a usage error (invalid option values), 130 on Ctrl-C. An error is
one message on stderr, and its traceback is printed only with --debug. On an error, stdout
stays empty, in --json mode too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

EXIT_RUNTIME_ERROR = 1
EXIT_INTERRUPTED = 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the options; argparse exits with status 2 on a usage error."""
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

    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="maximum number of tokens to generate (default: 128)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature; 0 means greedy (default: the checkpoint's "
                             "generation_config.json, greedy when it has none)")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens (0: all)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling probability mass in (0, 1]")
    parser.add_argument("--seed", type=int, default=0, help="random seed for sampling (default: 0)")

    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                        help="compute dtype (default: float32 on CPU, bfloat16 on GPU and TPU)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the generated text, token ids and timings instead of streaming")
    parser.add_argument("--compile-cache", metavar="DIR", default=None,
                        help="directory of the persistent XLA compilation cache, so that later runs with the "
                             "same shapes skip compilation (default: $QWEN3VL_CACHE_DIR, else "
                             "$XDG_CACHE_HOME/qwen3vl-jax/xla, else ~/.cache/qwen3vl-jax/xla)")
    parser.add_argument("--no-compile-cache", action="store_true", help="do not read or write the compilation cache")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    args = parser.parse_args(argv)

    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    # The negated comparisons also reject nan, which compares false with everything.
    if args.temperature is not None and not (args.temperature >= 0 and math.isfinite(args.temperature)):
        parser.error(f"--temperature must be >= 0 and finite (0 means greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 0:
        parser.error(f"--top-k must be >= 0, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if not args.prompt.strip():
        parser.error("--prompt is empty; pass the question or instruction as text")
    return args


def _load(args, console: Console):
    from qwen3vl.inference import Qwen3VL

    if args.json or not console.is_terminal:
        # A progress bar on a non-terminal only leaves an empty line behind.
        return Qwen3VL.from_pretrained(args.model, dtype=args.dtype)
    columns = (TextColumn("loading weights"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("load", total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return Qwen3VL.from_pretrained(args.model, dtype=args.dtype, progress=update)


def _json_report(result, load_seconds: float) -> dict:
    """Collect the fields of the --json output. JSON has no NaN, so a speed that was not measured is null."""
    from qwen3vl.compilation import compilations

    generation = result.generation
    speed = generation.decode_tokens_per_second
    return {
        "text": result.text,
        "token_ids": generation.token_ids,
        "stop_reason": generation.stop_reason,
        "prompt_tokens": generation.prompt_tokens,
        "generated_tokens": len(generation.token_ids),
        "timings": {
            "load_seconds": load_seconds,
            "prefill_seconds": generation.prefill_seconds,
            "first_chunk_seconds": generation.first_chunk_seconds,
            "decode_seconds": generation.decode_seconds,
        },
        "decode_tokens_per_second": speed if math.isfinite(speed) else None,
        "compilations": compilations(),
    }


def run(args: argparse.Namespace) -> int:
    from qwen3vl.compilation import compilations, enable_persistent_cache
    from qwen3vl.generate import Sampling
    from qwen3vl.processing import load_image

    console = Console(stderr=True, quiet=args.json)
    if not args.no_compile_cache:
        enable_persistent_cache(args.compile_cache)
    # Images load first: a bad file then fails in milliseconds instead of after the checkpoint.
    images = [load_image(path) for path in args.image]

    start = time.perf_counter()
    vlm = _load(args, console)
    load_seconds = time.perf_counter() - start
    console.print(f"loaded {vlm.checkpoint_dir} as {vlm.dtype} in {load_seconds:.1f} s", soft_wrap=True)

    sampling = Sampling.from_generation_config(
        vlm.checkpoint_dir, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    compiled_before = compilations()
    result = vlm.generate(args.prompt, images=images, system=args.system, max_new_tokens=args.max_new_tokens,
                          sampling=sampling, on_text=None if args.json else write)
    if args.json:
        print(json.dumps(_json_report(result, load_seconds), ensure_ascii=False))
        return 0

    sys.stdout.write("\n")
    console.print(_summary_line(result.generation, compilations() - compiled_before), soft_wrap=True)
    return 0


def _summary_line(generation, compiled: int) -> str:
    """Describe what was generated and how fast, for stderr."""
    count = len(generation.token_ids)
    speed = generation.decode_tokens_per_second
    decode = f"decode {speed:.1f} tokens/s" if math.isfinite(speed) else "decode speed not measured (under 3 tokens)"
    compile_note = f", {compiled} XLA compilations (counted in the times)" if compiled else ", nothing compiled"
    return (f"{count} token{'s' if count != 1 else ''} ({generation.stop_reason}); "
            f"prompt {generation.prompt_tokens} tokens, prefill {generation.prefill_seconds:.2f} s, "
            f"{decode}{compile_note}")


def _configure_logging() -> None:
    """Send warnings (an animated image, a JAX backend notice) to stderr as one line each.

    basicConfig does nothing when the root logger already has handlers, for example under pytest.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _configure_logging()
    try:
        return run(args)
    except (OSError, ValueError) as error:  # the library raises these with a message for the user
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # a bug or an error type the library does not translate
        if args.debug:
            raise
        print(f"error: unexpected {type(error).__name__}: {error} (run again with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_RUNTIME_ERROR


if __name__ == "__main__":
    sys.exit(main())
