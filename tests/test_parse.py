"""The self-instruct parser accepts what small teachers really write and never crashes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alpacakit.generate.parse import parse_tasks

WELL_FORMED = """ Suggest two names for a bakery.
4. Input:
<noinput>
4. Output:
Rise & Shine; The Daily Crumb.
###
5. Instruction: Classify the sentiment of the review.
5. Input:
The soup was cold and the waiter ignored us.
5. Output:
Negative
###
6. Instruction: Name the largest planet."""


def test_continuation_is_split_into_numbered_tasks():
    tasks, discards = parse_tasks(WELL_FORMED + "\n6. Input:\n<noinput>\n6. Output:\nJupiter\n", 4, "stop")
    assert [t.instruction for t in tasks] == [
        "Suggest two names for a bakery.",
        "Classify the sentiment of the review.",
        "Name the largest planet.",
    ]
    assert tasks[0].input == "" and tasks[1].input.startswith("The soup")
    assert tasks[2].output == "Jupiter"
    assert discards == []


def test_last_task_dropped_when_response_hit_token_limit():
    tasks, discards = parse_tasks(WELL_FORMED + "\n6. Input:\n<noinput>\n6. Output:\nJupi", 4, "length")
    assert len(tasks) == 2
    assert [d.reason for d in discards] == ["truncated"]


def test_task_without_output_is_counted_malformed():
    tasks, discards = parse_tasks(WELL_FORMED, 4, "stop")
    assert len(tasks) == 2
    assert [d.reason for d in discards] == ["malformed"]


def test_drifting_labels_are_accepted():
    text = (
        " Translate 'good morning' into Spanish.\nInput: <noinput>\nOutput: Buenos días.\n\n"
        "Task 5: Instruction: Give a synonym for happy.\nOutput: Joyful\n"
    )
    tasks, _ = parse_tasks(text, 4, "stop")
    assert [(t.instruction, t.input, t.output) for t in tasks] == [
        ("Translate 'good morning' into Spanish.", "", "Buenos días."),
        ("Give a synonym for happy.", "", "Joyful"),
    ]


def test_chat_preamble_is_ignored():
    text = "Sure! Here are more tasks:\n\n4. Instruction: Define photosynthesis.\n4. Input:\n<noinput>\n4. Output:\nPlants make sugar from light.\n"
    tasks, discards = parse_tasks(text, 4, "stop", continues_prompt=False)
    assert [t.instruction for t in tasks] == ["Define photosynthesis."]
    assert discards == []


def test_empty_output_is_a_discard():
    tasks, discards = parse_tasks(" List three colours.\n4. Input:\n<noinput>\n4. Output:\n###", 4, "stop")
    assert tasks == [] and [d.reason for d in discards] == ["empty_output"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(list("ab #.:\n4<>") + ["Instruction:", "Input:", "Output:", "###", "\n5. ", "<noinput>"]),
        max_size=80,
    ).map("".join),
    st.sampled_from(["stop", "length"]),
    st.booleans(),
)
@pytest.mark.slow
def test_parser_never_raises_and_accounts_for_every_chunk(text, finish, continues):
    tasks, discards = parse_tasks(text, 4, finish, continues_prompt=continues)
    for t in tasks:
        assert t.instruction and t.output
    assert all(d.reason in {"malformed", "truncated", "empty_instruction", "empty_output"} for d in discards)


def test_commentary_after_a_separator_is_not_part_of_the_output():
    # Qwen-Coder wrote this: a remark on the ### line, then restarted its numbering.
    text = (
        " Rewrite the sentence in another tense.\n6. Input:\nHe is going to the park.\n6. Output:\n"
        "He went to the park.\n### (Repeat the pattern 5 more times, ensuring variety.)\n"
        "1. Instruction: Summarize a paragraph.\n2. Input:\nA long text.\n2. Output:\nShort.\n###\n"
    )
    kept, discards = parse_tasks(text, 5, "stop")
    assert [t.output for t in kept] == ["He went to the park.", "Short."]
    assert [t.instruction for t in kept][1] == "Summarize a paragraph."
    assert discards == []


@settings(max_examples=2000, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            ["#", "#", "#", " ", "\n", "\t", "\r", "a", ".", "\u00a0", "\u2028", "\x1c", "\x85", "\u3000", "\u200b"]
        )
    )
)
def test_the_separator_walk_strips_exactly_what_the_regex_strips(text):
    from alpacakit.generate.parse import _TRAILING, _strip_separators

    assert _strip_separators(text) == _TRAILING.sub("", text)
