import numpy as np
import pytest

from captchalab.runtime.decode import decode


def _log_probs(steps: list[int], classes: int = 4) -> np.ndarray:
    probs = np.full((1, len(steps), classes), 0.01, dtype=np.float32)
    for t, k in enumerate(steps):
        probs[0, t, k] = 1.0 - 0.01 * (classes - 1)
    return np.log(probs)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    # classes: 0 blank, 1 'a', 2 'b', 3 'c'
    ((text, conf),) = decode(_log_probs([1, 1, 0, 1, 2, 2, 0, 0, 3]), "abc", "ctc-greedy")
    assert text == "aabc"
    assert 0.0 < conf < 1.0


def test_fixed_decoder_keeps_repeats_and_drops_padding():
    ((text, _),) = decode(_log_probs([1, 1, 3, 0]), "abc", "fixed")
    assert text == "aac"


def test_confidence_is_path_probability():
    lp = np.log(np.array([[[0.1, 0.9], [0.8, 0.2]]], dtype=np.float32))
    ((_, conf),) = decode(lp, "x", "ctc-greedy")
    assert conf == pytest.approx(0.9 * 0.8, rel=1e-5)


def test_unknown_decoder():
    with pytest.raises(ValueError):
        decode(_log_probs([1]), "abc", "beam")


def test_case_folding_merges_letter_cases_before_the_argmax():
    from captchalab.runtime.decode import project

    # one step where blank (0.4) beats 'c' (0.3) and 'C' (0.3) separately, but not their sum
    lp = np.log(np.array([[[0.4, 0.3, 0.3, 0.0 + 1e-9]]], dtype=np.float32))
    assert decode(lp, "cC7", "ctc-greedy")[0][0] == ""
    folded, chars = project(lp, "cC7", None, fold=True)
    assert chars == "c7" and folded.shape == (1, 1, 3)
    ((text, conf),) = decode(folded, chars, "ctc-greedy")
    assert text == "c" and conf == pytest.approx(0.6, rel=1e-4)


def test_restricting_drops_classes_and_renormalises():
    from captchalab.runtime.decode import project

    # a '0' drawn like an 'O': 'O' wins among all classes, '0' once the alphabet is a-z0-9
    lp = np.log(np.array([[[0.1, 0.5, 0.3, 0.1]]], dtype=np.float32))  # blank, 'O', '0', 'o'
    assert decode(lp, "O0o", "ctc-greedy")[0][0] == "O"
    kept, chars = project(lp, "O0o", "0o", fold=False)
    assert chars == "0o" and kept.shape == (1, 1, 3)
    np.testing.assert_allclose(np.exp(kept).sum(-1), 1.0, rtol=1e-5)
    ((text, conf),) = decode(kept, chars, "ctc-greedy")
    assert text == "0" and conf == pytest.approx(0.6, rel=1e-4)


def test_allowed_chars_reads_presets_and_names_what_the_model_lacks():
    from captchalab.errors import CaptchalabError
    from captchalab.runtime.decode import allowed_chars

    model = "abcxyzABC0123"
    assert allowed_chars("lower+digits", model) == "abcxyz0123"
    assert allowed_chars("digits", model) == "0123"
    assert allowed_chars("cA", model) == "cA"
    assert allowed_chars("Z", "abcz") == "z"  # the other case counts where the model has only one
    with pytest.raises(CaptchalabError, match="cannot output any"):
        allowed_chars("%", model)


def _steps(chars: str, spec: list[dict[str, float]]) -> np.ndarray:
    """One image: per step a {char: probability} dict ('' = blank); the rest of the mass spread thinly."""
    probs = np.full((1, len(spec), len(chars) + 1), 1e-4, dtype=np.float64)
    for t, step in enumerate(spec):
        for c, p in step.items():
            probs[0, t, 0 if c == "" else chars.index(c) + 1] = p
    probs /= probs.sum(-1, keepdims=True)
    return np.log(probs).astype(np.float32)


MIXED = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ROUND = {"O": 0.55, "0": 0.45}  # a glyph the model finds as likely a capital O as a zero


def test_choose_alphabets_reads_a_round_glyph_by_its_company():
    from captchalab.runtime.decode import allowed_chars, choose_alphabets, project

    alphabets = [allowed_chars(s, MIXED) for s in ("lower+digits", "upper+digits", "alnum")]
    blank = {"": 1.0}
    lower = _steps(MIXED, [{"k": 1.0}, blank, {"w": 1.0}, blank, ROUND, blank, {"q": 1.0}, blank, {"h": 1.0}])
    upper = _steps(MIXED, [{"K": 1.0}, blank, {"R": 1.0}, blank, ROUND, blank, {"T": 1.0}, blank, blank])
    mixed = _steps(MIXED, [{"K": 1.0}, blank, {"r": 1.0}, blank, ROUND, blank, {"T": 1.0}, blank, {"h": 1.0}])
    chosen = choose_alphabets(np.concatenate([lower, upper, mixed]), MIXED, alphabets)
    assert chosen.tolist() == [0, 1, 2]
    assert decode(lower, MIXED, "ctc-greedy")[0][0] == "kwOqh"  # any character: the capital wins
    kept, chars = project(lower, MIXED, alphabets[0], fold=False)
    assert decode(kept, chars, "ctc-greedy")[0][0] == "kw0qh"
    # a strong enough prior for the mixed alphabet outweighs four clear lower-case letters
    assert choose_alphabets(lower, MIXED, alphabets, priors=[0.001, 0.001, 0.998]).tolist() == [2]


def test_auto_output_space_uses_the_training_alphabets_or_nothing():
    from captchalab.runtime.ocr import OutputSpace

    priors = {"lower+digits": 0.2, "upper+digits": 0.2, "alnum": 0.6}
    space = OutputSpace.make(MIXED, True, False, "auto", priors)
    assert len(space.alphabets) == 3 and space.priors == pytest.approx((0.2, 0.2, 0.6))
    assert space.chars == OutputSpace.make(MIXED, True, False, "any").chars  # auto may still read any character
    lower = _steps(MIXED, [{"k": 1.0}, {"": 1.0}, {"w": 1.0}, {"": 1.0}, ROUND, {"": 1.0}, {"q": 1.0}])
    assert space.readings(lower, "ctc-greedy")[0].text == "kw0q"
    assert OutputSpace.make(MIXED, True, False, "any", priors).readings(lower, "ctc-greedy")[0].text == "kwoq"
    # no training alphabets (a model trained on one alphabet), or all alike for this model: nothing to infer
    assert OutputSpace.make(MIXED, True, True, "auto", None).alphabets == ()
    assert OutputSpace.make("abc012", False, True, "auto", {"lower+digits": 1, "alnum": 1}).alphabets == ()


def test_parse_alphabets_normalises_priors_and_names_mistakes():
    from captchalab.data.charset import parse_alphabets
    from captchalab.errors import CaptchalabError

    assert parse_alphabets("lower+digits:1,upper+digits:1,alnum:2") == {
        "lower+digits": 0.25, "upper+digits": 0.25, "alnum": 0.5}  # fmt: skip
    assert parse_alphabets("digits, lower") == {"digits": 0.5, "lower": 0.5}
    for bad, message in (("alnum:x", "must be a number"), ("alnum:0", "positive"), (" , ", "no alphabet")):
        with pytest.raises(CaptchalabError, match=message):
            parse_alphabets(bad)


def test_project_restricts_and_folds_in_one_step():
    from captchalab.runtime.decode import project

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    chars, allowed = "oO0aAb", "oO0A"
    both, out = project(lp, chars, allowed, fold=True)
    one_by_one, out2 = project(*project(lp, chars, allowed, fold=False), None, fold=True)
    assert out == out2 == "o0a"
    np.testing.assert_allclose(both, one_by_one, atol=1e-5)


def test_project_survives_a_step_where_every_allowed_class_is_very_unlikely():
    from captchalab.runtime.decode import project

    # the model is sure of 'X' (not allowed); the allowed classes sit near -200, where float32 exp() is 0
    lp = np.array([[[-200.0, 0.0, -201.0, -199.0]]], dtype=np.float32)  # blank, 'X', '0', 'o'
    kept, chars = project(lp, "X0o", "0o", fold=False)
    assert chars == "0o" and np.isfinite(kept).all()
    assert decode(kept, chars, "ctc-greedy")[0][0] == "o"
