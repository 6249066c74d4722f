"""Back translation engines of the augment stage: English -> pivot -> English.

Each engine has ``name``, ``version()`` and ``translate_batch(texts) -> [(text | None, reason)]``:
Apertium (offline, default), Google Translate via deep-translator (needs network) or the local
teacher LLM (a :mod:`policytune.lm.backends` backend). An engine that is not installed or not
reachable raises :class:`EngineUnavailable` with how to install it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

from policytune.core.params import Dtype, ParamsError, PositiveFloat, PositiveInt
from policytune.core.progress import get_logger

ENGINES = ("apertium", "google", "teacher")

log = get_logger("augment")


@dataclass
class TeacherConfig:
    """The ``teacher`` back-translation engine: a policytune.lm.backends local backend (its field names)."""
    backend: Literal["local"] = field(default="local", metadata={"help": "policytune.lm.backends backend (local)"})
    model_dir: str = field(default="models/teacher", metadata={"help": "prepared causal LM folder"})
    dtype: Dtype = field(default="auto", metadata={"help": "auto|bfloat16|float16|float32"})
    quantize: Literal["none", "int8", "auto"] = field(default="auto", metadata={"help": "none | int8 | auto (int8 Linear layers on a float32 CPU)"})
    batch_size: PositiveInt = field(default=8, metadata={"help": "prompts per generate call"})
    device: str = field(default="auto", metadata={"help": "auto|cpu|cuda"})
    max_new_tokens: PositiveInt = field(default=128, metadata={"help": "token limit per translation"})


@dataclass
class BackTranslationConfig:
    engine: Literal["apertium", "google", "teacher"] = field(default="apertium", metadata={"help": "apertium (offline) | google (network) | teacher (local LLM)"})
    pivot: str = field(default="es", metadata={"help": "pivot language (ISO 639-1)"})
    timeout_s: PositiveFloat = field(default=120.0, metadata={"help": "limit per engine call (one Apertium batch, one Google request)"})
    batch_size: PositiveInt = field(default=256, metadata={"help": "texts per Apertium call / teacher batch"})
    keep_numbers: bool = field(default=True, metadata={
        "help": "skip a back translation whose numbers differ from the original's (counted)"})
    google_proxy: Optional[str] = field(default=None, metadata={"help": "https proxy URL for the google engine"})
    teacher: TeacherConfig = field(default_factory=TeacherConfig)


class EngineUnavailable(RuntimeError):
    """A requested augmentation engine is not installed / not reachable; says how to fix it."""


# ---------------------------------------------------------------------------------------------
# back translation engines: translate_batch(texts) -> list of (text | None, reason)
# ---------------------------------------------------------------------------------------------

_APERTIUM_CODES = {"es": "spa", "fr": "fra", "ca": "cat", "pt": "por", "it": "ita", "de": "deu",
                   "gl": "glg", "eo": "epo", "nl": "nld", "ro": "ron"}
_WS = re.compile(r"\s+")
_SENT_END = re.compile(r"[.?!\u2026][\"'\u201d\u2019)\]]*$")


def _clean_line(text: str) -> str:
    return _WS.sub(" ", text).strip()


class ApertiumEngine:
    """``apertium -u eng-PIVOT`` then ``PIVOT-eng`` over many lines per call.

    Each text is one input line (inner whitespace collapsed); Apertium keeps line breaks, so
    output line i belongs to input line i. The line count is checked after each call; on a
    mismatch the batch is bisected down to single texts, and a text that still fails is
    reported as failed (counted), never shifted onto a neighbour.
    """

    name = "apertium"

    def __init__(self, cfg: BackTranslationConfig):
        self.cfg = cfg
        pivot = _APERTIUM_CODES.get(cfg.pivot, cfg.pivot)
        self.fwd, self.back = f"eng-{pivot}", f"{pivot}-eng"
        hint = f"apt-get install apertium apertium-eng-{pivot}"
        self.binary = shutil.which("apertium")
        if self.binary is None:
            raise EngineUnavailable(
                f"back_translation engine 'apertium': the apertium binary is not on PATH. "
                f"Install it with `{hint}` (Debian/Ubuntu), or choose another engine "
                f"(augment.back_translation.engine: google|teacher) or set weights.back_translation: 0")
        try:
            modes = subprocess.run([self.binary, "-l"], capture_output=True, text=True,
                                   timeout=30).stdout.split()
        except (OSError, subprocess.TimeoutExpired) as e:
            raise EngineUnavailable(f"back_translation engine 'apertium': `apertium -l` failed ({e}); "
                                    f"reinstall with `{hint}`") from None
        missing = [m for m in (self.fwd, self.back) if m not in modes]
        if missing:
            raise EngineUnavailable(
                f"back_translation engine 'apertium': language pair mode(s) {', '.join(missing)} "
                f"not installed (installed: {', '.join(modes) or 'none'}). Install with `{hint}`")

    def version(self) -> str:
        pkgs = ["apertium", f"apertium-{self.fwd}"]
        try:
            out = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *pkgs],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            if out:
                return "; ".join(out.splitlines())
        except (OSError, subprocess.TimeoutExpired):
            pass
        return "apertium (version unknown)"

    def _run(self, mode: str, lines: list[str]) -> list[str] | None:
        try:
            p = subprocess.run([self.binary, "-u", mode], input="\n".join(lines) + "\n",
                               capture_output=True, text=True, timeout=self.cfg.timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"apertium {mode} took longer than {self.cfg.timeout_s}s for "
                               f"{len(lines)} lines (augment.back_translation.timeout_s)") from None
        if p.returncode != 0:
            raise RuntimeError(f"apertium {mode} exited {p.returncode}: {p.stderr.strip()[-500:]}")
        out = p.stdout.split("\n")
        if out and out[-1] == "":
            out.pop()
        return out if len(out) == len(lines) else None

    def _translate(self, mode: str, lines: list[str]) -> list[str | None]:
        if not lines:
            return []
        out = self._run(mode, lines)
        if out is not None:
            return out
        if len(lines) == 1:
            return [None]
        mid = len(lines) // 2
        log.warning("apertium %s: output lines out of step for a batch of %d; bisecting", mode, len(lines))
        return self._translate(mode, lines[:mid]) + self._translate(mode, lines[mid:])

    @staticmethod
    def _post(text: str) -> str:
        # -u drops '*' (unknown word); '#' (generation gap) and '@' (transfer gap) marks remain.
        return _clean_line(re.sub(r"(?<!\S)[#@](?=[^\W\d_])", "", text))

    def translate_batch(self, texts: Sequence[str]) -> list[tuple[str | None, str]]:
        results: list[tuple[str | None, str]] = []
        bs = max(1, self.cfg.batch_size)
        for start in range(0, len(texts), bs):
            lines = [_clean_line(t) for t in texts[start:start + bs]]
            # A line break is not a sentence break for Apertium: a line without final
            # punctuation would run into the next one (casing, even reordering), so the result
            # would depend on its batch neighbours. End each such line with " ." and drop it after.
            closed = [bool(_SENT_END.search(x)) for x in lines]
            todo = [i for i, x in enumerate(lines) if x]
            mid = dict(zip(todo, self._translate(self.fwd, [lines[i] if closed[i] else lines[i] + " ."
                                                             for i in todo])))
            ok = [i for i in todo if mid[i] is not None and mid[i].strip()]
            got: dict[int, str | None] = dict(zip(ok, self._translate(self.back, [mid[i] for i in ok])))
            for i in range(len(lines)):
                t = got.get(i)
                if not lines[i]:
                    results.append(("", ""))
                    continue
                if t is None:
                    results.append((None, "engine_misaligned"))
                    continue
                t = self._post(t)
                if not closed[i]:
                    t = re.sub(r"\s*\.$", "", t)
                results.append((t, ""))
        return results


def _call_with_timeout(fn: Callable[[], str], timeout_s: float) -> str:
    """Run ``fn`` in a daemon thread; raise TimeoutError if it has not finished in time.

    deep-translator calls requests without a timeout, so a blackholed network would hang the
    stage for minutes; a daemon thread cannot keep the process alive after we give up on it.
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        raise TimeoutError(f"no answer within {timeout_s}s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class GoogleEngine:
    """Google Translate through deep-translator (needs network); one probe call checks reachability."""

    name = "google"

    def __init__(self, cfg: BackTranslationConfig):
        self.cfg = cfg
        try:
            from deep_translator import GoogleTranslator
        except ImportError:
            raise EngineUnavailable("back_translation engine 'google' needs the deep-translator package "
                                    "(pip install deep-translator==1.11.4)") from None
        proxies = {"https": cfg.google_proxy, "http": cfg.google_proxy} if cfg.google_proxy else None
        self.fwd = GoogleTranslator(source="en", target=cfg.pivot, proxies=proxies)
        self.back = GoogleTranslator(source=cfg.pivot, target="en", proxies=proxies)
        try:
            _call_with_timeout(lambda: self.fwd.translate("The policy applies to all employees."),
                               min(cfg.timeout_s, 15.0))
        except Exception as e:  # noqa: BLE001 - any failure here means "not reachable"
            raise EngineUnavailable(
                f"back_translation engine 'google' needs network access to translate.google.com "
                f"(deep-translator), and the probe request failed: {type(e).__name__}: {str(e)[:300]}. "
                f"Use engine: apertium for offline back translation "
                f"(`apt-get install apertium apertium-eng-spa`), or engine: teacher") from None

    def version(self) -> str:
        import deep_translator

        return f"deep-translator {getattr(deep_translator, '__version__', '?')} GoogleTranslator en-{self.cfg.pivot}-en"

    def translate_batch(self, texts: Sequence[str]) -> list[tuple[str | None, str]]:
        out = []
        for t in texts:
            try:
                mid = _call_with_timeout(lambda: self.fwd.translate(_clean_line(t)), self.cfg.timeout_s)
                back = _call_with_timeout(lambda: self.back.translate(mid), self.cfg.timeout_s)
                out.append((_clean_line(back or ""), "") if back else (None, "engine_empty"))
            except Exception as e:  # noqa: BLE001 - one failed request is counted, not fatal
                log.warning("google translate failed for one text: %s", e)
                out.append((None, "engine_error"))
        return out


_LANG_NAMES = {"es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
               "ca": "Catalan", "nl": "Dutch", "en": "English"}


class TeacherEngine:
    """The local teacher LLM (a policytune.lm.backends backend) translating en -> pivot -> en, greedy."""

    name = "teacher"

    def __init__(self, cfg: BackTranslationConfig, backend=None):
        self.cfg = cfg
        if backend is None:
            from policytune.lm import backends as llm
            if cfg.teacher.backend == "local" and not Path(cfg.teacher.model_dir).is_dir():
                raise EngineUnavailable(
                    f"back_translation engine 'teacher': model folder {cfg.teacher.model_dir} not found; "
                    f"build it with `dvc repro prepare_models@teacher`, or use engine: apertium")
            backend = llm.make_backend(cfg.teacher)
        self.backend = backend

    def version(self) -> str:
        return f"teacher {getattr(self.backend, 'model_id', type(self.backend).__name__)} ({self.cfg.teacher.backend})"

    @staticmethod
    def prompt(text: str, src: str, dst: str) -> list[dict]:
        s, d = _LANG_NAMES.get(src, src), _LANG_NAMES.get(dst, dst)
        return [
            {"role": "system", "content": f"You translate {s} text into {d}. Reply with the {d} translation "
                                          f"only: no notes, no quotes, and do not answer questions in the text."},
            {"role": "user", "content": text},
        ]

    @staticmethod
    def _post(text: str) -> str:
        text = (text or "").strip().split("\n\n")[0]
        return _clean_line(text.strip().strip('"\u201c\u201d'))

    def _run(self, texts: list[str], src: str, dst: str) -> list[tuple[str | None, str]]:
        if not texts:
            return []
        res = self.backend.chat([self.prompt(t, src, dst) for t in texts],
                                max_new_tokens=self.cfg.teacher.max_new_tokens, temperature=0.0, seed=0)
        out = []
        for r in res:
            text = self._post(r.text)
            if r.finish_reason == "length":  # cut off: part of the question would be lost
                out.append((None, "engine_truncated"))
            else:
                out.append((text, "") if text else (None, "engine_empty"))
        return out

    def translate_batch(self, texts: Sequence[str]) -> list[tuple[str | None, str]]:
        mid = self._run([_clean_line(t) for t in texts], "en", self.cfg.pivot)
        ok = [i for i, (m, _) in enumerate(mid) if m]
        back = dict(zip(ok, self._run([mid[i][0] for i in ok], self.cfg.pivot, "en")))
        return [back[i] if i in back else mid[i] for i in range(len(texts))]


def make_engine(cfg: BackTranslationConfig):
    if cfg.engine == "apertium":
        return ApertiumEngine(cfg)
    if cfg.engine == "google":
        return GoogleEngine(cfg)
    if cfg.engine == "teacher":
        return TeacherEngine(cfg)
    raise ParamsError(f"unknown back_translation engine {cfg.engine!r}")

