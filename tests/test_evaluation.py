from captchalab.evaluation import edit_distance, ocr_report


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance("abc", "abc") == 0


def test_report_counts_exact_chars_and_confusions():
    report = ocr_report(["abcd", "abce", "xbc"], ["abcd", "abcd", "abcd"])
    assert report["exact_accuracy"] == 1 / 3
    assert report["char_accuracy"] == 1 - (0 + 1 + 2) / 12
    assert report["top_confusions"][0] == {"true": "d", "predicted": "e", "count": 1}


def test_case_insensitive_report():
    assert ocr_report(["AbC"], ["abc"], case_sensitive=False)["exact_accuracy"] == 1.0
    assert ocr_report(["AbC"], ["abc"], case_sensitive=True)["exact_accuracy"] == 0.0
