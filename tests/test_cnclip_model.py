"""Chinese-CLIP model: golden values from Chinese-CLIP's own code, checkpoint formats, HF folders, export towers."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from captchalab.errors import CaptchalabError
from captchalab.models.cnclip import (
    BertTextConfig,
    CnClip,
    CnClipConfig,
    ImageTower,
    ResNetVisionConfig,
    TextTower,
    VitVisionConfig,
    config_from_state_dict,
    frame_token_ids,
    load_cn_clip_checkpoint,
    load_hf_chinese_clip,
)


def _seeded_state_dict(state_dict: dict[str, torch.Tensor], seed: int = 1234) -> dict[str, torch.Tensor]:
    """Deterministic values for every float tensor, drawn in sorted key order.

    Two models with the same key names and shapes get identical weights from this recipe, which is how the golden
    values below (computed on Chinese-CLIP's own modules) carry over to ours.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not tensor.is_floating_point():
            out[key] = tensor.clone()
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
        if key.endswith("running_var"):
            out[key] = 0.5 + noise.abs()
        elif tensor.dim() == 1 and key.endswith("weight"):  # BatchNorm / LayerNorm scales
            out[key] = 1.0 + 0.2 * noise
        elif tensor.dim() >= 2:  # scaled by 1/sqrt(numel / rows) so activations stay O(1)
            out[key] = noise / tensor[0].numel() ** 0.5
        else:
            out[key] = 0.2 * noise
    return out


def _seeded_model(config: CnClipConfig) -> CnClip:
    model = CnClip(config).eval()
    model.load_state_dict(_seeded_state_dict(model.state_dict()), strict=True)
    return model


def _images(resolution: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(99))


# [CLS]=1, [SEP]=2 in this 100-token toy vocab; 0 is padding. Rows: padded, heavily padded, full.
TOKEN_IDS = torch.tensor([[1, 5, 17, 33, 2, 0, 0, 0], [1, 9, 2, 0, 0, 0, 0, 0], [1, 40, 41, 42, 43, 44, 45, 2]])

# ---------------------------------------------------------------------------------------------------------------
# Golden values. Produced once by Chinese-CLIP's own model code, transcribed with imports adapted to plain torch
# (flash-attention and FLIP-masking branches dropped, tokenizer replaced by a stub whose [PAD] is 0) from
# OFA-Sys/Chinese-CLIP cn_clip/clip/model.py @ 5bbd36af41de9b7f35fb3ca22c0e950539de43d6,
# cn_clip/clip/modeling_bert.py @ 350ae361eb68214c4b794942b31c33c50b79c067 and
# cn_clip/clip/configuration_bert.py @ 5497f4b95ee52a33a407510734d72c45b34cbfc8: their CLIP(embed_dim=32,
# image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8) [ResNet] or (image_resolution=32, vision_layers=2,
# vision_width=128, vision_patch_size=8) [ViT], text vocab 100, hidden 128, 2 layers, 2 heads, intermediate 256,
# 64 positions; weights from _seeded_state_dict(their_model.state_dict()); inputs _images(...) and TOKEN_IDS;
# outputs of their encode_image / encode_text (eval mode, torch 2.13 CPU). Their state_dict, saved as an official
# checkpoint ({"state_dict": {"module." + key: ...}}), loaded into ours with nothing missing or unexpected, and the
# full embeddings agreed within 2.3e-6 (ResNet image 1.5e-7, ViT image 1.9e-6, text 2.3e-6).
GOLDEN_TEXT = BertTextConfig(
    vocab_size=100, hidden_size=128, layers=2, heads=2, intermediate_size=256, max_position_embeddings=64
)
GOLDEN_CONFIGS = {
    "resnet": CnClipConfig(
        embed_dim=32,
        text=GOLDEN_TEXT,
        vision=ResNetVisionConfig(layers=(1, 1, 1, 1), width=8, heads=4, image_resolution=64),
    ),  # their heads: 8 * 32 // 64
    "vit": CnClipConfig(
        embed_dim=32,
        text=GOLDEN_TEXT,
        vision=VitVisionConfig(layers=2, width=128, heads=2, patch_size=8, image_resolution=32),
    ),  # their heads: 128 // 64
}
GOLDEN_IMAGE_HEAD = {
    "resnet": [
        [0.3417803, 0.8275046, -0.0795158, -0.6548207, -0.9219097, -1.5681145, -0.7373946, 1.0977966],
        [0.3370717, 0.8174734, -0.086412, -0.6499445, -0.9291728, -1.565329, -0.7348198, 1.0885165],
    ],
    "vit": [
        [2.0260248, 3.4611795, 0.9113643, -4.5489616, 1.1259284, 2.0172732, -0.8352253, -0.5032383],
        [2.8538468, 2.9122159, 2.5341132, -4.5616255, 2.0426385, 4.1179624, 0.6007472, -1.4162389],
    ],
}
GOLDEN_IMAGE_NORM = {"resnet": [3.4446282, 3.4337645], "vit": [12.2998266, 12.738059]}
GOLDEN_TEXT_HEAD = [  # identical for both configs: the text tower and its weights are the same
    [-3.6431105, -1.1273172, 1.5446393, -3.4532766, -1.5435193, 0.2065506, -2.01879, 2.110635],
    [-4.1802001, -0.349404, 2.8453529, -2.3613811, -1.9262139, -0.5298082, -2.7511504, 2.6789136],
    [-3.788826, -0.0920995, 2.336483, -2.4486034, -1.2596331, 0.1728769, -2.6826224, 1.8788025],
]
GOLDEN_TEXT_NORM = [12.6167917, 13.0165749, 12.1035795]
GOLDEN_LOGIT_SCALE_EXP = 0.9778032302856445


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_matches_golden_values_from_chinese_clip_code(arch: str) -> None:
    config = GOLDEN_CONFIGS[arch]
    model = _seeded_model(config)
    with torch.no_grad():
        image = model.encode_image(_images(config.vision.image_resolution))
        text = model.encode_text(TOKEN_IDS)
        _, _, scale = model(_images(config.vision.image_resolution), TOKEN_IDS)
    close = {"atol": 1e-5, "rtol": 1e-5}
    torch.testing.assert_close(image[:, :8], torch.tensor(GOLDEN_IMAGE_HEAD[arch]), **close)
    torch.testing.assert_close(image.norm(dim=-1), torch.tensor(GOLDEN_IMAGE_NORM[arch]), **close)
    torch.testing.assert_close(text[:, :8], torch.tensor(GOLDEN_TEXT_HEAD), **close)
    torch.testing.assert_close(text.norm(dim=-1), torch.tensor(GOLDEN_TEXT_NORM), **close)
    assert scale.item() == pytest.approx(GOLDEN_LOGIT_SCALE_EXP, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint formats


@pytest.fixture(scope="module")
def tiny() -> CnClip:
    return _seeded_model(CnClipConfig.tiny())


def _assert_same_model(loaded: CnClip, original: CnClip) -> None:
    assert loaded.config == original.config
    assert not loaded.training
    for (key, a), (_, b) in zip(sorted(loaded.state_dict().items()), sorted(original.state_dict().items())):
        assert torch.equal(a, b), key
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(_images(64)), original.encode_image(_images(64)))
        torch.testing.assert_close(loaded.encode_text(TOKEN_IDS), original.encode_text(TOKEN_IDS))


def test_official_checkpoint_loads(tiny: CnClip, tmp_path: Path) -> None:
    # as cn_clip/training/main.py saves it (the model is DDP-wrapped, hence "module."); utils.create_model reads
    # checkpoint["state_dict"], strips "module." and drops bert.pooler.*, which older releases still carry
    state_dict = {f"module.{k}": v for k, v in tiny.state_dict().items()}
    state_dict["module.bert.pooler.dense.weight"] = torch.zeros(128, 128)
    state_dict["module.bert.pooler.dense.bias"] = torch.zeros(128)
    path = tmp_path / "clip_cn_tiny.pt"
    torch.save({"epoch": 3, "step": 120, "name": "pretrain", "state_dict": state_dict}, path)
    _assert_same_model(load_cn_clip_checkpoint(path), tiny)


def test_fine_tuning_checkpoint_with_optimizer_loads(tmp_path: Path) -> None:
    model = CnClip(CnClipConfig.tiny()).eval()
    model.load_state_dict(_seeded_state_dict(model.state_dict(), seed=5))
    names = [name for name, _ in model.named_parameters()]
    # the layout of torch.optim.AdamW(...).state_dict() after a step, written by hand: a real step costs seconds
    optimizer = {
        "state": {
            i: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.ones(3)}
            for i in range(len(names))
        },
        "param_groups": [
            {
                "lr": 5e-5,
                "betas": (0.9, 0.98),
                "eps": 1e-6,
                "weight_decay": 0.001,
                "amsgrad": False,
                "foreach": None,
                "maximize": False,
                "capturable": False,
                "differentiable": False,
                "fused": None,
                "params": list(range(len(names))),
            }
        ],
    }
    path = tmp_path / "epoch_latest.pt"
    torch.save(
        {
            "epoch": 1,
            "step": 7,
            "name": "finetune",
            "optimizer": optimizer,
            "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        },
        path,
    )
    _assert_same_model(load_cn_clip_checkpoint(path), model)


def test_plain_fp16_state_dict_loads_as_fp32(tiny: CnClip, tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in tiny.state_dict().items()}, path)
    loaded = load_cn_clip_checkpoint(path, config=CnClipConfig.tiny())
    assert loaded.text_projection.dtype == torch.float32
    torch.testing.assert_close(loaded.text_projection, tiny.text_projection, atol=2e-3, rtol=2e-3)


def test_extra_key_is_reported(tiny: CnClip, tmp_path: Path) -> None:
    path = tmp_path / "extra.pt"
    torch.save({"state_dict": {**tiny.state_dict(), "visual.extra.weight": torch.zeros(2)}}, path)
    with pytest.raises(CaptchalabError, match=r"extra\.pt.*unexpected keys: visual\.extra\.weight") as error:
        load_cn_clip_checkpoint(path)
    assert "\n" not in str(error.value)


def test_missing_key_is_reported(tiny: CnClip, tmp_path: Path) -> None:
    state_dict = dict(tiny.state_dict())
    del state_dict["bert.encoder.layer.1.output.dense.bias"]
    path = tmp_path / "missing.pt"
    torch.save({"state_dict": state_dict}, path)
    with pytest.raises(CaptchalabError, match=r"missing\.pt.*missing keys: bert\.encoder\.layer\.1\.output\.dense\.b"):
        load_cn_clip_checkpoint(path)


def test_wrong_config_is_reported(tiny: CnClip, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny.state_dict()}, path)
    with pytest.raises(CaptchalabError, match=r"tiny\.pt.*shape mismatches: .*text_projection"):
        load_cn_clip_checkpoint(
            path, config=CnClipConfig(embed_dim=64, vision=CnClipConfig.tiny().vision, text=CnClipConfig.tiny().text)
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, not a checkpoint\n", "not a PyTorch checkpoint"),
        (b"", "not a PyTorch checkpoint"),
        (None, "no such file"),
        ([1, 2, 3], "holds no state_dict"),
        ({"state_dict": {"foo": torch.zeros(1)}}, "not a Chinese-CLIP checkpoint"),
        ({"text_model.embeddings.word_embeddings.weight": torch.zeros(1)}, "load_hf_chinese_clip"),
    ],
)
def test_not_a_checkpoint_is_reported(content: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CaptchalabError, match=rf"weights\.pt.*{message}"):
        load_cn_clip_checkpoint(path)


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pt"
    torch.save({"state_dict": {}, "args": Path("x")}, path)  # arbitrary objects need an unsafe unpickle
    with pytest.raises(CaptchalabError, match=r"objects\.pt.*refusing"):
        load_cn_clip_checkpoint(path)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face ChineseCLIP folders (transformers is only needed to write them)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hf_folder_matches_transformers(weights: str, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="writing a ChineseCLIP folder needs transformers")
    hf_config = transformers.ChineseCLIPConfig(
        text_config={
            "vocab_size": 100,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    hf = transformers.ChineseCLIPModel(hf_config).eval()
    hf.load_state_dict(_seeded_state_dict(hf.state_dict()), strict=True)  # no zero biases hiding a wrong mapping
    if weights == "model.safetensors":
        hf.save_pretrained(tmp_path)
    else:
        hf.config.save_pretrained(tmp_path)
        torch.save(hf.state_dict(), tmp_path / weights)
    assert (tmp_path / weights).is_file()

    ours = load_hf_chinese_clip(tmp_path)
    assert ours.config.vision == VitVisionConfig(layers=2, width=32, heads=4, patch_size=8, image_resolution=32)
    assert (ours.config.text.heads, ours.config.embed_dim) == (4, 16)
    images = _images(32)
    with torch.no_grad():
        hf_image = hf.get_image_features(pixel_values=images)
        hf_text = hf.get_text_features(input_ids=TOKEN_IDS, attention_mask=(TOKEN_IDS != 0).long())
        hf_image = getattr(hf_image, "pooler_output", hf_image)  # transformers 5 returns an output object
        hf_text = getattr(hf_text, "pooler_output", hf_text)
        torch.testing.assert_close(ours.encode_image(images), hf_image, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode_text(TOKEN_IDS), hf_text, atol=1e-5, rtol=1e-5)
    assert ours.logit_scale.item() == hf.logit_scale.item()


def test_hf_folder_problems_are_reported(tmp_path: Path) -> None:
    with pytest.raises(CaptchalabError, match=r"config\.json: no such file"):
        load_hf_chinese_clip(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "chinese_clip"}))
    with pytest.raises(CaptchalabError, match="no model.safetensors or pytorch_model.bin"):
        load_hf_chinese_clip(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(CaptchalabError, match="model_type is 'clip'"):
        load_hf_chinese_clip(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Export towers, batching, sizes


def test_towers_return_normalised_encodings(tiny: CnClip) -> None:
    images = _images(64, batch=3)
    with torch.no_grad():
        image = tiny.encode_image(images)
        text = tiny.encode_text(TOKEN_IDS)
        image_features, text_features, _ = tiny(images, TOKEN_IDS)
        torch.testing.assert_close(ImageTower(tiny)(images), image / image.norm(dim=-1, keepdim=True))
        torch.testing.assert_close(TextTower(tiny)(TOKEN_IDS), text / text.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(image_features, ImageTower(tiny)(images).detach())
    torch.testing.assert_close(text_features.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(image.norm(dim=-1), torch.ones(3))  # encode_* stay raw


def test_batch_size_does_not_change_rows(tiny: CnClip) -> None:
    images = _images(64, batch=3)
    image_tower, text_tower = ImageTower(tiny), TextTower(tiny)
    with torch.no_grad():
        image_rows, text_rows = image_tower(images), text_tower(TOKEN_IDS)
        for i in range(3):
            torch.testing.assert_close(image_tower(images[i : i + 1])[0], image_rows[i], atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(text_tower(TOKEN_IDS[i : i + 1])[0], text_rows[i], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(text_rows[0], text_rows[1])


def test_towers_export_to_onnx_with_dynamic_batch(tiny: CnClip, tmp_path: Path) -> None:
    pytest.importorskip("onnx", reason="torch.onnx.export needs onnx")
    import onnxruntime

    ids = torch.cat([TOKEN_IDS, torch.zeros(3, 44, dtype=torch.long)], dim=1)  # (3, 52): the context length
    cases = ((ImageTower(tiny), _images(64, batch=3), "image"), (TextTower(tiny), ids, "token_ids"))
    for tower, example, name in cases:
        assert not tower.training  # follows the eval model, so export leaves it in eval mode
        path = tmp_path / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                tower,
                example[:2],
                str(path),
                input_names=[name],
                output_names=["features"],
                dynamic_axes={name: {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert not tiny.training
        with torch.no_grad():
            expected = tower(example).numpy()
        for rows in (slice(0, 1), slice(0, 3)):
            got = session.run(None, {name: example[rows].numpy()})[0]
            np.testing.assert_allclose(got, expected[rows], atol=1e-5, rtol=1e-4)


def test_padding_is_masked(tiny: CnClip) -> None:
    longer = torch.cat([TOKEN_IDS, torch.zeros(3, 4, dtype=torch.long)], dim=1)  # more trailing [PAD]
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_text(longer), tiny.encode_text(TOKEN_IDS), atol=1e-5, rtol=1e-5)


def test_rn50_sizes_match_the_official_model() -> None:
    # RN50.json + RBT3-chinese.json; the Chinese-CLIP README lists 77M parameters: 38M image side, 39M text side
    config = CnClipConfig.rn50()
    assert config.embed_dim == 1024 and config.preprocess().image_size == 224
    assert config.vision == ResNetVisionConfig(layers=(3, 4, 6, 3), width=64, heads=32, image_resolution=224)
    assert config.text == BertTextConfig(
        vocab_size=21128,
        hidden_size=768,
        layers=3,
        heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        context_length=52,
    )
    with torch.device("meta"):
        model = CnClip(config)
    image_side = sum(p.numel() for p in model.visual.parameters())
    text_side = sum(p.numel() for p in model.bert.parameters()) + model.text_projection.numel()
    assert (round(image_side / 1e6), round(text_side / 1e6), round((image_side + text_side + 1) / 1e6)) == (38, 39, 77)
    assert "bert.pooler.dense.weight" not in model.state_dict()
    assert config_from_state_dict(model.state_dict()) == config  # the head-count rule gives the official 32 / 12


def test_config_round_trips_through_json() -> None:
    for config in (CnClipConfig.rn50(), CnClipConfig.tiny(), GOLDEN_CONFIGS["vit"]):
        assert CnClipConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_frame_token_ids_follows_chinese_clip_tokenize() -> None:
    assert frame_token_ids([7, 8], cls_id=101, sep_id=102, context_length=6) == [101, 7, 8, 102, 0, 0]
    assert frame_token_ids(list(range(10, 20)), cls_id=101, sep_id=102, context_length=6) == [101, 10, 11, 12, 13, 102]
