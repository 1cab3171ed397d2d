"""Load a local Hugging Face LLaVA or SmolVLM/Idefics3 directory as a CromeBackbone (no Q-Former: the connector's
visual tokens are what the adapter sees).

- LLaVA (`LlavaForConditionalGeneration`): CLIP or SigLIP tower -> the hidden state the checkpoint names
  (`vision_feature_layer`, CLS dropped for the "default" strategy) -> MLP projector -> LLaMA/Mistral/Qwen2 LLM.
- SmolVLM / Idefics3 (`Idefics3ForConditionalGeneration`, `SmolVLMForConditionalGeneration`): SigLIP tower ->
  pixel shuffle + linear connector -> LLaMA-family LLM. One tile only: the frame is resized whole to the tower's
  size (the processor with `do_image_splitting` off); multi-tile splitting is not supported yet.

Everything a prompt needs comes from the checkpoint's own files, through its HF processor (offline): the chat
template (rendered once around a "{question}" placeholder), where the image goes and how the processor expands it
(one image token kept: crome_runtime.prompt places the visual tokens there), and the image processor's resize,
crop and normalisation (crome_runtime.hf_image.ResizeRecipe, reproduced in the runtime without PIL).
Not here: BLIP-2/InstructBLIP (hf_dir.py, which also detects the architecture and calls this module).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tokenizers import Tokenizer
from torch import nn

from crome_edge.backbones.base import BackboneInfo, BackboneParts, CromeBackbone
from crome_edge.errors import CromeError
from crome_runtime import input_files
from crome_runtime.hf_image import MAX_LONGEST_EDGE, PIL, PIL_RESAMPLE_CODES, ResizeRecipe
from crome_runtime.prompt import PromptTemplate

if TYPE_CHECKING:
    from transformers import PreTrainedModel

VLM_ARCHITECTURES = {  # config.json model_type -> the transformers class that loads it
    "llava": "LlavaForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
}
ONE_TILE_NOTICE = ("note: {name}: SmolVLM/Idefics3 runs one tile in crome-edge (the whole frame resized to {size}×{size},"
                   " the processor's image splitting off); multi-tile splitting is not supported yet")


class LlavaVision(nn.Module):
    """A LLaVA tower as the projector reads it: (B, 3, S, S) -> the `layer` hidden state(s) (B, Np, Dv), CLS dropped
    for the "default" strategy (LlavaModel.get_image_features, without the projector)."""

    def __init__(self, tower: nn.Module, layer: int | list[int], strategy: str):
        super().__init__()
        self.tower = tower
        self.layers = [layer] if isinstance(layer, int) else list(layer)
        self.drop_cls = strategy == "default"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        picked = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in self.layers]  # each (B, Np, Dv)
        return picked[0] if len(picked) == 1 else torch.cat(picked, dim=-1)


class Idefics3Vision(nn.Module):
    """An Idefics3/SmolVLM SigLIP tower on one unpadded tile: (B, 3, S, S) -> (B, Np, Dv). The position ids HF
    derives from the pixel mask (a bucketize over fractional coordinates) are computed once here with HF's own
    arithmetic for a full mask, so the exported graph has none of that data-dependent code."""

    position_ids: torch.Tensor  # (1, Np) buffer

    vision_model: Any  # an Idefics3/SmolVLM VisionTransformer (embeddings, encoder, post_layernorm)

    def __init__(self, vision_model: nn.Module, image_size: int, patch_size: int):
        super().__init__()
        self.vision_model = vision_model
        per_side = image_size // patch_size
        self.register_buffer("position_ids", _full_tile_positions(per_side, vision_model), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.vision_model.embeddings
        patches = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)  # (B, Np, Dv)
        hidden = patches + embeddings.position_embedding(self.position_ids)
        hidden = self.vision_model.encoder(inputs_embeds=hidden).last_hidden_state  # every patch is real: no mask
        return self.vision_model.post_layernorm(hidden)


def _full_tile_positions(per_side: int, vision_model: Any) -> torch.Tensor:
    """Idefics3VisionEmbeddings' position ids for one image whose every patch is real -> (1, per_side²)."""
    num_per_side = vision_model.embeddings.num_patches_per_side
    boundaries = torch.arange(1 / num_per_side, 1.0, 1 / num_per_side)
    count = torch.tensor([per_side])
    step = 1.0 / count  # (1,) float32, as HF divides by the mask's patch count
    fractional = torch.arange(per_side, dtype=torch.float32)[None, :] * step[:, None]
    bucket = torch.bucketize(torch.clamp(fractional, max=1.0 - 1e-6), boundaries, right=True)  # (1, per_side)
    return (bucket[:, :, None] * num_per_side + bucket[:, None, :]).reshape(1, -1)


def load_hf_vlm(path: Path, config: dict, tokenizer: Tokenizer) -> CromeBackbone:
    """A LLaVA or SmolVLM/Idefics3 checkpoint directory (config.json already read and checked by hf_dir) as a
    CromeBackbone; CromeError naming what is wrong and what to do for anything this cannot load faithfully."""
    from transformers import AutoConfig

    model_type = config["model_type"]
    processor = _processor(path)
    template = _chat_template(path, processor)
    hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    recipe = _llava_recipe if model_type == "llava" else _idefics3_recipe
    info_size, resize = recipe(path, hf_config, processor.image_processor)  # refusals before the weights load
    prompt = _prompt(path, processor, template, tokenizer, model_type)
    model = _model(path, model_type)
    if model_type == "llava":
        vision: nn.Module = LlavaVision(model.model.vision_tower, hf_config.vision_feature_layer,
                                        hf_config.vision_feature_select_strategy)
        projection, decoder = model.model.multi_modal_projector, model.model.language_model
    else:
        vision = Idefics3Vision(model.model.vision_model, info_size, hf_config.vision_config.patch_size)
        projection, decoder = model.model.connector, model.model.text_model
    llm = _causal_lm(model.config.text_config, decoder, model.lm_head)
    with torch.no_grad():  # how many visual tokens the connector makes (Nq), measured rather than derived
        num_tokens = projection(vision(torch.zeros(1, 3, info_size, info_size))).shape[1]
    image_processor = processor.image_processor
    try:
        info = BackboneInfo(
            name=path.name, architecture=model_type, d_model=model.config.text_config.hidden_size,
            num_query_tokens=num_tokens, image_size=info_size, instruction_aware=False,
            image_mean=tuple(image_processor.image_mean), image_std=tuple(image_processor.image_std),
            resize=resize, prompt=prompt,
        )
    except ValueError as error:  # the backbone schema's checks (crome_runtime.manifest.BackboneSchema)
        raise CromeError(f"{path}: {error}") from None
    parts = BackboneParts(vision=vision, query_tokens=None, qformer=None, projection=projection, llm=llm)
    return CromeBackbone(info, parts, tokenizer)


# --- the checkpoint's own files -----------------------------------------------------------------------------


def _processor(path: Path):
    from transformers import AutoProcessor

    if not (path / "preprocessor_config.json").is_file() and not (path / "processor_config.json").is_file():
        raise CromeError(f"{path}: no preprocessor_config.json; crome-edge resizes frames as the checkpoint's own image "
                         "processor does. Copy the processor files too (AutoProcessor.from_pretrained(hub_id)"
                         ".save_pretrained(dir))")
    try:
        return AutoProcessor.from_pretrained(str(path), local_files_only=True)
    except ImportError as error:  # SmolVLM2's processor needs num2words (and a video processor: torchvision)
        raise CromeError(f"{path}: its processor needs a package that is not installed here "
                         f"({str(error).strip().splitlines()[0][:200]}); install it (SmolVLM2: pip install num2words "
                         "torchvision)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CromeError(f"{path}: its processor files do not load ({str(error).strip().splitlines()[0][:300]})") from None


def _chat_template(path: Path, processor) -> str:
    template = getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)
    if not template:
        raise CromeError(f"{path}: the tokenizer has no chat template (chat_template.jinja, chat_template.json or "
                         "tokenizer_config.json's chat_template); crome-edge prompts the model the way it was trained, "
                         "from that template. Copy the checkpoint's template files too")
    return template


def _model(path: Path, model_type: str) -> PreTrainedModel:
    import transformers

    Model = getattr(transformers, VLM_ARCHITECTURES[model_type])
    try:
        with quiet_progress():
            model = Model.from_pretrained(str(path), dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:  # unreadable, truncated or mis-shaped weight files
        raise CromeError(f"{path}: the checkpoint does not load ({str(error).strip().splitlines()[0][:300]})") from None
    return model.eval()


def _causal_lm(text_config, decoder: nn.Module, lm_head: nn.Module) -> PreTrainedModel:
    """The VLM's decoder and head as a plain HF CausalLM (what CromeBackbone.llm is for every backbone), sharing
    their tensors: built on the meta device, then its decoder and head replaced by the checkpoint's."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(text_config)
    base = llm.base_model_prefix  # "model" for LLaMA, Mistral, Qwen2
    setattr(llm, base, decoder)
    llm.lm_head = lm_head
    left = [name for name, t in [*llm.named_parameters(), *llm.named_buffers()] if t.is_meta]
    assert not left, f"tensors not taken from the checkpoint: {left[:3]}"
    return llm.eval()


def _check_tower_size(path: Path, tower: int, processor_size: int, what: str) -> None:
    if tower != processor_size:
        raise CromeError(f"{path}: the vision tower takes {tower}×{tower} px, but the processor makes {processor_size}×"
                         f"{processor_size} px frames ({what}); the checkpoint and its preprocessor_config.json do not "
                         "belong together")


def _resample(path: Path, image_processor) -> str:
    code = int(getattr(image_processor, "resample", 2))
    if code not in PIL_RESAMPLE_CODES:
        raise CromeError(f"{path}: the image processor resamples with PIL filter {code}; crome-edge reproduces "
                         f"{', '.join(PIL_RESAMPLE_CODES.values())} ({', '.join(map(str, PIL_RESAMPLE_CODES))})")
    if getattr(image_processor, "do_rescale", True) is False or abs(image_processor.rescale_factor - 1 / 255) > 1e-12:
        raise CromeError(f"{path}: the image processor rescales pixels by {image_processor.rescale_factor}, not 1/255; "
                         "not supported")
    if getattr(image_processor, "do_normalize", True) is False:
        raise CromeError(f"{path}: the image processor does not normalise (do_normalize false); not supported")
    return PIL_RESAMPLE_CODES[code]


def _llava_recipe(path: Path, config, image_processor) -> tuple[int, ResizeRecipe]:
    """(tower size S, how frames become S×S) for a LLaVA checkpoint's CLIP or SigLIP processor."""
    tower_size = config.vision_config.image_size
    size = dict(image_processor.size or {})
    resample = _resample(path, image_processor)
    if "shortest_edge" in size:  # CLIP: shortest edge, then a centre crop
        crop = dict(image_processor.crop_size or {}) if getattr(image_processor, "do_center_crop", False) else {}
        if not crop or crop.get("height") != crop.get("width"):
            raise CromeError(f"{path}: the image processor resizes the shortest edge but crops to {crop or 'nothing'}; "
                             "crome-edge needs a square centre crop")
        _check_tower_size(path, tower_size, int(crop["height"]), "crop_size")
        return tower_size, ResizeRecipe(method=PIL, resample=resample, shortest_edge=int(size["shortest_edge"]))
    if size.get("height") and size.get("height") == size.get("width"):  # SigLIP: straight to S×S
        _check_tower_size(path, tower_size, int(size["height"]), "size")
        return tower_size, ResizeRecipe(method=PIL, resample=resample)
    raise CromeError(f"{path}: image processor size {size}; crome-edge reproduces a shortest-edge resize + square "
                     "crop (CLIP) or a square resize (SigLIP). LLaVA-NeXT/OneVision any-resolution tiling is not "
                     "supported yet")


def _idefics3_recipe(path: Path, config, image_processor) -> tuple[int, ResizeRecipe]:
    """(tower size S, how frames become one S×S tile) for an Idefics3/SmolVLM checkpoint's processor."""
    tower_size = config.vision_config.image_size
    tile = int((getattr(image_processor, "max_image_size", None) or {}).get("longest_edge", 0))
    _check_tower_size(path, tower_size, tile, "max_image_size")
    longest = int((image_processor.size or {}).get("longest_edge", 0)) if getattr(image_processor, "do_resize", True) else 0
    recipe = ResizeRecipe(method=PIL, resample=_resample(path, image_processor), longest_edge=min(longest, MAX_LONGEST_EDGE))
    if getattr(image_processor, "do_image_splitting", False):
        print(ONE_TILE_NOTICE.format(name=path.name, size=tower_size), file=sys.stderr)
    return tower_size, recipe


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """transformers' "Loading weights" bars off while a checkpoint loads: the CLI's stderr keeps to its own lines."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def _prompt(path: Path, processor, template: str, tokenizer: Tokenizer, model_type: str) -> PromptTemplate:
    """The checkpoint's chat template around "{question}", its image placeholder expanded as the processor does for
    one image (one image token kept), the answer suffix and stop tokens from an assistant turn it renders."""
    image_token = processor.image_token
    if tokenizer.token_to_id(image_token) is None:
        raise CromeError(f"{path}: tokenizer.json has no {image_token!r} token, which the processor puts where the "
                         "image goes; the tokenizer and the processor do not belong together")
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "{question}"}]}
    try:
        text = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False, chat_template=template)
        answered = processor.apply_chat_template(
            [user, {"role": "assistant", "content": [{"type": "text", "text": "{answer}"}]}],
            tokenize=False, chat_template=template,
        )
    except Exception as error:  # jinja2 raises its own errors for templates it cannot render
        raise CromeError(f"{path}: the chat template does not render ({str(error).strip()[:200]})") from None
    if text.count("{question}") != 1 or text.count(image_token) != 1 or "{answer}" not in answered:
        raise CromeError(f"{path}: the chat template renders a user turn as {text[:120]!r}; crome-edge needs one image "
                         f"placeholder {image_token!r} and the question in it")
    if text.index(image_token) > text.index("{question}"):
        raise CromeError(f"{path}: the chat template puts the image after the question; crome-edge needs it before")
    if model_type != "llava":  # Idefics3/SmolVLM: the processor's one-tile expansion, its run of image tokens as one
        expanded = processor.replace_image_token({"rows": [[0]], "cols": [[0]]}, 0)
        text = text.replace(image_token, _one_image_token(expanded, image_token))
    suffix = answered.split("{answer}", 1)[1].strip()
    eos = getattr(processor.tokenizer, "eos_token", None)
    stops = tuple(dict.fromkeys(t for t in (suffix, eos) if t and tokenizer.token_to_id(t) is not None))
    if not stops:
        raise CromeError(f"{path}: neither the chat template's end of turn {suffix!r} nor the tokenizer's eos token is "
                         "one token of tokenizer.json; crome-edge cannot tell where an answer ends")
    bos = getattr(processor.tokenizer, "bos_token", None)
    # the processor tokenises with the tokenizer's special tokens; a template that writes BOS itself needs none added
    add_special = not (bos and text.startswith(bos))
    return PromptTemplate(text=text, answer_suffix=stops[0], stop_tokens=stops, add_special_tokens=add_special,
                          image_token=image_token)


def _one_image_token(expanded: str, image_token: str) -> str:
    first, last = expanded.index(image_token), expanded.rindex(image_token)
    run = expanded[first : last + len(image_token)]
    if run.replace(image_token, ""):
        raise CromeError("the processor's one-tile image expansion is not one run of image tokens; not supported")
    return expanded[:first] + image_token + expanded[last + len(image_token) :]


def read_weight_index(path: Path) -> list[str]:
    """The shard files a sharded checkpoint's index names that are missing from the directory."""
    missing: list[str] = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                shards = set(input_files.read_json(path / index)["weight_map"].values())
            except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
                raise CromeError(f"{path / index} is not a readable weight index ({error})") from None
            missing += sorted(name for name in shards if not (path / name).is_file())
    return missing
