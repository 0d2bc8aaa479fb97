"""Folding names and descriptions for search: examples, then properties over any text."""

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orthanc_nas.normalize import FIELD_SEPARATOR, fold, search_text, terms


@pytest.mark.parametrize("stored, folded", [
    ("DOE^JOHN", "doe john"),
    ("doe^john", "doe john"),
    ("Müller", "muller"),
    ("MÜLLER", "muller"),
    ("García Márquez^José Luis", "garcia marquez jose luis"),
    ("Buc^Jérôme", "buc jerome"),
    ("Äneas^Rüdiger", "aneas rudiger"),
    ("Straße", "strasse"),
    ("Søren^Kierkegård", "soren kierkegard"),
    ("Łódź", "lodz"),
    ("Ærøe^Œdipe", "aeroe oedipe"),
    ("Διονύσιος", "διονυσιοσ"),           # tonos dropped, final sigma folded
    ("ΔΙΟΝΥΣΙΟΣ", "διονυσιοσ"),
    ("ЛЮКСЕМБУРГ", "люксембург"),
    ("ᾳ", "αι"), ("ΑΙ", "αι"),             # iota subscript: as upper case writes it
    ("ﾔﾏﾀﾞ^ﾀﾛｳ", "ヤマダ タロウ"),           # half-width katakana, voicing mark kept
    ("ヤマダ", "ヤマダ"),
    ("Yamada^Tarou=山田^太郎=やまだ^たろう", "yamada tarou 山田 太郎 やまだ たろう"),
    ("홍^길동", "홍 길동"),                # Hangul stays composed
    ("  DOE ^^ JOHN  ", "doe john"),
    ("ﬁbula", "fibula"),
    ("", ""),
    (None, ""),
])
def test_fold_examples(stored, folded):
    assert fold(stored) == folded


def test_terms_fold_split_and_deduplicate():
    assert terms("  José  GARCIA jose ") == ["jose", "garcia"]
    assert terms("doe^john") == ["doe", "john"]
    assert terms(None) == terms("") == terms(" ^ ") == []


def test_search_text_keeps_fields_apart():
    text = search_text(["DOE^JOHN", "ID 7", None, "Thorax"])
    assert text.split(FIELD_SEPARATOR) == ["doe john", "id 7", "", "thorax"]


@given(st.text())
def test_fold_is_idempotent(text):
    assert fold(fold(text)) == fold(text)


@given(st.text())
def test_fold_ignores_case(text):
    assert fold(text.upper()) == fold(text.lower()) == fold(text)


@given(st.text())
def test_folded_text_is_single_spaced(text):
    folded = fold(text)
    assert folded == " ".join(folded.split())
    assert "^" not in folded and FIELD_SEPARATOR not in folded


# Combining diacritics, except the Greek iota subscript: case folding makes it the letter iota
MARKS = st.sampled_from([chr(c) for c in range(0x300, 0x370)
                         if unicodedata.category(chr(c)) == "Mn" and c != 0x345])
ASCII_WORD = st.text(st.characters(min_codepoint=ord("a"), max_codepoint=ord("z")), min_size=1, max_size=12)


@given(st.lists(st.tuples(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                          st.lists(MARKS, max_size=2)), min_size=1, max_size=12))
def test_fold_ignores_accents(letters):
    plain = "".join(letter for letter, _ in letters)
    accented = unicodedata.normalize("NFC", "".join(letter + "".join(marks) for letter, marks in letters))
    assert fold(accented) == fold(plain) == plain.lower()


@given(st.lists(ASCII_WORD, min_size=1, max_size=4), st.sampled_from(["^", " ", "^^", " ^ ", "\t", "="]))
def test_person_name_delimiters_count_as_spaces(parts, delimiter):
    assert fold(delimiter.join(parts)) == " ".join(parts)


@given(st.lists(st.text(max_size=20), min_size=4, max_size=4), st.text(min_size=1))
def test_a_term_never_spans_two_fields(fields, query):
    text = search_text(fields)
    for term in terms(query):
        found_in_text = term in text
        found_in_a_field = any(term in fold(field) for field in fields)
        assert found_in_text == found_in_a_field
