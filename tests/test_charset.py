import pytest

from captchalab.data.charset import Charset, parse_charset_spec
from captchalab.errors import CaptchalabError


def test_presets_combine_in_order_without_duplicates():
    assert parse_charset_spec("digits") == "0123456789"
    assert parse_charset_spec("lower+digits") == "abcdefghijklmnopqrstuvwxyz0123456789"
    assert parse_charset_spec("digits+0123abc") == "0123456789abc"
    assert len(parse_charset_spec("alnum")) == 62


def test_empty_spec_is_a_user_error():
    with pytest.raises(CaptchalabError):
        parse_charset_spec("")


def test_from_labels_is_sorted_and_round_trips():
    charset = Charset.from_labels(["b2a", "a1"])
    assert charset.chars == "12ab"
    assert charset.decode(charset.encode("ba21")) == "ba21"
    assert charset.unknown("a9z") == "9z"
    assert "a" in charset and "z" not in charset
