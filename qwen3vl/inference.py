"""The Python API: load a checkpoint once, then generate text for prompts with images.

    from qwen3vl import Qwen3VL

    vlm = Qwen3VL.from_pretrained("path/to/Qwen3-VL-2B-Instruct", dtype="bfloat16")
    result = vlm.generate("Describe this image.", images=["photo.jpg"], max_new_tokens=64)
    print(result.text)
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import PIL.Image

from qwen3vl.config import ModelConfig
from qwen3vl.generate import Generation, Sampling, check_max_new_tokens, generate, stop_token_ids
from qwen3vl.processing import Processor, StreamDecoder, check_aspect_ratio, load_image
from qwen3vl.weights import DTYPES, load_params

logger = logging.getLogger(__name__)


class CheckpointNotFoundError(FileNotFoundError):
    """A --model value that is neither a local checkpoint directory nor a reachable Hub id."""


def default_dtype() -> str:
    """Pick float32 on CPUs and bfloat16 on GPUs and TPUs.

    On a CPU, float32 decodes about as fast as bfloat16 with XLA (measured at the 2B shape), and
    its greedy output is the one the tests prove equal to HF's. Accelerators have fast bfloat16
    units, and bfloat16 halves the memory traffic there.
    """
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def resolve_checkpoint(model: str | os.PathLike) -> Path:
    """Return a local checkpoint directory for a path or a HuggingFace Hub id like 'Qwen/Qwen3-VL-2B-Instruct'."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointNotFoundError(f"{path} is a file; pass the checkpoint directory that contains config.json")
    text = str(model)
    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointNotFoundError(
            f"checkpoint directory not found: {path}; pass a directory that contains config.json, "
            "or a Hub id such as Qwen/Qwen3-VL-2B-Instruct"
        )
    return _download(text)


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors as hub_errors
    except ImportError as error:
        raise CheckpointNotFoundError(
            f"{repo_id!r} is not a local directory, and downloading it from the Hub needs huggingface_hub: "
            "pip install 'qwen3vl-jax[hub]', or download the checkpoint yourself and pass its directory"
        ) from error
    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt"]
    not_local = f"{repo_id!r} is not a local directory"
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))
    except hub_errors.LocalEntryNotFoundError as error:
        # Raised both with HF_HUB_OFFLINE=1 and when the Hub cannot be reached.
        reason = ("downloads are off (HF_HUB_OFFLINE=1)" if huggingface_hub.constants.HF_HUB_OFFLINE
                  else "the HuggingFace Hub cannot be reached")
        raise CheckpointNotFoundError(
            f"{not_local}, {reason}, and the Hub cache has no copy of it; pass a local checkpoint "
            "directory, or download it on a machine with network access"
        ) from error
    except hub_errors.RepositoryNotFoundError as error:  # also gated and private repositories
        raise CheckpointNotFoundError(
            f"{not_local}, and the HuggingFace Hub has no repository {repo_id!r} that you can access; "
            "check the id, or log in with `hf auth login` for a gated or private repository"
        ) from error
    except (hub_errors.HfHubHTTPError, OSError) as error:
        raise CheckpointNotFoundError(
            f"{not_local}, and downloading it from the HuggingFace Hub failed ({type(error).__name__}: "
            f"{error}); check the id and the network connection, or pass a local checkpoint directory"
        ) from error


def _prepare_image(image: str | os.PathLike | PIL.Image.Image, index: int) -> PIL.Image.Image:
    """Load an image path, or check an image already in memory, so that bad input fails before the model runs."""
    if isinstance(image, PIL.Image.Image):
        check_aspect_ratio(image.size, f"images[{index}]")
        return image
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"images[{index}] is a {type(image).__name__}; pass a file path or a PIL.Image.Image")
    return load_image(image)


@dataclasses.dataclass
class Result:
    text: str
    generation: Generation

    @property
    def token_ids(self) -> list[int]:
        return self.generation.token_ids


class Qwen3VL:
    """A loaded checkpoint: config, parameters on the default device, processor and stop ids."""

    def __init__(self, checkpoint_dir: Path, config: ModelConfig, params, processor: Processor, dtype: str):
        self.checkpoint_dir = checkpoint_dir
        self.config = config
        self.params = params
        self.processor = processor
        self.dtype = dtype
        self.stop_ids = stop_token_ids(checkpoint_dir, processor.tokenizer)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, dtype: str | None = None,
                        progress: Callable[[int, int], None] | None = None) -> Qwen3VL:
        """Load a checkpoint directory (or Hub id) with weights cast to `dtype` (default: default_dtype())."""
        dtype = dtype or default_dtype()
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        checkpoint_dir = resolve_checkpoint(model)
        config = ModelConfig.from_dir(checkpoint_dir)
        processor = Processor.from_dir(checkpoint_dir)
        params = load_params(checkpoint_dir, config, dtype, progress)
        return cls(checkpoint_dir, config, params, processor, dtype)

    def generate(
        self,
        prompt: str,
        images: Sequence[str | os.PathLike | PIL.Image.Image] = (),
        system: str | None = None,
        max_new_tokens: int = 128,
        sampling: Sampling | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Result:
        """Answer one user turn; `on_text` receives the answer piece by piece as it is generated.

        Raises FileNotFoundError or ImageError for a bad image, and ValueError for an empty prompt,
        bad settings or a prompt that does not fit the model's context. All of these are raised
        before the model runs.
        """
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"the prompt is empty ({prompt!r}); pass the question or instruction as text")
        check_max_new_tokens(max_new_tokens)
        pictures = [_prepare_image(image, index) for index, image in enumerate(images)]
        inputs = self.processor(prompt, pictures, system=system)
        sampling = sampling or Sampling.from_generation_config(self.checkpoint_dir)

        decoder = StreamDecoder(self.processor.tokenizer)
        pieces = []

        def on_token(token_id: int) -> None:
            piece = decoder.push(token_id)
            if piece:
                pieces.append(piece)
                if on_text is not None:
                    on_text(piece)

        generation = generate(
            self.params, self.config, inputs.input_ids, inputs.token_types, inputs.pixel_values,
            inputs.image_grid_thw, max_new_tokens, sampling, self.stop_ids, on_token,
        )
        tail = decoder.flush()
        if tail:
            pieces.append(tail)
            if on_text is not None:
                on_text(tail)
        return Result("".join(pieces), generation)
