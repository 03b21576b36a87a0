"""Image preprocessing, tokenization and chat prompts, identical to transformers 5.25's Qwen3-VL.

The reference is transformers 5.25.0 with its PIL image backend (`Qwen2VLImageProcessorPil`),
`Qwen3VLProcessor` and `apply_chat_template`. The steps and their order are reproduced
exactly, because every rounding difference changes the model's inputs:

    load_image          EXIF orientation, then Pillow's convert("RGB")
    preprocess_images   transparency onto white, smart_resize, BICUBIC on uint8, x/255,
                        (x - mean) / std, patches in merge-window order
    ChatTemplate        the checkpoint's Jinja template in a sandbox configured like HF's
    encode_prompt       each <|image_pad|> expanded to the image's token count, then BPE

Shape legend: N images, P patches (all images together), D = 3 * temporal * patch * patch,
S prompt tokens.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import jinja2.nodes
import numpy as np
import PIL.Image
import PIL.ImageOps
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Values of PromptInputs.token_types, the same as HF's mm_token_type_ids.
TOKEN_TYPE_TEXT = 0
TOKEN_TYPE_IMAGE = 1
TOKEN_TYPE_VIDEO = 2

# HF's smart_resize raises above this ratio of the longer to the shorter image side.
MAX_ASPECT_RATIO = 200

# PIL's resampling filter id for BICUBIC, the only filter Qwen3-VL checkpoints use.
PIL_BICUBIC = int(PIL.Image.Resampling.BICUBIC)

# Special tokens that HF passes to every chat template as variables (its special_tokens_map).
TEMPLATE_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


# --------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """Image preprocessing settings, parsed from a checkpoint's preprocessor_config.json."""

    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 65536
    max_pixels: int = 16777216
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        for name in ("patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must not exceed max_pixels ({self.max_pixels})")
        for name in ("image_mean", "image_std"):
            if len(getattr(self, name)) != 3:
                raise ValueError(f"{name} must have 3 values (R, G, B), got {getattr(self, name)!r}")
        if any(std == 0 for std in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {self.image_std!r}")

    @property
    def factor(self) -> int:
        """Side length in pixels of one merge window. Resized sides are multiples of it."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length D of one pixel_values row: channels x temporal x patch x patch."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_dir(cls, checkpoint_dir: str | os.PathLike) -> ImageProcessorConfig:
        """Parse `checkpoint_dir`/preprocessor_config.json. Keys that are absent take the defaults.

        Pixel bounds come from size.shortest_edge / size.longest_edge. Top-level min_pixels /
        max_pixels (older Qwen2-VL files) override them, as in HF's image processor.
        """
        path = Path(checkpoint_dir) / "preprocessor_config.json"
        if not path.is_file():
            raise FileNotFoundError(f"preprocessor_config.json not found in {checkpoint_dir}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); download the checkpoint's file again") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must contain a JSON object, got a {type(raw).__name__}")
        _reject_unsupported_steps(raw, path)

        defaults = cls()
        size = raw.get("size") or {}
        min_pixels = _first_present(raw.get("min_pixels"), size.get("shortest_edge"), defaults.min_pixels)
        max_pixels = _first_present(raw.get("max_pixels"), size.get("longest_edge"), defaults.max_pixels)
        return cls(
            patch_size=raw.get("patch_size", defaults.patch_size),
            temporal_patch_size=raw.get("temporal_patch_size", defaults.temporal_patch_size),
            merge_size=raw.get("merge_size", defaults.merge_size),
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            image_mean=tuple(raw.get("image_mean", defaults.image_mean)),
            image_std=tuple(raw.get("image_std", defaults.image_std)),
            rescale_factor=raw.get("rescale_factor", defaults.rescale_factor),
        )


def _first_present(*values):
    return next(value for value in values if value is not None)


def _reject_unsupported_steps(raw: Mapping, path: Path) -> None:
    # Qwen3-VL checkpoints always resize, rescale, normalize and convert to RGB with BICUBIC.
    # A file that turns a step off would silently get different pixels here, so it is rejected.
    for step in ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb"):
        if raw.get(step) is False:
            raise ValueError(f"{path} sets {step}=false; this library always applies that step")
    resample = raw.get("resample", PIL_BICUBIC)
    if resample != PIL_BICUBIC:
        raise ValueError(f"{path} sets resample={resample!r}; only BICUBIC ({PIL_BICUBIC}) is supported")


class ImageError(ValueError):
    """An image file that cannot be decoded, or whose size the preprocessing rejects."""


def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    """Read an image file the way `transformers.image_utils.load_image` does.

    Applies the EXIF orientation, then Pillow's convert("RGB"). As in HF, that conversion drops
    an alpha channel instead of compositing it. Pillow keeps a palette or grey-level
    transparency key in `info`, so preprocess_images later paints those pixels white, as HF does.
    Animated files contribute their first frame only, with a logged warning.

    Raises FileNotFoundError for a missing file and ImageError for an empty, unreadable,
    truncated or oversized file, or an aspect ratio above 200 (which HF's preprocessing also
    rejects).

    NOTE: HF only warns for an image between PIL.Image.MAX_IMAGE_PIXELS (89,478,485 by default)
    and twice that, and decodes it. This function rejects it, because decoding and resizing such
    an image took 2.1 GB of peak host memory for 10000x10000 pixels, and the model only
    receives max_pixels.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}; check the path and the working directory")
    if path.is_dir():
        raise ImageError(f"image path {path} is a directory, not a regular file; pass the path of an image file")
    if not path.is_file():
        raise ImageError(f"image path {path} is not a regular file; pass the path of an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"image file {path} is empty (0 bytes); pass a complete image file")

    with open(path, "rb") as handle:
        image = _decode_first_frame(handle, path)
    check_aspect_ratio(image.size, str(path))
    return image


def _decode_first_frame(handle, path: Path) -> PIL.Image.Image:
    """Decode an open image file to RGB with its EXIF orientation applied, translating Pillow's errors."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that. Both are rejected.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(handle)
        if getattr(image, "n_frames", 1) > 1:
            logger.warning("%s has %d frames; only the first frame is used", path, image.n_frames)
        # convert() decodes the pixels, so truncated or corrupt data fails here.
        return PIL.ImageOps.exif_transpose(image).convert("RGB")
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError) as error:
        raise ImageError(
            f"image {path} is too large to decode safely ({error}); downscale it first, for example to "
            "at most 4096 pixels on each side"
        ) from error
    except PIL.UnidentifiedImageError as error:
        raise ImageError(
            f"{path} is not an image that Pillow can read; pass a PNG, JPEG, GIF, WebP or other image file"
        ) from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # what Pillow's decoders raise on bad data
        raise ImageError(
            f"cannot decode image {path} (Pillow: {error}); the file is damaged or incomplete, "
            "so export or download it again"
        ) from error


def check_aspect_ratio(size: tuple[int, int], source: str) -> None:
    """Raise ImageError for an empty image or one whose sides differ by more than MAX_ASPECT_RATIO.

    `size` is (width, height) as Pillow gives it, and `source` names the image in the message.
    HF's smart_resize raises for the same images, but only later and without naming them.
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"image {source} is {width}x{height} pixels; both sides must be positive")
    aspect_ratio = max(width, height) / min(width, height)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image {source} is {width}x{height} pixels, an aspect ratio of {aspect_ratio:.6g}; Qwen3-VL's "
            f"preprocessing accepts at most {MAX_ASPECT_RATIO}, so crop or pad the image to a squarer shape"
        )


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Return the (height, width) that HF's Qwen2-VL smart_resize picks for an image.

    Both sides become multiples of `factor`, and the aspect ratio is kept as closely as that
    allows. The area is scaled into [min_pixels, max_pixels], but rounding to multiples of
    `factor` (never below `factor`) can leave it slightly outside with tight bounds.
    Raises ValueError for non-positive sides and for an aspect ratio above 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image sides must be positive, got height={height}, width={width}")
    aspect_ratio = max(height, width) / min(height, width)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image aspect ratio {aspect_ratio:.6g} ({width}x{height}) exceeds the maximum of "
            f"{MAX_ASPECT_RATIO}; crop or pad the image first"
        )

    # Python's round() rounds halves to even, as HF's does, and the float expressions below keep
    # HF's operation order so that borderline sizes round the same way.
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def _to_rgb_array(image: PIL.Image.Image) -> np.ndarray:
    """Convert to an (H, W, 3) uint8 array like HF's convert_to_rgb, painting transparency white."""
    has_transparency = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_transparency:
        return np.asarray(image.convert("RGB"))
    rgba = image.convert("RGBA")
    white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(PIL.Image.alpha_composite(white, rgba).convert("RGB"))


def _resize_and_normalize(image: PIL.Image.Image, cfg: ImageProcessorConfig) -> np.ndarray:
    """Return the normalized (3, H', W') float32 image at its smart_resize size."""
    pixels = _to_rgb_array(image)
    height, width = pixels.shape[:2]
    new_height, new_width = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)

    # HF's PIL backend resizes the uint8 image, so the result is rounded to integers before
    # scaling. Resizing floats instead would differ by up to half a grey level.
    resized = PIL.Image.fromarray(pixels).resize((new_width, new_height), resample=PIL.Image.Resampling.BICUBIC)

    # HF multiplies in float64 and casts to float32, then normalizes in float32.
    scaled = (np.asarray(resized).astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    normalized = (scaled - mean) / std
    return normalized.transpose(2, 0, 1)


def patchify(frames: np.ndarray, cfg: ImageProcessorConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Cut frames into flattened patches in the order the vision tower expects.

    Args:
        frames: (F, 3, H, W) float32 with F a multiple of temporal_patch_size and H, W
            multiples of patch_size * merge_size. An image is its one frame repeated.

    Returns:
        patches (grid_t * grid_h * grid_w, D), each row laid out as (C, T, patch, patch), and
        (grid_t, grid_h, grid_w). Rows run over merge windows in raster order, and the
        merge_size**2 patches of one window are consecutive, also in raster order.
    """
    num_frames, channels, height, width = frames.shape
    t, p, m = cfg.temporal_patch_size, cfg.patch_size, cfg.merge_size
    if num_frames % t or height % (p * m) or width % (p * m):
        raise ValueError(
            f"frames of shape {frames.shape} do not tile into {t}x{p}x{p} patches and {m}x{m} merge windows"
        )
    grid_t, grid_h, grid_w = num_frames // t, height // p, width // p

    blocks = frames.reshape(grid_t, t, channels, grid_h // m, m, p, grid_w // m, m, p)
    # -> (grid_t, window row, window column, row in window, column in window, C, T, patch, patch)
    blocks = blocks.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = blocks.reshape(grid_t * grid_h * grid_w, channels * t * p * p)
    return patches, (grid_t, grid_h, grid_w)


def preprocess_images(images: Sequence[PIL.Image.Image], cfg: ImageProcessorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Turn images into the vision tower's inputs, as HF's PIL image backend does.

    Returns:
        pixel_values (P, D) float32, the images' patches one image after another, and
        image_grid_thw (N, 3) int64, each image's (1, grid_h, grid_w) in patches.
    """
    if not images:
        raise ValueError("preprocess_images needs at least one image")
    all_patches, grids = [], []
    for index, image in enumerate(images):
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"images[{index}] is a {type(image).__name__}, expected a PIL.Image.Image")
        normalized = _resize_and_normalize(image, cfg)
        # A still image is one temporal patch: the frame repeated temporal_patch_size times.
        frames = np.repeat(normalized[None], cfg.temporal_patch_size, axis=0)
        patches, grid = patchify(frames, cfg)
        all_patches.append(patches)
        grids.append(grid)
    return np.concatenate(all_patches, axis=0), np.asarray(grids, dtype=np.int64)


# --------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """The checkpoint's BPE tokenizer (tokenizer.json) with HF's encode and decode settings."""

    def __init__(self, backend: tokenizers.Tokenizer):
        self.backend = backend

    @classmethod
    def from_dir(cls, checkpoint_dir: str | os.PathLike) -> Tokenizer:
        path = Path(checkpoint_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"tokenizer.json not found in {checkpoint_dir}; copy it from the checkpoint's Hub repository, "
                "since this library reads only the fast-tokenizer file"
            )
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the tokenizers library raises plain Exception for a malformed file
            raise ValueError(f"cannot parse {path}: {error}; download the checkpoint's tokenizer.json again") from error
        return cls(backend)

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Tokenize `text`. Special tokens written in it, such as <|im_start|>, become their ids.

        No BOS or EOS is added, because Qwen's tokenizer_config sets add_bos_token false and has
        no BOS, and the chat template writes every control token itself.
        """
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Detokenize `ids`. With skip_special_tokens, tokens marked special (<|im_end|>, ...) are dropped."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_id(self, token: str) -> int:
        """Return the id of a token string, e.g. "<|im_end|>"."""
        token_id = self.backend.token_to_id(token)
        if token_id is None:
            raise ValueError(
                f"token {token!r} is not in the tokenizer's vocabulary; check the checkpoint's tokenizer.json"
            )
        return token_id


class StreamDecoder:
    """Incremental detokenizer: returns text as soon as it is complete.

    Byte-level BPE tokens can end inside a multi-byte UTF-8 character, and decoding such a
    prefix yields U+FFFD. push() keeps text back while the decoded tail ends with U+FFFD, so it
    never returns half a character. The concatenation of all push() results and flush() equals
    tokenizer.decode(all ids) for decoders that turn each token into bytes on its own, such as
    Qwen's byte-level decoder. Each push decodes only the tokens not yet returned, with the
    previously returned piece as context.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._prefix_start = 0  # first id of the context decoded together with new ids
        self._prefix_end = 0  # ids before this index have been returned as text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one token id and return the text it completes, or "" while a character is unfinished."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._ids[self._prefix_start : self._prefix_end])
        full_text = self._decode(self._ids[self._prefix_start :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        self._prefix_start, self._prefix_end = self._prefix_end, len(self._ids)
        return full_text[len(prefix_text) :]

    def flush(self) -> str:
        """Return the text still held back (possibly ending in U+FFFD) and start a new stream."""
        prefix_text = self._decode(self._ids[self._prefix_start : self._prefix_end])
        full_text = self._decode(self._ids[self._prefix_start :])
        self._ids, self._prefix_start, self._prefix_end = [], 0, 0
        return full_text[len(prefix_text) :]


# --------------------------------------------------------------------------- chat prompts

# Qwen3-VL Instruct's format for system, user and assistant turns with text, image and video
# items, used when a checkpoint ships no chat template. Tools and reasoning are not covered.
BUILTIN_CHAT_TEMPLATE = """\
{%- for message in messages %}
{{- '<|im_start|>' + message['role'] + '\\n' }}
{%- if message['content'] is string %}
{{- message['content'] }}
{%- else %}
{%- for item in message['content'] %}
{%- if item['type'] == 'image' or 'image' in item or 'image_url' in item %}
{{- '<|vision_start|><|image_pad|><|vision_end|>' }}
{%- elif item['type'] == 'video' or 'video' in item %}
{{- '<|vision_start|><|video_pad|><|vision_end|>' }}
{%- elif 'text' in item %}
{{- item['text'] }}
{%- endif %}
{%- endfor %}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


class _GenerationBlock(jinja2.ext.Extension):
    """Accept {% generation %}...{% endgeneration %}, which HF templates use to mark assistant text.

    HF records where the block's output lands in order to build an assistant-token mask. This
    library needs no mask, so the block renders its body unchanged.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller) -> str:
        return caller()


def _raise_template_error(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates need plain JSON, as in HF.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format_string: str) -> str:
    return datetime.now().strftime(format_string)


def _make_jinja_environment() -> ImmutableSandboxedEnvironment:
    """Build a Jinja environment configured like transformers 5.25's chat template rendering."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_template_error
    environment.globals["strftime_now"] = _strftime_now
    return environment


def _read_template_source(checkpoint_dir: Path) -> str | None:
    """Return the chat template the way HF looks for it, or None when the checkpoint has none."""
    jinja_path = checkpoint_dir / "chat_template.jinja"
    if jinja_path.is_file():
        return jinja_path.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = checkpoint_dir / name
        if not path.is_file():
            continue
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):
            # Several named templates: HF uses the one named "default".
            named = {entry["name"]: entry["template"] for entry in template}
            if "default" not in named:
                raise ValueError(f"{path} lists chat templates {sorted(named)} but none named 'default'")
            template = named["default"]
        if template:
            return template
    return None


def _read_special_tokens(checkpoint_dir: Path) -> dict[str, str]:
    """Return the special tokens that HF passes to the template, from tokenizer_config.json."""
    path = checkpoint_dir / "tokenizer_config.json"
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text(encoding="utf-8"))
    special_tokens = {}
    for name in TEMPLATE_SPECIAL_TOKENS:
        token = raw.get(name)
        if isinstance(token, dict):  # older files store AddedToken fields
            token = token.get("content")
        if isinstance(token, str):
            special_tokens[name] = token
    return special_tokens


class ChatTemplate:
    """A compiled chat template, loaded once per checkpoint."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None):
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self._template = _make_jinja_environment().from_string(source)

    @classmethod
    def from_dir(cls, checkpoint_dir: str | os.PathLike) -> ChatTemplate:
        """Load chat_template.jinja, else chat_template.json, else tokenizer_config.json's template.

        Falls back to BUILTIN_CHAT_TEMPLATE, with a log message, when none of them has one.
        """
        checkpoint_dir = Path(checkpoint_dir)
        if not checkpoint_dir.is_dir():
            raise FileNotFoundError(f"checkpoint directory not found: {checkpoint_dir}")
        source = _read_template_source(checkpoint_dir)
        if source is None:
            logger.info("%s has no chat template; using the built-in Qwen3-VL Instruct format", checkpoint_dir)
            source = BUILTIN_CHAT_TEMPLATE
        return cls(source, _read_special_tokens(checkpoint_dir))

    def render(self, messages: Sequence[Mapping], add_generation_prompt: bool = True, **variables) -> str:
        """Render `messages`. Extra `variables` (e.g. add_vision_id=True) are passed to the template."""
        context = {**self.special_tokens, "tools": None, "documents": None, **variables}
        return self._template.render(messages=list(messages), add_generation_prompt=add_generation_prompt, **context)


def build_messages(prompt: str, num_images: int, system: str | None = None) -> list[dict]:
    """Build one user turn in HF's content-item format: the images first, then the text.

    An optional system turn comes first. Image items carry no pixels because the template only
    needs their position.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": prompt}]
    messages.append({"role": "user", "content": content})
    return messages


def render_chat(
    checkpoint_dir_or_template: str | os.PathLike | ChatTemplate,
    messages: Sequence[Mapping],
    add_generation_prompt: bool = True,
) -> str:
    """Render `messages` with a ChatTemplate or with the template of a checkpoint directory.

    Passing a directory compiles its template on every call. Keep a ChatTemplate to reuse it.
    """
    template = checkpoint_dir_or_template
    if not isinstance(template, ChatTemplate):
        template = ChatTemplate.from_dir(template)
    return template.render(messages, add_generation_prompt=add_generation_prompt)


def encode_prompt(
    tokenizer: Tokenizer, text: str, image_grid_thw: np.ndarray | None, merge_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Expand image placeholders and tokenize a rendered prompt.

    The k-th <|image_pad|> in `text` becomes grid_thw[k].prod() // merge_size**2 copies, one per
    visual token. For example, a (1, 16, 24) grid with merge_size 2 expands to 96 copies.

    Returns:
        input_ids (S,) int32 and token_types (S,) int8: TOKEN_TYPE_IMAGE at <|image_pad|>,
        TOKEN_TYPE_VIDEO at <|video_pad|>, TOKEN_TYPE_TEXT elsewhere.
    """
    grids = np.zeros((0, 3), dtype=np.int64) if image_grid_thw is None else np.asarray(image_grid_thw)
    if grids.ndim != 2 or grids.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape (num_images, 3), got {grids.shape}")
    pieces = text.split(IMAGE_PAD)
    num_placeholders = len(pieces) - 1
    if num_placeholders != len(grids):
        raise ValueError(
            f"the number of {IMAGE_PAD} placeholders in the prompt ({num_placeholders}) differs from the "
            f"number of images ({len(grids)}); pass one image per placeholder"
        )

    merge_area = merge_size**2
    expanded = [pieces[0]]
    for grid, piece in zip(grids, pieces[1:]):
        num_patches = int(np.prod(grid))
        if num_patches % merge_area:
            raise ValueError(f"image grid {grid.tolist()} does not divide into {merge_size}x{merge_size} merge windows")
        expanded.append(IMAGE_PAD * (num_patches // merge_area))
        expanded.append(piece)

    input_ids = np.asarray(tokenizer.encode("".join(expanded)), dtype=np.int32)
    token_types = np.full(input_ids.shape, TOKEN_TYPE_TEXT, dtype=np.int8)
    token_types[input_ids == tokenizer.token_id(IMAGE_PAD)] = TOKEN_TYPE_IMAGE
    token_types[input_ids == tokenizer.token_id(VIDEO_PAD)] = TOKEN_TYPE_VIDEO
    return input_ids, token_types


@dataclasses.dataclass(frozen=True)
class PromptInputs:
    """Model inputs for one prompt. The pixel fields are None for a text-only prompt."""

    input_ids: np.ndarray  # (S,) int32
    token_types: np.ndarray  # (S,) int8, HF's mm_token_type_ids: 0 text, 1 image, 2 video
    pixel_values: np.ndarray | None  # (P, D) float32
    image_grid_thw: np.ndarray | None  # (N, 3) int64


class Processor:
    """Prompt text and images to model inputs, as HF's Qwen3VLProcessor with apply_chat_template."""

    def __init__(self, image_config: ImageProcessorConfig, tokenizer: Tokenizer, chat_template: ChatTemplate):
        self.image_config = image_config
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    @classmethod
    def from_dir(cls, checkpoint_dir: str | os.PathLike) -> Processor:
        return cls(
            ImageProcessorConfig.from_dir(checkpoint_dir),
            Tokenizer.from_dir(checkpoint_dir),
            ChatTemplate.from_dir(checkpoint_dir),
        )

    def __call__(
        self, prompt: str, images: Sequence[PIL.Image.Image] = (), system: str | None = None
    ) -> PromptInputs:
        """Render a one-turn chat (images before the text) with the generation prompt, and encode it."""
        text = self.chat_template.render(build_messages(prompt, len(images), system), add_generation_prompt=True)
        pixel_values = image_grid_thw = None
        if images:
            pixel_values, image_grid_thw = preprocess_images(images, self.image_config)
        input_ids, token_types = encode_prompt(self.tokenizer, text, image_grid_thw, self.image_config.merge_size)
        return PromptInputs(input_ids, token_types, pixel_values, image_grid_thw)
