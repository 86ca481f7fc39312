"""Stanford Alpaca's instruction filters, each with its own reason."""

import pytest

from alpacakit.config import FilterConfig
from alpacakit.generate.filters import InstructionFilter

F = InstructionFilter(FilterConfig())


@pytest.mark.parametrize(
    "instruction,reason",
    [
        ("Summarise this short text.", None),
        ("Say hello now", "too_short"),  # 3 words
        ("word " * 151, "too_long"),
        ("Describe the image below in detail.", "blacklisted_word"),
        ("Describe the IMAGES below in detail.", "blacklisted_word"),
        ("Explain how to go to the station quickly.", "blacklisted_word"),
        ("Explain the imagery of this poem briefly.", None),  # whole words only
        ("Name three files commonly found on desktops.", "blacklisted_word"),
        ("Write a program that sorts a list.", "banned_prefix"),
        ('"Quote" this sentence back to me.', "starts_with_punctuation"),
        ("Ésta es una instrucción en español.", "starts_non_ascii"),
    ],
)
def test_default_filters(instruction, reason):
    assert F.reason(instruction.strip()) == reason


def test_filters_are_configurable():
    f = InstructionFilter(FilterConfig(min_words=1, blacklist=[], banned_prefixes=[]))
    assert f.reason("Draw") is None
    assert f.reason("Write a program to add numbers.") is None
