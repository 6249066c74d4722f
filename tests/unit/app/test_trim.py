"""History trimming (policytune.app.chat.Chatbot.build_prompt): the same cut as dropping turns one by
one, in O(log n) chat-template renders instead of one render of the whole conversation per turn.

Only the tokenizer is needed (the tiny model's), so the Chatbot is built without a model or engine.
The reference below is the old loop, kept here as the specification of which turns are kept.
"""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from policytune.app.chat import Chatbot, ChatbotError, PromptCancelled
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT
from tests.helpers.chat import tiny_model_dir


@pytest.fixture(scope="module")
def tok(request, tmp_path_factory):
    from policytune.lm.adapters import load_tok

    return load_tok(tiny_model_dir(request.config, tmp_path_factory))


def chatbot(tok, context_tokens: int) -> Chatbot:
    return Chatbot(model=None, tokenizer=tok, engine=None, system_prompt=DEFAULT_SYSTEM_PROMPT,
                   context_tokens=context_tokens)


def counting(bot: Chatbot) -> list[int]:
    """Count the renders (and their message counts) of ``bot``'s encode."""
    calls: list[int] = []
    real = bot.encode

    def encode(messages):
        calls.append(len(messages))
        return real(messages)

    bot.encode = encode
    return calls


def reference(bot: Chatbot, messages: list[dict], max_new_tokens: int):
    """The old trimming loop: re-render after every dropped turn. (ids, kept messages, dropped)."""
    msgs = [dict(m) for m in messages]
    system = [msgs.pop(0)] if msgs[0]["role"] == "system" else [{"role": "system", "content": bot.system_prompt}]
    dropped = 0
    while True:
        ids = bot.encode(system + msgs)
        if len(ids) <= bot.context_tokens - max_new_tokens:
            return ids, system + msgs, dropped
        if len(msgs) == 1:
            raise ChatbotError("too long")
        msgs.pop(0)
        dropped += 1
        while len(msgs) > 1 and msgs[0]["role"] != "user":
            msgs.pop(0)
            dropped += 1


def conversation(n_turns: int, words: int = 6) -> list[dict]:
    out = []
    for i in range(n_turns):
        out += [{"role": "user", "content": f"Question number {i} about the travel policy " + "x " * words + "?"},
                {"role": "assistant", "content": f"Answer number {i} about the travel policy."}]
    return out + [{"role": "user", "content": "Who approves annual leave?"}]


MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]),
                                 "content": st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]),
                                                    max_size=60)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=st.lists(MESSAGE, max_size=30), question=st.text(min_size=1, max_size=80),
       system=st.booleans(), context=st.integers(20, 700), max_new=st.integers(1, 64))
def test_trimming_keeps_the_same_turns_as_dropping_them_one_by_one(tok, history, question, system, context, max_new):
    bot = chatbot(tok, context)
    messages = ([{"role": "system", "content": "Answer briefly."}] if system else []) + history + \
        [{"role": "user", "content": question}]
    try:
        want = reference(bot, messages, max_new)
    except ChatbotError:
        with pytest.raises(ChatbotError, match="exceeds the"):
            bot.build_prompt(messages, max_new_tokens=max_new)
        return
    got = bot.build_prompt(messages, max_new_tokens=max_new)
    assert (got.ids, got.messages, got.dropped) == want
    assert len(got.ids) + max_new <= context
    assert got.messages[0]["role"] == "system" and got.messages[-1]["content"] == question
    # maximal: keeping one more turn would not fit
    body = messages[1:] if system else messages
    if got.dropped:
        starts = [k for k in range(got.dropped) if k == 0 or body[k]["role"] == "user"]
        longer = got.messages[:1] + body[starts[-1]:]
        assert len(bot.encode(longer)) + max_new > context


def test_2001_turns_take_a_logarithmic_number_of_renders(tok):
    bot = chatbot(tok, 2048)
    calls = counting(bot)
    messages = conversation(2000)
    t0 = time.monotonic()
    prompt = bot.build_prompt(messages, max_new_tokens=64)
    seconds = time.monotonic() - t0
    assert prompt.dropped > 3000 and len(prompt.ids) + 64 <= 2048
    # the old loop rendered once per dropped turn (about 1,950 renders of up to 4,001 messages)
    assert len(calls) <= 2 * math.ceil(math.log2(2001)) + 3 and len(calls) == prompt.renders
    kept = len(prompt.messages)
    assert sum(calls) <= len(messages) + 1 + 6 * kept * math.ceil(math.log2(kept)), calls
    assert seconds < 10
    # the same cut the old loop finds (it is slow: checked on a shorter conversation)
    short = conversation(150)
    want = reference(bot, short, 64)
    got = bot.build_prompt(short, max_new_tokens=64)
    assert (got.ids, got.messages, got.dropped) == want


def test_a_fitting_conversation_is_rendered_once(tok):
    bot = chatbot(tok, 2048)
    calls = counting(bot)
    prompt = bot.build_prompt(conversation(3), max_new_tokens=64)
    assert prompt.dropped == 0 and calls == [1 + 7] and prompt.renders == 1


def test_trimming_stops_when_the_client_is_gone(tok):
    bot = chatbot(tok, 2048)
    calls = counting(bot)
    asked = []

    def gone() -> bool:
        asked.append(1)
        return len(asked) > 2  # gone after two renders

    with pytest.raises(PromptCancelled):
        bot.build_prompt(conversation(2000), max_new_tokens=64, gone=gone)
    assert len(calls) == 2
