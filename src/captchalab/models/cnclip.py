"""Chinese-CLIP (OFA-Sys/Chinese-CLIP) in our own code: the model, its export towers, and weight loading.

The parameter names are Chinese-CLIP's (``visual.*``, ``bert.*``, ``text_projection``, ``logit_scale``), so its
checkpoints load strictly, without renaming:

- ``load_cn_clip_checkpoint``: the official ``clip_cn_rn50.pt`` and the ``epoch_latest.pt`` / ``epochN.pt`` files its
  fine-tuning writes, both ``{"epoch", "step", "name", "state_dict": {"module.visual...": ...}, ["optimizer"]}``
  (a plain state_dict, with or without ``module.``, also loads).
- ``load_hf_chinese_clip``: a local Hugging Face ``ChineseCLIPModel`` folder (always a ViT image tower there).

Text input: token ids (B, L) made as Chinese-CLIP's ``tokenize`` does (see ``frame_token_ids``); image input:
(B, 3, R, R) made as ``CnClipPreprocess`` says. The text feature is the [CLS] hidden state times ``text_projection``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from captchalab.errors import CaptchalabError
from captchalab.models.cnclip_text import PAD_ID, BertModel, BertTextConfig
from captchalab.models.cnclip_vision import (
    Bottleneck,
    ModifiedResNet,
    ResNetVisionConfig,
    VitVisionConfig,
    build_vision_tower,
)
from captchalab.runtime.tokenizer import frame_token_ids  # noqa: F401  (re-exported)
from captchalab.training.checkpoint import load_torch

__all__ = [
    "PAD_ID",
    "BertTextConfig",
    "ResNetVisionConfig",
    "VitVisionConfig",
    "CnClipConfig",
    "CnClipPreprocess",
    "CnClip",
    "ImageTower",
    "TextTower",
    "frame_token_ids",
    "load_cn_clip_checkpoint",
    "load_hf_chinese_clip",
    "config_from_state_dict",
    "hf_to_cn_clip_state_dict",
]


@dataclass(frozen=True)
class CnClipPreprocess:
    """How Chinese-CLIP prepares inputs (``cn_clip/clip/utils.py: image_transform, tokenize``).

    Image: convert to RGB, resize the whole image to (image_size, image_size) with PIL bicubic (no crop, aspect ratio
    not kept), scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel, layout (3, H, W).
    Text: see ``frame_token_ids``; ``context_length`` ids per text.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    context_length: int = 52


@dataclass(frozen=True)
class CnClipConfig:
    """Sizes of both towers and the shared embedding; ``rn50()`` is the official Chinese-CLIP RN50 (RBT3 text)."""

    embed_dim: int = 1024
    vision: ResNetVisionConfig | VitVisionConfig = field(default_factory=ResNetVisionConfig)
    text: BertTextConfig = field(default_factory=BertTextConfig)

    @classmethod
    def rn50(cls) -> CnClipConfig:
        return cls()

    @classmethod
    def tiny(cls) -> CnClipConfig:
        """A ~0.6M-parameter model for tests; its head counts follow the rules ``config_from_state_dict`` assumes."""
        return cls(
            embed_dim=32,
            vision=ResNetVisionConfig(layers=(1, 1, 1, 1), width=8, heads=4, image_resolution=64),
            text=BertTextConfig(
                vocab_size=100, hidden_size=128, layers=2, heads=2, intermediate_size=256, max_position_embeddings=64
            ),
        )

    def preprocess(self) -> CnClipPreprocess:
        return CnClipPreprocess(image_size=self.vision.image_resolution, context_length=self.text.context_length)

    def to_dict(self) -> dict:
        """JSON-able; ``vision.arch`` is "modified-resnet" or "vit"."""
        arch = "modified-resnet" if isinstance(self.vision, ResNetVisionConfig) else "vit"
        return {"embed_dim": self.embed_dim, "vision": {"arch": arch, **asdict(self.vision)}, "text": asdict(self.text)}

    @classmethod
    def from_dict(cls, data: Mapping) -> CnClipConfig:
        vision = dict(data["vision"])
        arch = vision.pop("arch")
        if arch == "modified-resnet":
            vision_config: ResNetVisionConfig | VitVisionConfig = ResNetVisionConfig(
                **{**vision, "layers": tuple(vision["layers"])}
            )
        elif arch == "vit":
            vision_config = VitVisionConfig(**vision)
        else:
            raise ValueError(f"unknown Chinese-CLIP vision arch {arch!r}")
        return cls(embed_dim=data["embed_dim"], vision=vision_config, text=BertTextConfig(**data["text"]))


class CnClip(nn.Module):
    """Chinese-CLIP: an image tower (``visual``) and a BERT text tower (``bert`` + ``text_projection``)."""

    def __init__(self, config: CnClipConfig | None = None):
        super().__init__()
        self.config = config or CnClipConfig.rn50()
        self.visual = build_vision_tower(self.config.vision, self.config.embed_dim)
        self.bert = BertModel(self.config.text)
        self.text_projection = nn.Parameter(torch.empty(self.config.text.hidden_size, self.config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self._init_weights()

    def _init_weights(self) -> None:
        # BERT as its pretraining code; CLIP's attention-pool and zero-init of each residual branch's last BN
        for module in self.bert.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        if isinstance(self.visual, ModifiedResNet):
            pool = self.visual.attnpool
            for proj in (pool.q_proj, pool.k_proj, pool.v_proj, pool.c_proj):
                nn.init.normal_(proj.weight, std=pool.c_proj.in_features**-0.5)
            for module in self.visual.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
        nn.init.normal_(self.text_projection, std=self.config.text.hidden_size**-0.5)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) preprocessed images -> (B, D) features, not normalised."""
        return self.visual(images.to(self.text_projection.dtype))  # (B, D)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 token ids, pad id 0 -> (B, D) features, not normalised."""
        hidden = self.bert(token_ids)  # (B, L, H)
        return hidden[:, 0] @ self.text_projection  # [CLS] -> (B, D)

    def forward(self, images: torch.Tensor, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L2-normalised image features (B, D), text features (B', D), and the logit scale exp(logit_scale)."""
        image_features = self.encode_image(images)
        text_features = self.encode_text(token_ids)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return image_features, text_features, self.logit_scale.exp()


class ImageTower(nn.Module):
    """Export wrapper: images (B, 3, R, R) -> L2-normalised features (B, D).

    It takes the wrapped model's train/eval mode (so an exporter that restores the wrapper's mode afterwards
    leaves an eval model in eval); put the model in eval mode before exporting.
    """

    def __init__(self, model: CnClip):
        super().__init__()
        self.clip = model
        self.training = model.training

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.clip.encode_image(images)  # (B, D)
        return features / features.norm(dim=-1, keepdim=True)


class TextTower(nn.Module):
    """Export wrapper: token ids (B, L) int64, pad 0 -> L2-normalised features (B, D). Mode as ``ImageTower``."""

    def __init__(self, model: CnClip):
        super().__init__()
        self.clip = model
        self.training = model.training

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        features = self.clip.encode_text(token_ids)  # (B, D)
        return features / features.norm(dim=-1, keepdim=True)


# ---------------------------------------------------------------------------------------------------------------
# Loading

# keys Chinese-CLIP itself drops before loading: the unused BERT pooler that older checkpoints still carry
_IGNORED = re.compile(r"^bert\.pooler\.")


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many distinct integers fill the ``(\\d+)`` in ``pattern`` across the keys."""
    regex = re.compile(pattern)
    return len({m.group(1) for key in state_dict if (m := regex.match(key))})


def _vit_heads(width: int) -> int:
    return 16 if width == 1280 else max(1, width // 64)  # ViT-H uses 80-wide heads, all other models 64


def config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    vision_heads: int | None = None,
    text_heads: int | None = None,
    context_length: int = 52,
) -> CnClipConfig:
    """Sizes read off the tensor shapes (keys without ``module.``).

    Head counts are not in the shapes: by default Chinese-CLIP's rule (64-wide heads; 80 for ViT-H), at least 1.
    Raises KeyError when a tensor that fixes a size is absent.
    """
    sd = state_dict
    embed_dim = sd["text_projection"].shape[1]
    if "visual.attnpool.c_proj.weight" in sd:
        pool_width = sd["visual.attnpool.positional_embedding"].shape[1]
        grid = math.isqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1)
        vision: ResNetVisionConfig | VitVisionConfig = ResNetVisionConfig(
            layers=tuple(_count(sd, rf"visual\.layer{i}\.(\d+)\.conv1\.weight$") for i in range(1, 5)),  # type: ignore[arg-type]
            width=sd["visual.conv3.weight"].shape[0],
            heads=vision_heads or max(1, pool_width // 64),
            image_resolution=grid * 32,
        )
    else:
        width, _, patch, _ = sd["visual.conv1.weight"].shape
        grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - 1)
        vision = VitVisionConfig(
            layers=_count(sd, r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$"),
            width=width,
            heads=vision_heads or _vit_heads(width),
            patch_size=patch,
            image_resolution=grid * patch,
        )
    vocab_size, hidden = sd["bert.embeddings.word_embeddings.weight"].shape
    text = BertTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        layers=_count(sd, r"bert\.encoder\.layer\.(\d+)\.attention\.self\.query\.weight$"),
        heads=text_heads or max(1, hidden // 64),
        intermediate_size=sd["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=sd["bert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=sd["bert.embeddings.token_type_embeddings.weight"].shape[0],
        context_length=context_length,
    )
    return CnClipConfig(embed_dim=embed_dim, vision=vision, text=text)


def _describe(config: CnClipConfig) -> str:
    v, t = config.vision, config.text
    vision = (
        f"ResNet{list(v.layers)}x{v.width}"
        if isinstance(v, ResNetVisionConfig)
        else f"ViT{v.layers}x{v.width}/{v.patch_size}"
    )
    return f"{vision}@{v.image_resolution} + BERT{t.layers}x{t.hidden_size}, embed {config.embed_dim}"


def _names(keys: Sequence[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _build_strict(
    state_dict: dict[str, torch.Tensor], config: CnClipConfig | None, source: Path, **infer: int
) -> CnClip:
    """A CnClip in eval mode holding exactly ``state_dict``; any missing, unexpected or misshapen key is an error."""
    if config is None:
        try:
            config = config_from_state_dict(state_dict, **infer)
        except (KeyError, IndexError, ValueError) as error:
            raise CaptchalabError(f"{source}: not a Chinese-CLIP checkpoint (cannot read its sizes: {error})") from None
    try:
        model = CnClip(config)
    except ValueError as error:
        raise CaptchalabError(f"{source}: unusable Chinese-CLIP sizes ({error})") from None
    expected = model.state_dict()
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    misshapen = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & state_dict.keys())
        if state_dict[k].shape != expected[k].shape
    ]
    problems = [
        f"{label}: {_names(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misshapen))
        if keys
    ]
    if problems:
        raise CaptchalabError(
            f"{source}: does not fit the Chinese-CLIP model ({_describe(config)}): " + "; ".join(problems)
        )
    model.load_state_dict(state_dict, strict=True)  # casts fp16 checkpoints to the model's fp32
    return model.eval()


def _tensor_dict(obj: object) -> dict[str, torch.Tensor] | None:
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return dict(obj)
    return None


def load_cn_clip_checkpoint(path: str | Path, config: CnClipConfig | None = None) -> CnClip:
    """Load Chinese-CLIP weights (official ``clip_cn_rn50.pt``, fine-tuning ``epoch_latest.pt``) into an eval CnClip.

    Accepts ``{"state_dict": ...}`` (any other entries, such as the optimizer, are ignored) or a bare state_dict;
    a ``module.`` prefix (distributed training) is removed, and ``bert.pooler.*`` is dropped as Chinese-CLIP does.
    ``config=None`` reads the sizes off the tensors (see ``config_from_state_dict``).
    """
    path = Path(path)
    if not str(path).strip() or path.is_dir():
        raise CaptchalabError(
            f"{path}: not a checkpoint file (give the .pt file; load a Hugging Face folder with hf:PATH)"
        )
    obj = load_torch(path)
    state_dict = _tensor_dict(obj.get("state_dict")) if isinstance(obj, Mapping) else None
    state_dict = state_dict or _tensor_dict(obj)
    if state_dict is None:
        raise CaptchalabError(f"{path}: holds no state_dict of named tensors")
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    state_dict = {k: v for k, v in state_dict.items() if not _IGNORED.match(k)}
    if any(k.startswith(("text_model.", "vision_model.")) for k in state_dict):
        raise CaptchalabError(
            f"{path}: holds Hugging Face ChineseCLIPModel weights; load its folder with load_hf_chinese_clip"
        )
    return _build_strict(state_dict, config, path)


# Hugging Face ChineseCLIPModel -> Chinese-CLIP names. q/k/v of the ViT are packed into in_proj separately.
_HF_LAYER = r"^vision_model\.encoder\.layers\.(\d+)\."
_CN_BLOCK = r"visual.transformer.resblocks.\1."
_HF_RENAMES = [
    (r"^text_model\.", "bert."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.weight$", "visual.conv1.weight"),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (_HF_LAYER + r"self_attn\.out_proj\.", _CN_BLOCK + "attn.out_proj."),
    (_HF_LAYER + r"layer_norm1\.", _CN_BLOCK + "ln_1."),
    (_HF_LAYER + r"layer_norm2\.", _CN_BLOCK + "ln_2."),
    (_HF_LAYER + r"mlp\.fc1\.", _CN_BLOCK + "mlp.c_fc."),
    (_HF_LAYER + r"mlp\.fc2\.", _CN_BLOCK + "mlp.c_proj."),
]
_HF_QKV = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
# non-persistent buffers older transformers versions saved, and the text pooler ChineseCLIPModel does not use
_HF_IGNORED = re.compile(r"(\.position_ids|\.token_type_ids)$|^text_model\.pooler\.")


def hf_to_cn_clip_state_dict(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ``ChineseCLIPModel`` state_dict to Chinese-CLIP's names; unknown keys are kept as they are."""
    out: dict[str, torch.Tensor] = {}
    packed: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in hf.items():
        if _HF_IGNORED.search(key):
            continue
        if m := _HF_QKV.match(key):
            packed.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        if key in ("text_projection.weight", "visual_projection.weight"):  # nn.Linear (D, H) -> parameter (H, D)
            out["text_projection" if key.startswith("text") else "visual.proj"] = value.t().contiguous()
            continue
        for pattern, replacement in _HF_RENAMES:
            key, n = re.subn(pattern, replacement, key)
            if n:
                break
        out[key] = value
    for (layer, kind), parts in packed.items():
        if set(parts) == {"q", "k", "v"}:
            out[f"visual.transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat(
                [parts["q"], parts["k"], parts["v"]]
            )
        else:  # incomplete: keep the HF names so the strict check reports them
            out.update({f"vision_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}": t for p, t in parts.items()})
    return out


def _hf_weight_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face folder: one file, or the shards its index names; safetensors first."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
        index = folder / f"{name}.index.json"
        if index.is_file():
            try:
                shards = list(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
            except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as error:
                raise CaptchalabError(f"{index}: not a weight index ({error!r})") from None
            bad = [s for s in shards if not isinstance(s, str) or not s or Path(s).name != s or s in (".", "..")]
            if bad or not shards:
                shown = f"shard {bad[0]!r}" if bad else "no shards"
                raise CaptchalabError(f"{index}: not a weight index ({shown}; expected file names in {folder})")
            return sorted({folder / shard for shard in shards})
    raise CaptchalabError(f"{folder}: no model.safetensors or pytorch_model.bin (Hugging Face ChineseCLIP folder)")


def _read_weight_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix != ".safetensors":
        tensors = _tensor_dict(load_torch(file))
        if tensors is None:
            raise CaptchalabError(f"{file}: holds no state_dict of named tensors")
        return tensors
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise CaptchalabError(f"{file}: reading .safetensors needs `pip install safetensors`") from None
    if not file.is_file():
        raise CaptchalabError(f"{file}: no such file")
    try:
        return load_file(file, device="cpu")
    except (SafetensorError, OSError) as error:
        raise CaptchalabError(f"{file}: not a safetensors file ({error})") from None


def load_hf_chinese_clip(folder: str | Path) -> CnClip:
    """Load a local Hugging Face ``ChineseCLIPModel`` folder (config.json + weights) into an eval CnClip.

    Hugging Face only has ViT image towers for ChineseCLIP, so the result has a ``VitVisionConfig``. Head counts
    come from config.json, all other sizes from the tensors; the activations and LayerNorm eps must be the
    Chinese-CLIP ones (text "gelu" / 1e-12, vision "quick_gelu" / 1e-5) and the pad token id 0.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CaptchalabError(f"{config_path}: no such file (expected a Hugging Face ChineseCLIP folder)")
    try:
        hf_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, numbers too long
        raise CaptchalabError(f"{config_path}: not JSON ({error})") from None
    if not isinstance(hf_config, dict):
        raise CaptchalabError(f"{config_path}: not a Hugging Face config (expected a JSON object)")
    for key in ("text_config", "text_config_dict", "vision_config", "vision_config_dict"):
        if not isinstance(hf_config.get(key) or {}, dict):
            raise CaptchalabError(f"{config_path}: {key} is not a JSON object")
    if hf_config.get("model_type", "chinese_clip") != "chinese_clip":
        raise CaptchalabError(f"{config_path}: model_type is {hf_config['model_type']!r}, not 'chinese_clip'")
    # older configs also carry *_config_dict, whose values win (as in transformers' ChineseCLIPConfig)
    text_cfg = {**(hf_config.get("text_config") or {}), **(hf_config.get("text_config_dict") or {})}
    vision_cfg = {**(hf_config.get("vision_config") or {}), **(hf_config.get("vision_config_dict") or {})}
    required = {
        ("text", "hidden_act"): (text_cfg.get("hidden_act", "gelu"), "gelu"),
        ("text", "layer_norm_eps"): (text_cfg.get("layer_norm_eps", 1e-12), 1e-12),
        ("text", "pad_token_id"): (text_cfg.get("pad_token_id", 0), 0),
        ("vision", "hidden_act"): (vision_cfg.get("hidden_act", "quick_gelu"), "quick_gelu"),
        ("vision", "layer_norm_eps"): (vision_cfg.get("layer_norm_eps", 1e-5), 1e-5),
    }
    for (tower, name), (value, wanted) in required.items():
        if value != wanted:
            raise CaptchalabError(f"{config_path}: {tower} {name} is {value!r}; only {wanted!r} is supported")
    heads = {"vision": vision_cfg.get("num_attention_heads", 12), "text": text_cfg.get("num_attention_heads", 12)}
    for tower, value in heads.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CaptchalabError(f"{config_path}: {tower} num_attention_heads is {value!r}, not a whole number >= 1")
    weights: dict[str, torch.Tensor] = {}
    for file in _hf_weight_files(folder):
        weights.update(_read_weight_file(file))
    state_dict = hf_to_cn_clip_state_dict(weights)
    return _build_strict(
        state_dict,
        None,
        folder,
        vision_heads=heads["vision"],
        text_heads=heads["text"],
    )
