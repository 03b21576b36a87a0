"""Bad input: each case ends in the result HF gives or in one clear error, never a traceback.

CASES is the table of user mistakes. Each case runs through the command line's `main` in this
process (a subprocess costs seconds of JAX import each), in a scratch working directory with
relative paths, so that messages read as a user would see them. docs/errors.md lists every
case with its exit status and message. test_case_matches_docs fails when the two drift, and
`python -m tests.test_errors` rewrites the doc from the code's current output.

A few cases also run as real subprocesses, and the Python API is tested for exception types and
for the checks that must run before the model does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from safetensors.numpy import load_file, save_file

from qwen3vl import Qwen3VL, Sampling, model
from qwen3vl import run as cli
from qwen3vl.config import ConfigError
from qwen3vl.inference import CheckpointNotFoundError
from qwen3vl.processing import ImageError, ImageProcessorConfig, load_image, preprocess_images
from qwen3vl.weights import CheckpointError
from tests.conftest import FIXTURE_BUILD, REPO_ROOT

DOCS = REPO_ROOT / "docs" / "errors.md"
TINY_TIED = FIXTURE_BUILD / "tiny-tied"
PIL_TOLERANCE = 1e-6
HUB_ID = "Qwen/Qwen3-VL-2B-Instruct"
# About 4000 tokens with the chat template; the tiny fixtures have 4096 positions.
LONG_PROMPT = "hello " * 3990


# --------------------------------------------------------------------------- bad files


def write_png_header(path: Path, width: int, height: int) -> None:
    """Write a PNG that declares width x height RGB pixels but contains no pixel data, as a bomb would."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * 1000 + width).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_truncated(path: Path, keep_fraction: float) -> None:
    """Save a noisy 64x80 image in the format of path's suffix, then cut the file short."""
    full = path.with_name("full" + path.suffix)
    PIL.Image.fromarray(noise(64, 80)).save(full)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def link_checkpoint(directory: Path, name: str, leave_out: tuple[str, ...] = ()) -> Path:
    """Make a checkpoint directory of symlinks to tiny-tied's files, leaving some out."""
    checkpoint = directory / name
    checkpoint.mkdir()
    for file in TINY_TIED.iterdir():
        if file.name not in leave_out:
            (checkpoint / file.name).symlink_to(file)
    return checkpoint


def edit_config(directory: Path, name: str, edit: Callable[[dict], None]) -> None:
    checkpoint = link_checkpoint(directory, name, leave_out=("config.json",))
    raw = json.loads((TINY_TIED / "config.json").read_text())
    edit(raw)
    (checkpoint / "config.json").write_text(json.dumps(raw))


def edit_tensors(directory: Path, name: str, edit: Callable[[dict], None]) -> None:
    checkpoint = link_checkpoint(directory, name, leave_out=("model.safetensors",))
    tensors = load_file(TINY_TIED / "model.safetensors")
    edit(tensors)
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})


# --------------------------------------------------------------------------- the table of cases


@dataclasses.dataclass(frozen=True)
class ErrorCase:
    name: str
    description: str  # the mistake, as the docs table shows it
    make: Callable[[Path], list[str]]  # creates the bad input in a directory, returns the CLI arguments
    expected_in_message: tuple[str, ...]  # values the message must name, independent of the docs
    environment: dict[str, str] | None = None  # set: run as a subprocess with these variables


def with_image(image: str, prepare: Callable[[Path], None] = lambda directory: None):
    """Return a case maker that prepares a bad image file and passes it to the tiny checkpoint."""

    def make(directory: Path) -> list[str]:
        prepare(directory)
        return ["--model", "model", "--image", image, "--prompt", "Describe this image."]

    return make


def with_model(model_dir: str, prepare: Callable[[Path], None] = lambda directory: None):
    def make(directory: Path) -> list[str]:
        prepare(directory)
        return ["--model", model_dir, "--prompt", "Hi"]

    return make


def with_options(*options: str, prompt: str = "Hi"):
    def make(directory: Path) -> list[str]:
        return ["--model", "model", "--prompt", prompt, *options]

    return make


CASES = [
    ErrorCase("image-missing", "image path does not exist", with_image("absent.jpg"), ("absent.jpg", "not found")),
    ErrorCase("image-directory", "image path is a directory",
              with_image("photos", lambda d: (d / "photos").mkdir()), ("photos", "directory")),
    ErrorCase("image-empty", "zero-byte image file",
              with_image("empty.jpg", lambda d: (d / "empty.jpg").write_bytes(b"")), ("empty.jpg", "0 bytes")),
    ErrorCase("image-truncated-png", "PNG cut to half its size",
              with_image("cut.png", lambda d: write_truncated(d / "cut.png", 0.5)), ("cut.png", "truncated")),
    ErrorCase("image-truncated-jpeg", "JPEG cut to 90% of its size",
              with_image("cut.jpg", lambda d: write_truncated(d / "cut.jpg", 0.9)), ("cut.jpg", "truncated")),
    ErrorCase("image-text-file", "text file named .jpg",
              with_image("notes.jpg", lambda d: (d / "notes.jpg").write_text("shopping list: eggs, milk")),
              ("notes.jpg", "not an image")),
    ErrorCase("image-bomb", "PNG that declares 30000x30000 pixels",
              with_image("bomb.png", lambda d: write_png_header(d / "bomb.png", 30000, 30000)),
              ("bomb.png", "900000000 pixels")),
    ErrorCase("image-aspect-ratio", "402x2 image, aspect ratio 201",
              with_image("strip.png", lambda d: PIL.Image.new("RGB", (402, 2)).save(d / "strip.png")),
              ("strip.png", "402x2", "ratio of 201;", "200")),
    ErrorCase("checkpoint-missing", "checkpoint directory does not exist", with_model("absent-model"),
              ("absent-model", "not found")),
    ErrorCase("checkpoint-no-config", "directory without config.json",
              with_model("empty-model", lambda d: (d / "empty-model").mkdir()), ("empty-model", "config.json")),
    ErrorCase("checkpoint-config-not-json", "config.json is not JSON",
              with_model("bad-config", lambda d: edit_json_text(d, "bad-config", '{"model_type": "qwen3_vl",')),
              ("bad-config/config.json", "not valid JSON")),
    ErrorCase("checkpoint-model-type", "unknown model_type",
              with_model("llava", lambda d: edit_config(d, "llava", lambda raw: raw.update(model_type="llava"))),
              ("'llava'", "qwen3_vl")),
    ErrorCase("checkpoint-missing-tensor", "a tensor is missing",
              with_model("no-norm", lambda d: edit_tensors(
                  d, "no-norm", lambda t: t.pop("model.visual.blocks.1.norm1.weight"))),
              ("missing (1): model.visual.blocks.1.norm1.weight",)),
    ErrorCase("checkpoint-misshaped-tensor", "a tensor has the wrong shape",
              with_model("wide-norm", lambda d: edit_tensors(
                  d, "wide-norm", lambda t: t.update({"model.language_model.norm.weight": np.ones(65, np.float32)}))),
              ("model.language_model.norm.weight", "(65,)", "(64,)")),
    ErrorCase("checkpoint-truncated", "model.safetensors cut to half its size",
              with_model("cut-weights", lambda d: cut_weights(d, "cut-weights")),
              ("cut-weights/model.safetensors", "truncated")),
    ErrorCase("checkpoint-no-tokenizer", "tokenizer.json is missing",
              with_model("no-tokenizer", lambda d: link_checkpoint(d, "no-tokenizer", ("tokenizer.json",))),
              ("tokenizer.json not found", "no-tokenizer")),
    ErrorCase("checkpoint-hub-offline", "Hub id with HF_HUB_OFFLINE=1", with_model(HUB_ID),
              (HUB_ID, "HF_HUB_OFFLINE=1"), environment={"HF_HUB_OFFLINE": "1"}),
    ErrorCase("prompt-empty", "prompt of spaces only", with_options(prompt="   "), ("--prompt is empty",)),
    ErrorCase("prompt-too-long", "4000-token prompt with --max-new-tokens 200",
              with_options("--max-new-tokens", "200", prompt=LONG_PROMPT), ("4096", "max_new_tokens=200")),
    ErrorCase("max-new-tokens-zero", "--max-new-tokens 0", with_options("--max-new-tokens", "0"),
              ("--max-new-tokens", "got 0")),
    ErrorCase("max-new-tokens-negative", "--max-new-tokens -5", with_options("--max-new-tokens=-5"),
              ("--max-new-tokens", "got -5")),
    ErrorCase("temperature-negative", "--temperature -0.5", with_options("--temperature=-0.5"),
              ("--temperature", "got -0.5")),
    ErrorCase("temperature-nan", "--temperature nan", with_options("--temperature", "nan"),
              ("--temperature", "got nan")),
    ErrorCase("top-p-zero", "--top-p 0", with_options("--top-p", "0"), ("--top-p", "got 0.0")),
    ErrorCase("top-p-above-one", "--top-p 1.5", with_options("--top-p", "1.5"), ("--top-p", "got 1.5")),
    ErrorCase("dtype-unknown", "--dtype int8", with_options("--dtype", "int8"), ("--dtype", "'int8'")),
]


def edit_json_text(directory: Path, name: str, text: str) -> None:
    checkpoint = link_checkpoint(directory, name, leave_out=("config.json",))
    (checkpoint / "config.json").write_text(text)


def cut_weights(directory: Path, name: str) -> None:
    checkpoint = link_checkpoint(directory, name, leave_out=("model.safetensors",))
    data = (TINY_TIED / "model.safetensors").read_bytes()
    (checkpoint / "model.safetensors").write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- running a case


@dataclasses.dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str

    def error_lines(self) -> list[str]:
        """The message as the user reads it: from the first 'error:' line to the end of stderr."""
        lines = self.stderr.rstrip("\n").splitlines()
        first = next(i for i, line in enumerate(lines) if "error:" in line)
        return lines[first:]


def run_in_process(argv: list[str], cwd: Path) -> Outcome:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            exit_code = cli.main(argv)
        except SystemExit as exit:  # argparse exits on a usage error
            exit_code = exit.code
    return Outcome(exit_code, stdout.getvalue(), stderr.getvalue())


def run_subprocess(argv: list[str], cwd: Path, environment: dict[str, str] | None = None) -> Outcome:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(environment or {})}
    result = subprocess.run([sys.executable, "-m", "qwen3vl.run", *argv], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    return Outcome(result.returncode, result.stdout, result.stderr)


def prepare_case(case: ErrorCase, directory: Path) -> list[str]:
    """Create the case's files in `directory`, with `model` linked to the tiny checkpoint."""
    (directory / "model").symlink_to(TINY_TIED)
    return case.make(directory)


def run_case(case: ErrorCase, directory: Path, argv: list[str]) -> Outcome:
    """Run a prepared case in process, or as a subprocess when it sets environment variables."""
    if case.environment is not None:
        # The Hub client reads HF_HUB_OFFLINE at import, so this case needs a fresh process.
        environment = {**case.environment, "HF_HOME": str(directory / "hf-home")}
        return run_subprocess(argv, directory, environment)
    return run_in_process(argv, directory)


def docs_row(case: ErrorCase, outcome: Outcome) -> str:
    """Render a case as a row of the docs table; lines of a long message are joined with <br>."""
    message = "<br>".join(f"`{line.strip()}`" for line in outcome.error_lines()).replace("|", "\\|")
    return f"| {case.name} | {case.description} | {outcome.exit_code} | {message} |"


DOCS_HEADER = """\
# Errors

What the command line prints for each kind of bad input, and its exit status: 1 for a runtime
error (a bad image, checkpoint or prompt), 2 for a usage error (an invalid option value). Every
error is on stderr, without a traceback unless `--debug` is given. stdout stays empty on an error,
with or without `--json`. The Python API raises the same messages, as `FileNotFoundError`,
`qwen3vl.processing.ImageError`, `qwen3vl.config.ConfigError`, `qwen3vl.weights.CheckpointError`,
`qwen3vl.inference.CheckpointNotFoundError` or `ValueError`.

Paths are relative because the cases run in a scratch directory. This table is checked by
`tests/test_errors.py`; `python -m tests.test_errors` rewrites it from the code's current output.

Images that HF accepts are loaded exactly as HF loads them. 1x1 and other tiny images are
resized up to min_pixels. CMYK, 16-bit and palette images with transparency become RGB, and the
EXIF orientation is applied. An animated GIF contributes its first frame, with a warning on
stderr. Two choices differ from HF:

- An image above Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`, 89,478,485
  pixels by default) is rejected. Pillow itself, and so HF, only warns up to twice that limit and
  then decodes the image. Loading and preprocessing a 10000x10000 PNG that way took 2.1 GB of
  peak host memory (measured with `load_image` and `preprocess_images` on a CPU machine). The
  model only receives max_pixels (16,777,216 for Qwen3-VL), so downscale such images first.
- An aspect ratio above 200 is rejected when the image is loaded, naming the file. HF rejects the
  same images later, in its preprocessing.

| case | bad input | exit status | stderr |
|---|---|---|---|
"""


def render_docs(rows: list[str]) -> str:
    return DOCS_HEADER + "\n".join(rows) + "\n"


def listing(directory: Path) -> dict[str, tuple[int, int]]:
    """Map each path under `directory` to (size, mtime in ns), without following symlinks."""
    entries = {}
    for path in sorted(directory.rglob("*")):
        status = path.lstat()
        entries[str(path.relative_to(directory))] = (status.st_size, status.st_mtime_ns)
    return entries


# --------------------------------------------------------------------------- the table against the code


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_matches_docs(case, tmp_path, tiny_tied):
    checkpoint_before = listing(tiny_tied)
    argv = prepare_case(case, tmp_path)
    before = listing(tmp_path)

    outcome = run_case(case, tmp_path, argv)

    message = "\n".join(outcome.error_lines())
    for value in case.expected_in_message:
        assert value in message, f"{case.name}: {value!r} not in {message!r}"
    assert outcome.exit_code in (1, 2)
    assert outcome.stdout == ""
    assert "Traceback" not in outcome.stderr
    assert sum("error:" in line for line in outcome.stderr.splitlines()) == 1
    assert docs_row(case, outcome) in DOCS.read_text().splitlines(), (
        f"docs/errors.md is out of date for {case.name}; run python -m tests.test_errors"
    )
    # A failed run writes nothing: no stray files here, in the Hub cache or in the checkpoint.
    assert listing(tmp_path) == before
    assert listing(tiny_tied) == checkpoint_before


def test_usage_errors_exit_2_runtime_errors_exit_1(tmp_path):
    usage = {"prompt-empty", "max-new-tokens-zero", "max-new-tokens-negative", "temperature-negative",
             "temperature-nan", "top-p-zero", "top-p-above-one", "dtype-unknown"}
    documented = {}
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.split(" | ")]
        if len(cells) >= 4 and cells[2].isdigit():
            documented[cells[0].lstrip("| ")] = int(cells[2])
    assert set(documented) == {case.name for case in CASES}
    for name, exit_code in documented.items():
        assert exit_code == (2 if name in usage else 1), name


# --------------------------------------------------------------------------- images against HF


@pytest.fixture(scope="module")
def hf_pil_processor(tiny_tied):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(TINY_TIED, backend="pil")


def hf_pixels(processor, path: Path):
    from transformers.image_utils import load_image as hf_load_image

    output = processor(images=[hf_load_image(str(path))], return_tensors="np")
    return output["pixel_values"], output["image_grid_thw"]


def write_animated_gif(path: Path) -> None:
    frames = [PIL.Image.fromarray(noise(40, 56)).convert("P"), PIL.Image.new("P", (56, 40), 3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)


def write_odd_image(kind: str, directory: Path) -> Path:
    """Write one image that HF loads, though it is unusual, and return its path."""
    if kind in ("1x1", "2x5", "31x31"):
        width, height = map(int, kind.split("x"))
        path = directory / f"{kind}.png"
        PIL.Image.fromarray(noise(height, width)).save(path)
    elif kind == "cmyk-jpeg":
        path = directory / "cmyk.jpg"
        PIL.Image.fromarray(noise(48, 64)).convert("CMYK").save(path, quality=95)
    elif kind == "16-bit-png":
        path = directory / "deep.png"
        # Values above 255 too, which Pillow's conversion to 8-bit RGB clips as HF's does.
        PIL.Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 11).astype(np.uint16)).save(path)
    elif kind == "palette-transparency":
        path = directory / "palette.png"
        PIL.Image.fromarray(noise(48, 64)).quantize(16).save(path, transparency=5)
    elif kind == "animated-gif":
        path = directory / "frames.gif"
        write_animated_gif(path)
    elif kind == "exif-rotated-jpeg":
        path = directory / "rotated.jpg"
        exif = PIL.Image.Exif()
        exif[0x0112] = 8  # Orientation: rotate 90 degrees counter-clockwise to display
        PIL.Image.fromarray(noise(48, 64)).save(path, exif=exif, quality=95)
    elif kind == "truncated-png-end":
        # Only the 12-byte IEND chunk is missing: the pixels are complete, and Pillow and HF load them.
        path = directory / "no-end.png"
        PIL.Image.fromarray(noise(48, 64)).save(path)
        path.write_bytes(path.read_bytes()[:-12])
    else:
        raise KeyError(kind)
    return path


ODD_IMAGES = ("1x1", "2x5", "31x31", "cmyk-jpeg", "16-bit-png", "palette-transparency", "animated-gif",
              "exif-rotated-jpeg", "truncated-png-end")


@pytest.mark.parametrize("kind", ODD_IMAGES)
def test_odd_image_matches_hf(kind, tmp_path, hf_pil_processor):
    path = write_odd_image(kind, tmp_path)
    expected_pixels, expected_grid = hf_pixels(hf_pil_processor, path)
    pixel_values, grid = preprocess_images([load_image(path)], ImageProcessorConfig.from_dir(TINY_TIED))
    assert np.array_equal(grid, expected_grid)
    assert pixel_values.shape == expected_pixels.shape
    assert np.abs(pixel_values - expected_pixels).max() <= PIL_TOLERANCE


@pytest.mark.parametrize(("kind", "grid"), [("1x1", [1, 16, 16]), ("2x5", [1, 26, 12]), ("31x31", [1, 16, 16])])
def test_tiny_images_resize_up(kind, grid, tmp_path):
    """The known min_pixels sizes: 65536 pixels at least, sides multiples of 32, aspect kept."""
    path = write_odd_image(kind, tmp_path)
    _, actual = preprocess_images([load_image(path)], ImageProcessorConfig.from_dir(TINY_TIED))
    assert actual.tolist() == [grid]


def test_animated_gif_warns_first_frame(tmp_path, caplog):
    path = write_odd_image("animated-gif", tmp_path)
    with caplog.at_level(logging.WARNING, logger="qwen3vl.processing"):
        image = load_image(path)
    assert "frames.gif has 2 frames; only the first frame is used" in caplog.text
    first = PIL.Image.open(path).convert("RGB")
    assert np.array_equal(np.asarray(image), np.asarray(first))


def test_exif_rotation_turns_image(tmp_path):
    path = write_odd_image("exif-rotated-jpeg", tmp_path)
    assert PIL.Image.open(path).size == (64, 48)
    assert load_image(path).size == (48, 64)


@pytest.mark.parametrize("name", [case.name for case in CASES if case.name.startswith("image-")])
def test_bad_image_fails_in_hf_too(name, tmp_path, hf_pil_processor):
    """Each image the CLI rejects, HF's load_image or processor rejects as well."""
    case = next(case for case in CASES if case.name == name)
    argv = prepare_case(case, tmp_path)
    path = tmp_path / argv[argv.index("--image") + 1]
    with pytest.raises((OSError, ValueError, PIL.Image.DecompressionBombError)):
        hf_pixels(hf_pil_processor, path)
    with pytest.raises((FileNotFoundError, ImageError)) as error:
        load_image(path)
    assert path.name in str(error.value)


def test_bomb_limit_rejects_what_hf_only_warns(tmp_path, monkeypatch, hf_pil_processor):
    """Between Pillow's limit and twice that, HF warns and decodes, and load_image rejects."""
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "large.png"
    PIL.Image.fromarray(noise(40, 40)).save(path)  # 1600 pixels: between 1000 and 2000
    with pytest.warns(PIL.Image.DecompressionBombWarning):
        hf_pixels(hf_pil_processor, path)
    with pytest.raises(ImageError, match="large.png is too large to decode safely"):
        load_image(path)

    small = tmp_path / "small.png"
    PIL.Image.fromarray(noise(30, 30)).save(small)  # 900 pixels: under the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(small).size == (30, 30)


def test_bomb_is_rejected_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    write_png_header(path, 30000, 30000)
    assert path.stat().st_size < 100
    with pytest.raises(ImageError, match="900000000 pixels"):
        load_image(path)


# --------------------------------------------------------------------------- the Python API


@pytest.fixture(scope="module")
def vlm(tiny_tied):
    return Qwen3VL.from_pretrained(TINY_TIED, dtype="float32")


API_CHECKPOINT_CASES = {
    "checkpoint-missing": CheckpointNotFoundError,
    "checkpoint-no-config": ConfigError,
    "checkpoint-config-not-json": ConfigError,
    "checkpoint-model-type": ConfigError,
    "checkpoint-missing-tensor": CheckpointError,
    "checkpoint-misshaped-tensor": CheckpointError,
    "checkpoint-truncated": CheckpointError,
    "checkpoint-no-tokenizer": FileNotFoundError,
}


@pytest.mark.parametrize("name", API_CHECKPOINT_CASES)
def test_from_pretrained_error_type(name, tmp_path):
    case = next(case for case in CASES if case.name == name)
    argv = prepare_case(case, tmp_path)
    checkpoint = tmp_path / argv[argv.index("--model") + 1]
    with pytest.raises(API_CHECKPOINT_CASES[name]) as error:
        Qwen3VL.from_pretrained(checkpoint, dtype="float32")
    assert checkpoint.name in str(error.value) or "tensors do not match" in str(error.value)


def test_from_pretrained_unknown_dtype():
    with pytest.raises(ValueError, match="unknown dtype 'int8'; choose one of float32, bfloat16, float16"):
        Qwen3VL.from_pretrained(TINY_TIED, dtype="int8")


def forbid_model_calls(monkeypatch) -> None:
    """Make the vision tower and prefill fail, so a check that runs too late shows up as that failure."""

    def called(*args, **kwargs):
        raise AssertionError("the model ran before the input check")

    monkeypatch.setattr(model, "encode_vision", called)
    monkeypatch.setattr(model, "prefill", called)


def test_long_prompt_fails_before_model(vlm, monkeypatch):
    forbid_model_calls(monkeypatch)
    with pytest.raises(ValueError, match="model's context of 4096") as error:
        vlm.generate(LONG_PROMPT, max_new_tokens=200)
    assert "(0 of them for images)" in str(error.value)


def test_long_prompt_with_image_counts_visual_tokens(vlm, monkeypatch, tmp_path):
    forbid_model_calls(monkeypatch)
    path = tmp_path / "photo.png"
    PIL.Image.fromarray(noise(256, 256)).save(path)  # 256x256 pixels: 16x16 patches, 64 visual tokens
    with pytest.raises(ValueError, match="64 of them for images"):
        vlm.generate(LONG_PROMPT, images=[path], max_new_tokens=200)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8"])
def test_bad_max_new_tokens(vlm, monkeypatch, value):
    forbid_model_calls(monkeypatch)
    with pytest.raises(ValueError, match="max_new_tokens must be"):
        vlm.generate("Hi", max_new_tokens=value)


@pytest.mark.parametrize("prompt", ["", "  \n"])
def test_empty_prompt(vlm, monkeypatch, prompt):
    forbid_model_calls(monkeypatch)
    with pytest.raises(ValueError, match="the prompt is empty"):
        vlm.generate(prompt)


def test_bad_image_fails_before_model(vlm, monkeypatch, tmp_path):
    forbid_model_calls(monkeypatch)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg is empty"):
        vlm.generate("Describe this image.", images=[tmp_path / "empty.jpg"])
    with pytest.raises(ImageError, match=r"images\[1\] is 402x2 pixels"):
        vlm.generate("Describe this image.", images=[PIL.Image.new("RGB", (64, 64)), PIL.Image.new("RGB", (402, 2))])


@pytest.mark.parametrize(("settings", "message"), [
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature must be >= 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be >= 0"),
])
def test_bad_sampling_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        Sampling(**settings)


# --------------------------------------------------------------------------- the CLI as a subprocess


def test_cli_bad_image_one_line_no_traceback(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "model").symlink_to(TINY_TIED)
    before = listing(tmp_path)
    argv = ["--model", "model", "--image", "empty.jpg", "--prompt", "Describe this image."]

    plain = run_subprocess(argv, tmp_path)
    assert plain.exit_code == 1
    assert plain.stdout == ""
    assert plain.stderr == "error: image file empty.jpg is empty (0 bytes); pass a complete image file\n"

    debug = run_subprocess([*argv, "--debug"], tmp_path)
    assert debug.exit_code == 1
    assert "Traceback" in debug.stderr
    assert "ImageError: image file empty.jpg is empty" in debug.stderr

    in_json = run_subprocess([*argv, "--json"], tmp_path)
    assert in_json.exit_code == 1
    assert in_json.stdout == ""
    assert in_json.stderr == plain.stderr
    assert listing(tmp_path) == before


def test_cli_usage_error_in_json_mode(tmp_path):
    outcome = run_subprocess(["--model", "model", "--prompt", "Hi", "--top-p", "1.5", "--json"], tmp_path)
    assert outcome.exit_code == 2
    assert outcome.stdout == ""
    assert outcome.stderr.splitlines()[-1] == "python -m qwen3vl.run: error: --top-p must be in (0, 1], got 1.5"
    assert list(tmp_path.iterdir()) == []


def test_cli_json_gif_warns_on_stderr(tmp_path):
    from transformers import AutoTokenizer

    write_animated_gif(tmp_path / "frames.gif")
    (tmp_path / "model").symlink_to(TINY_TIED)
    before = listing(tmp_path)
    outcome = run_subprocess(["--model", "model", "--image", "frames.gif", "--prompt", "Describe this image.",
                              "--max-new-tokens", "6", "--temperature", "0", "--dtype", "float32", "--json"],
                             tmp_path)
    assert outcome.exit_code == 0, outcome.stderr
    assert "WARNING: frames.gif has 2 frames; only the first frame is used" in outcome.stderr

    report = json.loads(outcome.stdout)  # the whole of stdout is one JSON object
    assert outcome.stdout.count("\n") == 1
    assert set(report) == {"text", "token_ids", "stop_reason", "prompt_tokens", "generated_tokens", "timings",
                           "decode_tokens_per_second", "compilations"}
    assert set(report["timings"]) == {"load_seconds", "prefill_seconds", "first_chunk_seconds", "decode_seconds"}
    assert report["generated_tokens"] == len(report["token_ids"]) <= 6
    assert report["stop_reason"] in ("stop_token", "max_new_tokens")
    assert report["text"] == AutoTokenizer.from_pretrained(TINY_TIED).decode(
        report["token_ids"], skip_special_tokens=True)
    # The 40x56 GIF resizes up to 224x320: 7x10 windows of 2x2 patches are 70 visual tokens.
    assert report["prompt_tokens"] > 70
    assert listing(tmp_path) == before


# --------------------------------------------------------------------------- rewriting the docs


def write_docs() -> None:
    """Run every case and rewrite docs/errors.md from the messages the code prints now."""
    rows = []
    for case in CASES:
        with tempfile.TemporaryDirectory() as scratch:
            directory = Path(scratch)
            rows.append(docs_row(case, run_case(case, directory, prepare_case(case, directory))))
    DOCS.write_text(render_docs(rows))
    print(f"wrote {DOCS} with {len(rows)} cases")


if __name__ == "__main__":
    write_docs()
