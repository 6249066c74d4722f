"""Assistant-only labels: every assistant token and only those carry loss; the prompt's ids are
exactly those inference feeds; clear errors for templates, rows and lengths that cannot train."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policytune.training.config import TrainError
from policytune.training.encode import IGNORE, Example, encode_conversation, encode_rows
from policytune.training.lora import load_tokenizer
from tests.helpers.training import conv

USER_TEXT = st.lists(st.text(alphabet="abcfghjkqw.,?", min_size=1, max_size=8), min_size=1, max_size=6).map(" ".join)
ASSISTANT_TEXT = st.lists(st.text(alphabet="KLMNOP0123", min_size=1, max_size=8), min_size=0, max_size=6).map(" ".join)


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(USER_TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(USER_TEXT)})
        msgs.append({"role": "assistant", "content": draw(ASSISTANT_TEXT)})
    return msgs


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of labelled positions."""
    runs, start = [], None
    for i, t in enumerate(labels + [IGNORE]):
        if t != IGNORE and start is None:
            start = i
        elif t == IGNORE and start is not None:
            runs.append((start, i))
            start = None
    return runs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(msgs=conversations())
def test_labels_only_on_assistant_tokens(tokenizer, msgs):
    ids, labels = encode_conversation(tokenizer, msgs)
    assert len(ids) == len(labels)
    # labels are either IGNORE or the token itself
    assert all(lab in (IGNORE, t) for t, lab in zip(ids, labels))
    render = lambda m, gen: tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=gen)
    assert tokenizer.decode(ids) == render(msgs, False).rstrip()
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    runs = _runs(labels)
    assert len(runs) == len(turns)  # one labelled run per assistant turn, nothing else labelled
    for i, (start, end) in zip(turns, runs):
        assert end > start  # never an empty label mask
        prompt = render(msgs[:i], True)
        assert tokenizer.decode(ids[:start]) == prompt
        assert tokenizer.decode(ids[:end]) == prompt + msgs[i]["content"] + "<|im_end|>"
        # no character of a user/system message is ever labelled
        assert not set(tokenizer.decode(ids[start:end])) & set("abcfghjkqw,?")
    # the first prompt is exactly what inference feeds the model
    inference = tokenizer.apply_chat_template(msgs[:turns[0]], add_generation_prompt=True, tokenize=True)
    inference = inference["input_ids"] if hasattr(inference, "keys") else inference
    assert ids[:runs[0][0]] == list(inference)
    assert Example(ids, labels, 0).n_labels == sum(e - s for s, e in runs)


def test_non_prefix_consistent_template_is_an_error(tiny_model_dir):
    tok = load_tokenizer(str(tiny_model_dir))
    # a template that drops earlier assistant turns from the history (like "thinking" templates)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                         "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    msgs = conv("q", "a") + [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    with pytest.raises(TrainError, match="prefix-consistent"):
        encode_conversation(tok, msgs)


def test_conversation_without_assistant_is_an_error(tokenizer):
    with pytest.raises(TrainError, match="no assistant"):
        encode_conversation(tokenizer, [{"role": "user", "content": "hello"}])


def test_overlong_rows_error_or_counted_drop(tokenizer):
    rows = [{"qa_id": "long", "messages": conv("word " * 200, "short", system="s")},
            {"messages": conv("q", "a " * 50, system="s")}]
    with pytest.raises(TrainError, match=r"qa_id long.*max_length 64.*prompt alone"):
        encode_rows(tokenizer, rows, 64, "error", "train")
    with pytest.raises(TrainError, match=r"row 1: .*answer would be cut"):
        encode_rows(tokenizer, rows[1:], 64, "error", "train")
    ex, stats = encode_rows(tokenizer, rows + [{"messages": conv("q", "a", system="s")}], 64, "drop", "train")
    assert len(ex) == 1 and stats["dropped_overlong"] == 2
    assert stats["prompt_too_long"] == 1 and stats["answer_too_long"] == 1
