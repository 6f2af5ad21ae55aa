"""Grid model pieces: tokenizer, EfficientNet-Lite trunk, gridclip, contrastive loss, rule calibration."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import random_grid_truth

from captchalab.errors import CaptchalabError
from captchalab.export.grid_calibrate import (
    best_threshold,
    calibrate,
    count_solved,
    fit_rule,
    fit_slope,
    simulate_grids,
)
from captchalab.models.effnet_lite import EfficientNetLiteTrunk, load_imagenet_weights, pretrained_weights_path
from captchalab.models.gridclip import GridClip, GridClipConfig
from captchalab.runtime.grid_rules import RuleParams, pick, rule_scores
from captchalab.runtime.tokenizer import BertTokenizer, build_char_vocab, frame_token_ids, write_vocab
from captchalab.training.grid import contrastive_loss, retrieval_metrics


@pytest.fixture()
def tokenizer(tmp_path: Path) -> BertTokenizer:
    write_vocab(build_char_vocab(["猫", "热狗", "自行车"]), tmp_path / "vocab.txt")
    return BertTokenizer(tmp_path / "vocab.txt", context_length=8)


def test_tokenizer_frames_chinese_characters_like_chinese_clip(tokenizer: BertTokenizer):
    ids = tokenizer.encode(["热狗", "猫"])
    vocab = tokenizer.vocab
    assert ids.shape == (2, 8) and ids.dtype == np.int64
    assert ids[0].tolist() == [vocab["[CLS]"], vocab["热"], vocab["狗"], vocab["[SEP]"], 0, 0, 0, 0]
    assert ids[1].tolist() == frame_token_ids([vocab["猫"]], vocab["[CLS]"], vocab["[SEP]"], 8)


def test_tokenizer_lowercases_spells_latin_and_marks_unknown(tokenizer: BertTokenizer):
    assert tokenizer.encode(["CAT"]).tolist() == tokenizer.encode(["cat"]).tolist()
    assert tokenizer.unk_id not in tokenizer.wordpieces("cat")  # c ##a ##t
    assert tokenizer.unknown_fraction("龙") == 1.0
    assert tokenizer.unknown_fraction("猫") == 0.0
    long = tokenizer.encode(["猫" * 20])[0]
    assert long[-1] == tokenizer.sep_id  # truncated inside the frame


def test_tokenizer_rejects_a_vocab_without_specials(tmp_path: Path):
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(CaptchalabError, match=r"\[UNK\]"):
        BertTokenizer(tmp_path / "vocab.txt")


def test_imagenet_weights_fill_every_trunk_parameter():
    trunk = EfficientNetLiteTrunk(11)
    load_imagenet_weights(trunk)
    reference = torch.load(pretrained_weights_path(), map_location="cpu", weights_only=True)
    for name, tensor in trunk.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    assert trunk.out_channels == 112 and trunk.stride == 16


def test_gridclip_shapes_and_padding_does_not_matter():
    config = GridClipConfig(vocab_size=50, image_size=32, trunk_blocks=3, embed_dim=16, text_width=32, text_heads=2)
    model = GridClip(config).eval()
    images, ids = torch.randn(3, 3, 32, 32), torch.tensor([[2, 7, 8, 3, 0, 0]])
    image_features, text_features, scale = model(images, ids)
    assert image_features.shape == (3, 16) and text_features.shape == (1, 16)
    assert torch.allclose(image_features.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-4)
    longer = torch.tensor([[2, 7, 8, 3, 0, 0, 0, 0, 0]])
    assert torch.allclose(model.encode_text(ids), model.encode_text(longer), atol=1e-5)


def test_contrastive_loss_matches_the_formula_and_keeps_same_text_cells_positive():
    images = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    labels, scale = torch.tensor([0, 0, 1, 2]), torch.tensor(10.0)
    logits = scale * images @ texts.T
    i2t = torch.nn.functional.cross_entropy(logits, labels)
    log_probs = logits.T.log_softmax(dim=1)
    t2i = -torch.stack([(log_probs[0, 0] + log_probs[0, 1]) / 2, log_probs[1, 2], log_probs[2, 3]]).mean()
    assert contrastive_loss(images, texts, labels, scale).item() == pytest.approx(((i2t + t2i) / 2).item(), rel=1e-5)
    # two images of one text are never each other's negatives: making them identical costs nothing in i2t
    same = images.clone()
    same[1] = same[0]
    assert torch.isfinite(contrastive_loss(same, texts, labels, scale))


def test_retrieval_metrics_on_perfect_features():
    texts = torch.eye(3)
    images = texts[[0, 1, 2, 2]]
    metrics = retrieval_metrics(images, ["a", "b", "c", "c"], ["a", "b", "c"], texts)
    assert metrics["i2t_accuracy"] == 1.0 and metrics["t2i_recall@1"] == 1.0


def test_best_threshold_sits_between_the_worst_negative_and_positive():
    threshold, solved = best_threshold(np.array([0.1, 0.2, 0.3]), np.array([0.4, 0.6, 0.7]))
    assert solved == 3 and 0.3 < threshold <= 0.4
    threshold, solved = best_threshold(np.array([0.1, 0.5]), np.array([0.4, 0.45]))  # second grid unsolvable
    assert solved == 1 and 0.1 < threshold <= 0.4


def test_simulated_grids_follow_the_generator_rules():
    texts = [w for w in "abcdefgh" for _ in range(5)]
    grids = simulate_grids(texts, count=200, seed=1, related={"a": ["b"]})
    for prompt, rows, truth in zip(grids.prompts, grids.cells, grids.truth, strict=True):
        assert len(rows) in (6, 9) and 1 <= truth.sum() <= 4
        labels = [texts[r] for r in rows]
        assert all((label == prompt) == t for label, t in zip(labels, truth, strict=True))
        if prompt == "a":
            assert "b" not in labels


def test_calibration_finds_a_perfect_rule_on_separable_vectors():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(12)]
    centres = np.linalg.qr(rng.normal(size=(32, 12)))[0].T  # 12 orthonormal directions
    texts = [w for w in words for _ in range(6)]
    images = np.stack([centres[words.index(w)] + 0.05 * rng.normal(size=32) for w in texts])
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    decision = calibrate(images, texts, dict(zip(words, centres, strict=True)), logit_scale=50.0, count=500)
    assert decision["rules"][decision["rule"]]["valid_solve_rate"] == 1.0
    params = RuleParams.from_dict(decision["rules"]["threshold"])
    scores = rule_scores("threshold", images[:6] @ centres[0], images[:6] @ centres[1:].T, 50.0)
    picked, probabilities, unsure = pick(scores, params, 0.3)
    assert picked == [0, 1, 2, 3, 4, 5] and min(probabilities) > 0.5 and not unsure


def test_fit_slope_is_steep_for_separated_scores():
    scores = np.array([0.1, 0.2, 0.25, 0.6, 0.7, 0.8])
    assert fit_slope(scores, np.array([0, 0, 0, 1, 1, 1]), 0.4) > 20


def test_pick_always_answers_and_flags_doubt():
    params = RuleParams(threshold=0.5, slope=10.0)
    picked, _, unsure = pick(np.array([0.1, 0.2, 0.3]), params, 0.3)
    assert picked == [2] and unsure


def test_relative_rule_picks_cells_near_the_best_and_probabilities_agree():
    params = RuleParams(threshold=0.5, slope=20.0, relative=0.1)
    scores = np.array([0.42, 0.35, 0.1, 0.3, 0.05, 0.2])  # a new style: no cell reaches 0.5
    picked, probabilities, unsure = pick(scores, params, 0.3)
    assert picked == [0, 1] and unsure  # within 0.1 of the best; nothing reached the absolute threshold
    assert [i for i, p in enumerate(probabilities) if p > 0.5] == [0, 1]
    picked, _, _ = pick(np.array([0.9, 0.6, 0.1, 0.55, 0.2, 0.3]), params, 0.3)
    assert picked == [0, 1, 3]  # the threshold still picks on its own
    old = RuleParams.from_dict({"threshold": 0.5, "slope": 20.0})  # manifests written before ``relative``
    assert old.relative == 0.0 and pick(scores, old, 0.3)[0] == [0]


def shifted_grids(seed: int, count: int = 300) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Half the grids in-distribution (matches ~0.85, hard negatives up to 0.6), half in a new style whose matches
    fell to ~0.4 together (negatives below 0.2): no single threshold solves both halves."""
    rng = np.random.default_rng(seed)
    scores, truths = [], []
    for g in range(count):
        truth = random_grid_truth(rng, g)
        size = len(truth)
        if g % 4 < 2:
            s = np.where(truth, rng.uniform(0.8, 0.9, size), rng.uniform(0.2, 0.6, size))
        else:
            s = np.where(truth, rng.uniform(0.37, 0.43, size), rng.uniform(-0.2, 0.2, size))
        scores.append(s)
        truths.append(truth)
    return scores, truths


def test_fit_rule_is_exact_and_finds_the_relative_margin_a_style_shift_needs():
    scores, truths = shifted_grids(0)
    threshold, relative, solved = fit_rule(scores, truths, np.zeros(1))
    assert solved == count_solved(scores, truths, RuleParams(threshold, 1.0)) < 0.7 * len(truths)
    threshold, relative, solved = fit_rule(scores, truths)
    assert solved == len(truths) == count_solved(scores, truths, RuleParams(threshold, 1.0, relative=relative))
    assert 0.06 <= relative < 0.2
    rng = np.random.default_rng(1)  # random scores: the reported count is what the runtime's rule does
    noisy = [rng.normal(size=len(t)) + t for t in truths]
    threshold, relative, solved = fit_rule(noisy, truths)
    assert solved == count_solved(noisy, truths, RuleParams(threshold, 1.0, relative=relative)) > 0
    for other in (0.0, 0.05, 0.3):
        assert solved >= fit_rule(noisy, truths, np.array([other]))[2]
