"""augment back translation: the Apertium, Google and teacher engines and their failures."""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

from policytune.dataset import translate as T
from policytune.dataset.augment_ops import numbers_of
from policytune.lm.backends import Completion
from tests.helpers.augment_rows import HAVE_APERTIUM, QUESTIONS, needs_apertium


@pytest.fixture(scope="module")
def apertium():
    if not HAVE_APERTIUM:
        pytest.skip("needs `apt-get install apertium apertium-eng-spa`")
    return T.ApertiumEngine(T.BackTranslationConfig(timeout_s=60))


@needs_apertium
def test_apertium_round_trip_changes_wording_keeps_numbers(apertium):
    res = apertium.translate_batch(QUESTIONS)
    assert len(res) == len(QUESTIONS)
    changed = 0
    for q, (text, reason) in zip(QUESTIONS, res):
        assert text and not reason
        assert numbers_of(text) == numbers_of(q), (q, text)
        assert "*" not in text and "#" not in text
        changed += text != q
    assert changed >= 3


@needs_apertium
def test_apertium_batch_keeps_alignment(apertium):
    odd = ["", "   ", "Line one.\nStill line one.", "[x] {y} <b> a\\b ^$ /* @#", "Résumé café?"]
    texts = QUESTIONS + odd + QUESTIONS[::-1]
    batched = apertium.translate_batch(texts)
    assert batched == apertium.translate_batch(texts[::-1])[::-1]  # neighbours do not matter
    assert batched[5:7] == [("", ""), ("", "")]
    for i in (7, 8, 9):  # the odd ones one at a time: same as inside the batch
        assert apertium.translate_batch([texts[i]]) == [batched[i]]


def test_apertium_bisects_on_misaligned_output(monkeypatch):
    eng = T.ApertiumEngine.__new__(T.ApertiumEngine)
    eng.cfg = T.BackTranslationConfig(batch_size=64)
    eng.fwd, eng.back = "eng-spa", "spa-eng"

    def fake_run(mode, lines):  # batches with a poisoned line come back one line short
        if any("POISON" in x for x in lines):
            return None  # line count out of step, even for the poisoned line alone
        return [x.upper() if mode == "eng-spa" else x.lower().replace("?", "!") for x in lines]

    monkeypatch.setattr(eng, "_run", fake_run)
    texts = [f"text {i}?" for i in range(10)] + ["POISON"] + [f"more {i}?" for i in range(5)]
    res = eng.translate_batch(texts)
    assert res[10] == (None, "engine_misaligned")
    assert [r[0] for r in res[:10]] == [f"text {i}!" for i in range(10)]
    assert [r[0] for r in res[11:]] == [f"more {i}!" for i in range(5)]


def test_apertium_missing_binary_or_pair_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(T.EngineUnavailable, match=r"apt-get install apertium apertium-eng-spa"):
        T.ApertiumEngine(T.BackTranslationConfig())


@needs_apertium
def test_apertium_missing_pair_is_a_clear_error():
    with pytest.raises(T.EngineUnavailable, match=r"apt-get install apertium apertium-eng-xx"):
        T.ApertiumEngine(T.BackTranslationConfig(pivot="xx"))


def test_google_engine_offline_fails_fast_with_clear_error(monkeypatch):
    """No DNS (the usual offline case): a clear error at once, no network touched."""

    def no_dns(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    t0 = time.monotonic()
    with pytest.raises(T.EngineUnavailable, match=r"needs network access.*apertium"):
        T.GoogleEngine(T.BackTranslationConfig(engine="google", timeout_s=5))
    assert time.monotonic() - t0 < 5


def test_google_engine_blackholed_network_is_bounded_by_timeout():
    """A network that accepts and never answers (deep-translator sets no timeout): our bound."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])  # accept, then never say anything
            except OSError:
                pass

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        cfg = T.BackTranslationConfig(engine="google", timeout_s=1.0,
                                      google_proxy=f"http://127.0.0.1:{srv.getsockname()[1]}")
        t0 = time.monotonic()
        with pytest.raises(T.EngineUnavailable, match=r"needs network access.*TimeoutError"):
            T.GoogleEngine(cfg)
        assert time.monotonic() - t0 < 4
    finally:
        stop.set()
        th.join(2)
        for c in held:
            c.close()
        srv.close()


class FakeBackend:
    """A policytune.lm.backends-shaped backend that 'translates' by tagging the text."""

    model_id = "fake-teacher"

    def __init__(self, cut: str = ""):
        self.calls, self.cut = [], cut

    def chat(self, batch, *, max_new_tokens, temperature=0.0, seed=0, prefill=None):
        self.calls.append((batch, max_new_tokens, temperature))
        outs = []
        for msgs in batch:
            text = msgs[-1]["content"]
            if self.cut and self.cut in text:
                outs.append(Completion(text=text[:5], n_tokens=max_new_tokens, finish_reason="length"))
            elif "into Spanish" in msgs[0]["content"]:
                outs.append(Completion(text=f'"ES {text}"', n_tokens=5, finish_reason="stop"))
            else:
                outs.append(Completion(text=text.replace("ES ", "") + " please\n\nNote: done", n_tokens=5,
                                       finish_reason="stop"))
        return outs


def test_teacher_engine_translates_there_and_back():
    fb = FakeBackend(cut="CUT")
    eng = T.TeacherEngine(T.BackTranslationConfig(engine="teacher"), backend=fb)
    res = eng.translate_batch(["Who signs?", "CUT this one", "How  long\nis it?"])
    assert res[0] == ("Who signs? please", "")
    assert res[1] == (None, "engine_truncated")
    assert res[2] == ("How long is it? please", "")
    (b1, mt, temp), (b2, _, _) = fb.calls
    assert temp == 0.0 and len(b1) == 3 and len(b2) == 2  # the cut one is not sent back
    assert b1[0][0]["role"] == "system" and "English text into Spanish" in b1[0][0]["content"]
    assert "Spanish text into English" in b2[0][0]["content"]


def test_teacher_engine_without_model_folder_is_a_clear_error(tmp_path):
    cfg = T.BackTranslationConfig(engine="teacher", teacher=T.TeacherConfig(model_dir=str(tmp_path / "none")))
    with pytest.raises(T.EngineUnavailable, match=r"prepare_models@teacher"):
        T.TeacherEngine(cfg)

