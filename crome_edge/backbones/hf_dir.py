"""Load a local Hugging Face checkpoint directory as a CromeBackbone: detect the architecture from config.json,
refuse what is not supported in one line, load BLIP-2 / InstructBLIP (decoder-only LLM) here and LLaVA /
SmolVLM / Idefics3 through hf_vlm.py."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer

from crome_edge.backbones.base import CLIP_MEAN, CLIP_STD, CromeBackbone
from crome_edge.backbones.hf_vlm import VLM_ARCHITECTURES, load_hf_vlm, quiet_progress, read_weight_index
from crome_edge.backbones.tiny import from_instructblip_model
from crome_edge.errors import CromeError
from crome_runtime.prompt import PromptTemplate
from crome_runtime import input_files

if TYPE_CHECKING:
    from transformers import PretrainedConfig

SUPPORTED_ARCHITECTURES = ("blip-2", "instructblip", *VLM_ARCHITECTURES)
SUPPORTED_NAMES = "BLIP-2 (blip-2), InstructBLIP (instructblip), LLaVA (llava), SmolVLM/Idefics3 (smolvlm, idefics3)"
DECODER_ONLY_LLMS = ("llama", "opt", "mistral", "qwen2")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def load_hf_dir(path: Path, prompt: PromptTemplate | None = None) -> CromeBackbone:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CromeError(f"{path} is not a Hugging Face model directory (no config.json)")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise CromeError(f"{config_path} names no model_type: not a Hugging Face model config (crome-edge loads "
                         f"{SUPPORTED_NAMES})")
    if model_type not in SUPPORTED_ARCHITECTURES:
        architecture = ", ".join(map(str, config.get("architectures") or [])) or model_type
        raise CromeError(f"{path}: unsupported architecture {model_type!r} ({architecture:.80}); crome-edge loads "
                         f"{SUPPORTED_NAMES} checkpoints; Qwen2-VL, Florence-2, PaliGemma and other families are not "
                         "supported yet")
    text_config = config.get("text_config", {})
    default_llm = "opt" if model_type in ("blip-2", "instructblip") else "llama"  # the transformers config defaults
    llm_type = text_config.get("model_type", default_llm) if isinstance(text_config, dict) else None
    if llm_type not in DECODER_ONLY_LLMS:
        raise CromeError(
            f"{path}: the LLM is {llm_type!r}, an encoder-decoder or unsupported model; crome-edge supports "
            f"decoder-only LLMs ({', '.join(DECODER_ONLY_LLMS)}). Use e.g. a BLIP-2 OPT or InstructBLIP "
            "Vicuna checkpoint instead of a Flan-T5 one."
        )
    weights = [name for name in WEIGHT_FILES if (path / name).is_file()]
    if not weights:
        raise CromeError(f"{path} has a config.json but no weights ({' or '.join(WEIGHT_FILES)}); copy the whole "
                         "checkpoint directory (save_pretrained writes both)")
    missing = read_weight_index(path)
    if missing:
        raise CromeError(f"{path}: {len(missing)} weight shard(s) its index names are missing ({', '.join(missing[:3])}"
                         f"{'…' if len(missing) > 3 else ''}); copy the whole checkpoint directory")
    llm_tokenizer = _load_tokenizer(path / "tokenizer.json")
    if model_type in VLM_ARCHITECTURES:
        return load_hf_vlm(path, config, llm_tokenizer)
    qformer_tokenizer = None
    if model_type == "instructblip":
        qformer_tokenizer = _load_tokenizer(path / "qformer_tokenizer" / "tokenizer.json")
    from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration, PreTrainedModel

    Model: type[PreTrainedModel] = (InstructBlipForConditionalGeneration if model_type == "instructblip"
                                    else Blip2ForConditionalGeneration)
    try:
        with quiet_progress():
            model = Model.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as error:  # unreadable, truncated or mis-shaped weight files
        raise CromeError(f"{path}: the checkpoint does not load ({str(error).strip().splitlines()[0][:300]})") from None
    mean, std = _image_normalisation(path)
    prompt = prompt or _default_prompt(model.config.text_config, llm_tokenizer)
    try:
        return from_instructblip_model(
            model, llm_tokenizer, qformer_tokenizer, name=path.name, prompt=prompt, image_mean=mean, image_std=std
        )
    except ValueError as error:  # the backbone schema's checks (crome_runtime.manifest.BackboneSchema)
        raise CromeError(f"{path}: {error}") from None


def _load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise CromeError(
            f"missing {path}: crome-edge needs the fast tokenizer file; save it with "
            "AutoTokenizer.from_pretrained(dir).save_pretrained(dir)"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises its own Exception type for malformed files
        raise CromeError(f"{path} is not a readable tokenizer file ({error})") from None


def _read_json(path: Path) -> dict:
    try:
        data = input_files.read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CromeError(f"{path} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise CromeError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def _image_normalisation(path: Path) -> tuple[tuple, tuple]:
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        data = _read_json(preprocessor)
        mean, std = data.get("image_mean", CLIP_MEAN), data.get("image_std", CLIP_STD)
        if not (isinstance(mean, list | tuple) and isinstance(std, list | tuple)):
            raise CromeError(f"{preprocessor}: image_mean and image_std must be lists of 3 numbers")
        return tuple(mean), tuple(std)
    return CLIP_MEAN, CLIP_STD


def _default_prompt(text_config, tokenizer: Tokenizer) -> PromptTemplate:
    eos_id = text_config.eos_token_id
    eos = tokenizer.id_to_token(eos_id) if isinstance(eos_id, int) else None
    stops = (eos,) if eos else ()
    return PromptTemplate(text="Question: {question} Answer:", answer_suffix=eos or "", stop_tokens=stops)


def save_hf_dir(backbone: CromeBackbone, path: Path) -> None:
    """Writes an HF-style backbone (tiny or loaded) back out as a directory `load_hf_dir` reads."""
    from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

    info = backbone.info
    if info.architecture not in ("instructblip", "blip2"):
        raise CromeError(f"only HF-architecture backbones can be saved as a HF directory, not {info.architecture}")
    if path.exists() and any(path.iterdir()):
        raise CromeError(f"{path} exists and is not empty")
    Model = InstructBlipForConditionalGeneration if info.instruction_aware else Blip2ForConditionalGeneration
    config = _rebuild_config(backbone)
    model = Model(config)
    query_tokens, qformer = backbone.qformer_parts()
    model.vision_model.load_state_dict(backbone.vision.state_dict())
    model.qformer.load_state_dict(qformer.state_dict())
    model.language_projection.load_state_dict(backbone.projection.state_dict())
    model.language_model.load_state_dict(backbone.llm.state_dict())
    model.query_tokens.data.copy_(query_tokens.data)
    model.save_pretrained(path)
    backbone.llm_tokenizer.save(str(path / "tokenizer.json"))
    if backbone.qformer_tokenizer is not None:
        (path / "qformer_tokenizer").mkdir()
        backbone.qformer_tokenizer.save(str(path / "qformer_tokenizer" / "tokenizer.json"))
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": list(info.image_mean), "image_std": list(info.image_std)})
    )


def _rebuild_config(backbone: CromeBackbone):
    from transformers import Blip2Config, InstructBlipConfig

    Config = InstructBlipConfig if backbone.info.instruction_aware else Blip2Config
    return Config(
        vision_config=_hf_config(backbone.vision).to_dict(),
        qformer_config=_hf_config(backbone.qformer_parts()[1]).to_dict(),
        text_config=backbone.llm.config.to_dict(),
        num_query_tokens=backbone.info.num_query_tokens,
    )


def _hf_config(module: torch.nn.Module) -> PretrainedConfig:
    """The Hugging Face config a part of a BLIP-2/InstructBLIP backbone carries."""
    from transformers import PretrainedConfig

    config = module.config
    assert isinstance(config, PretrainedConfig), f"{type(module).__name__} is not a Hugging Face model part"
    return config
