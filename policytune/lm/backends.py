"""Chat backends shared by the teacher (generate_qa) and the judge: local, openai, bedrock.

One small interface::

    backend = make_backend(cfg)               # nothing is loaded or contacted yet
    outs = backend.chat(batch, max_new_tokens=256, temperature=0.0, seed=0, prefill=None)
    outs[i].text, outs[i].n_tokens, outs[i].finish_reason   # one Completion per conversation

``batch`` is a list of conversations, each a list of ``{"role", "content"}`` messages.
``Completion.text`` is always the *whole* assistant reply: when a prefill was used (the reply
pre-started with e.g. ``[\\n  {\\n    "question": "``) the prefill is included, so a parser sees
the complete JSON. ``n_tokens`` counts generated tokens only (not the prefill, not padding).
``finish_reason`` is ``"stop"`` (the model ended its reply) or ``"length"`` (cut off by
``max_new_tokens``), or, from the API backends only, ``"error"``: the endpoint kept sending
something that is not a reply (not JSON, no choices, a number where the text should be, over
``max_reply_bytes``) through every retry; ``text`` is then ``""``, ``Completion.error`` says why,
and ``backend.stats["rejected"]`` / ``["rejected_by_reason"]`` count it. A caller treats it as a
reply it cannot use (its parser's rejection), so one hostile reply never stops a stage.

``on_result(i, completion)`` (optional) is called as each conversation finishes, so a caller can
save results as they come (a killed run resumes from there).

- ``local``: a transformers causal LM from a model folder (``models/teacher``). Prompts are
  rendered with the tokenizer's chat template. Greedy (``temperature == 0``): continuous
  batching over the whole call with ``batch_size`` slots and the prompts' common prefix
  prefilled once (:func:`policytune.lm.generation.decode_greedy`). Sampling: seeded
  ``model.generate`` on length-sorted, left-padded static batches. Loaded
  through :mod:`policytune.lm.loading` (dtype "auto": bf16 where it runs natively, else float32). The model is loaded on the first ``chat``,
  so a run served entirely from a cache never loads it.
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, llama.cpp server,
  Ollama, OpenAI), through the official ``openai`` client (its own retries off: ours are counted).
  The API key is read from the environment variable named in params, never from params, and
  never logged.
- ``bedrock``: AWS Bedrock ``bedrock-runtime`` Converse API through boto3, credentials from the
  usual AWS chain; boto3 builds and signs the request, which is then sent by the same bounded
  HTTP client as ``openai``.

Both API backends hold each request (one attempt) to ``timeout_s`` *in total* — connect, send,
wait and the whole reply — and the reply to ``max_reply_bytes``
(:func:`policytune.core.http.bounded`), so a reply trickled one byte a second or an endless body
ends on time. Every transport failure (refused or dropped connection, a reply cut short, the
deadline, 429 and 5xx) is retried with backoff (a server's ``Retry-After``, seconds or
HTTP-date, wins up to ``max_backoff_s``) and counted in ``stats["attempts"]``,
``stats["retries"]`` and ``stats["retries_by_reason"]``; when retries run out it is a
:class:`BackendError`. A reply of the wrong shape is retried the same way, then counted as
rejected (``finish_reason == "error"``, above). The reply text may be a string or a list of text
parts; a token count that is not a count (``"many"``) is counted in ``stats["bad_usage"]`` and
estimated from the text.

Every failure a user can fix raises :class:`BackendError` (a ``RuntimeError``) with a message
naming the setting or the command that fixes it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from policytune.lm.generation import collect_stop_ids, decode_greedy, left_pad, split_stop
from policytune.lm.loading import QUANTIZE, quantize_int8, resolve_dtype, resolve_quantize
from policytune.lm.catalog import saved_dtype
from policytune.core import hashing
from policytune.core.http import bounded, bounded_client, parse_retry_after
from policytune.core.params import NonNegFloat, NonNegInt, PositiveFloat, PositiveInt
from policytune.core.records import sha256_file, sha256_text

log = logging.getLogger("policytune.lm.backends")

Messages = list[dict]
OnResult = Callable[[int, "Completion"], None]  # (index in the batch, its completion), as each finishes


class BackendError(RuntimeError):
    """A chat backend failed in a way retrying will not fix (or retries ran out)."""


@dataclass
class Completion:
    text: str              # the whole assistant reply, prefill included
    n_tokens: int          # generated tokens (prefill and padding excluded)
    finish_reason: str     # "stop" | "length" | "error" (API backends: no usable reply, see error)
    seconds: float = 0.0   # wall time of the request / the batch this prompt was in
    error: str = ""        # finish_reason "error": why ("<reason>: <detail>")


# --------------------------------------------------------------------------------------------
# Configuration (nested in a stage's params section, e.g. generate_qa.openai / generate_qa.bedrock)


@dataclass
class OpenAIConfig:
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={
        "help": "OpenAI-compatible API root; the backend POSTs to <base_url>/chat/completions"})
    model: str = field(default="", metadata={"help": "model name the server knows"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "name of the environment variable holding the API key (unset = no key sent)"})
    timeout_s: PositiveFloat = field(default=120.0, metadata={
        "help": "total time for one request: connect, send, wait and read the whole reply (a slower "
                "attempt is cut off and retried)"})
    max_retries: NonNegInt = field(default=5, metadata={
        "help": "retries on 429/5xx, connection errors, cut-short or late replies and malformed replies"})
    backoff_s: NonNegFloat = field(default=1.0, metadata={"help": "first backoff; doubles per retry"})
    max_backoff_s: NonNegFloat = field(default=30.0, metadata={"help": "cap on one backoff (and on Retry-After)"})
    concurrency: PositiveInt = field(default=4, metadata={"help": "requests in flight at once"})
    max_reply_bytes: PositiveInt = field(default=8 << 20, metadata={
        "help": "largest reply body accepted; a bigger one is cut off, retried, then counted as rejected"})
    prefill: bool = field(default=False, metadata={
        "help": "send the prefill as a final assistant message with continue_final_message "
                "(vLLM / llama.cpp); false = ignore the prefill"})


@dataclass
class BedrockConfig:
    model_id: str = field(default="anthropic.claude-3-haiku-20240307-v1:0", metadata={
        "help": "Bedrock model id or inference profile id"})
    region: str = field(default="us-east-1", metadata={"help": "AWS region of bedrock-runtime"})
    endpoint_url: str = field(default="", metadata={"help": "override the endpoint (VPC endpoint, tests)"})
    timeout_s: PositiveFloat = field(default=120.0, metadata={
        "help": "total time for one request: connect, send, wait and read the whole reply (a slower "
                "attempt is cut off and retried)"})
    max_retries: NonNegInt = field(default=6, metadata={
        "help": "retries on throttling/unavailable, connection errors, cut-short or late replies and "
                "malformed replies"})
    backoff_s: NonNegFloat = field(default=1.0, metadata={"help": "first backoff; doubles per retry"})
    max_backoff_s: NonNegFloat = field(default=30.0, metadata={"help": "cap on one backoff (and on Retry-After)"})
    concurrency: PositiveInt = field(default=4, metadata={"help": "requests in flight at once"})
    max_reply_bytes: PositiveInt = field(default=8 << 20, metadata={
        "help": "largest reply body accepted; a bigger one is cut off, retried, then counted as rejected"})
    prefill: bool = field(default=True, metadata={
        "help": "send the prefill as a final assistant message (Anthropic models support it)"})


@dataclass
class LlamaServerConfig:
    gguf: str = field(default="", metadata={
        "help": "GGUF file to serve ('' = the catalog GGUF that model_dir was prepared from)"})
    parallel: PositiveInt = field(default=4, metadata={"help": "server slots (-np): requests decoded together"})
    ctx_per_slot: PositiveInt = field(default=2048, metadata={"help": "context tokens per slot (-c = parallel x this)"})
    threads: NonNegInt = field(default=0, metadata={"help": "CPU threads (0 = all cores)"})
    binary: str = field(default="", metadata={
        "help": "llama-server executable ('' = $POLICYTUNE_LLAMA_SERVER, the build cache of "
                "scripts/build_llama_server.sh, then PATH)"})
    startup_timeout_s: PositiveFloat = field(default=300.0, metadata={"help": "time for the server to load and answer /health"})
    timeout_s: PositiveFloat = field(default=900.0, metadata={"help": "total time for one request (queued behind the slots)"})
    max_retries: NonNegInt = field(default=2, metadata={"help": "retries on 5xx, connection errors and malformed replies"})


# --------------------------------------------------------------------------------------------


class Backend:
    """Base class: ``chat`` plus counters (``stats``) and an identity for caches/lineage."""

    name = "base"
    _stats_lock = threading.Lock()  # instances get their own in __init__; this serves subclasses that skip it

    def __init__(self) -> None:
        # attempts: HTTP requests sent (API backends); retries: attempts that failed and were
        # retried, by reason; rejected: replies given up on (Completion.finish_reason "error"), by
        # reason; bad_usage: replies whose token count was unusable (estimated from the text).
        self.stats = {"calls": 0, "prompts": 0, "generated_tokens": 0, "seconds": 0.0, "retries": 0,
                      "attempts": 0, "rejected": 0, "bad_usage": 0, "retries_by_reason": {},
                      "rejected_by_reason": {}}
        self._stats_lock = threading.Lock()

    def _bump(self, key: str, reason: str | None = None) -> None:
        """Count one event, and its reason under ``<key>_by_reason`` (thread-safe)."""
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + 1
            if reason is not None:
                by = self.stats.setdefault(f"{key}_by_reason", {})
                by[reason] = by.get(reason, 0) + 1

    @property
    def model_id(self) -> str:
        """Human-readable model name written into every record's lineage."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the model for cache keys (a content hash where one exists). Never loads it."""
        raise NotImplementedError

    def chat(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, prefill: str | None = None,
             on_result: OnResult | None = None) -> list[Completion]:
        raise NotImplementedError

    def _count(self, outs: list[Completion], seconds: float) -> None:
        with self._stats_lock:
            self.stats["calls"] += 1
            self.stats["prompts"] += len(outs)
            self.stats["generated_tokens"] += sum(o.n_tokens for o in outs)
            self.stats["seconds"] += seconds

    def close(self) -> None:  # pragma: no cover - trivial
        pass


def _backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with a little jitter; a server's Retry-After wins (capped)."""
    if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
        return min(retry_after, cap)
    delay = min(cap, base * (2 ** attempt))
    return delay * (0.75 + 0.5 * random.random())


def _run_concurrently(fn: Callable[[int], Completion], n: int, concurrency: int,
                      on_result: OnResult | None = None) -> list[Completion]:
    """``fn(i)`` for i < n on up to ``concurrency`` threads; ``on_result(i, completion)`` is called
    (one call at a time) as each one finishes."""
    lock = threading.Lock()

    def one(i: int) -> Completion:
        c = fn(i)
        if on_result is not None:
            with lock:
                on_result(i, c)
        return c

    if n <= 1 or concurrency <= 1:
        return [one(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(concurrency, n)) as pool:
        return list(pool.map(one, range(n)))


# --------------------------------------------------------------------------------------------
# local


def dir_fingerprint(path: str | Path) -> str:
    """sha256 naming a model folder's contents (:func:`policytune.core.hashing.dir_fingerprint`)."""
    path = Path(path)
    if not path.is_dir():
        raise BackendError(f"model folder {path} not found; run `dvc repro prepare_models` "
                           f"(or point model_dir at a local Hugging Face model folder)")
    return hashing.dir_fingerprint(path)


class LocalBackend(Backend):
    """A transformers causal LM from a local folder, batched with left padding."""

    name = "local"

    def __init__(self, model_dir: str | Path, *, dtype: str = "auto", batch_size: int = 8,
                 device: str = "auto", quantize: str = "none", model: Any = None, tokenizer: Any = None):
        super().__init__()
        if quantize not in QUANTIZE:
            raise BackendError(f"unknown quantize {quantize!r}; use one of {', '.join(QUANTIZE)}")
        self.quantize = quantize
        self.model_dir = str(model_dir)
        self.dtype_name = dtype
        self.batch_size = max(1, int(batch_size))
        self.device_name = device
        self._model, self._tok = model, tokenizer  # pre-loaded objects (tests, notebooks)
        self._ready = False
        self._fingerprint: str | None = None

    @property
    def model_id(self) -> str:
        return self.model_dir

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            # int8 replies differ slightly from float ones: a quantized model is another model
            self._fingerprint = dir_fingerprint(self.model_dir) + ("" if self.quantize == "none" else f"+q:{self.quantize}")
        return self._fingerprint

    @property
    def loaded(self) -> bool:
        return self._ready

    def load(self) -> None:
        if self._ready:
            return
        import torch
        from transformers import GenerationConfig

        from policytune.lm.loading import ensure_pad_token, load_causal_lm, load_tokenizer

        if not Path(self.model_dir).is_dir() and (self._model is None or self._tok is None):
            raise BackendError(f"model folder {self.model_dir} not found; run `dvc repro prepare_models` "
                               f"(or set model_dir to a local Hugging Face model folder)")
        device = self.device_name
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        t0 = time.monotonic()
        tok = self._tok or load_tokenizer(self.model_dir, padding_side="left")
        if not getattr(tok, "chat_template", None):
            raise BackendError(f"{self.model_dir}: tokenizer has no chat template; "
                               f"prepare_models must write one (policytune.lm.chat_format.FALLBACK_CHAT_TEMPLATE)")
        tok.padding_side = "left"
        ensure_pad_token(tok)
        model = self._model
        if model is None:  # dtype "auto": bf16 where it runs natively, else float32 (models.resolve_dtype)
            saved = saved_dtype(self.model_dir)
            try:
                quant = resolve_quantize(self.quantize, device, resolve_dtype(self.dtype_name, saved, device))
            except ValueError as e:
                raise BackendError(f"{self.model_dir}: {e}") from None
            # int8: load as saved (bf16: half the memory of float32) and quantize layer by layer
            model = load_causal_lm(self.model_dir, dtype=saved if quant == "int8" and saved else self.dtype_name,
                                   device=device)
            if quant == "int8":
                model = quantize_int8(model)
        else:
            quant = "none"
        model.to(device).eval()
        self.quantized = quant
        # A clean generation config: a model's shipped sampling defaults (top_k, top_p,
        # repetition_penalty...) must not silently change what "greedy" or "seeded" means here.
        # Stops: generation_config eos + tokenizer eos (no end-of-turn markers), as a set.
        eos_ids = set(collect_stop_ids([model.generation_config.eos_token_id], [tok.eos_token_id]))
        eos_ids.discard(None)
        if not eos_ids:
            raise BackendError(f"{self.model_dir}: no eos token in tokenizer or generation_config")
        model.generation_config = GenerationConfig(
            bos_token_id=tok.bos_token_id, eos_token_id=sorted(eos_ids), pad_token_id=tok.pad_token_id)
        self._eos_ids = eos_ids
        self._model, self._tok, self._device = model, tok, device
        self._ready = True
        log.info("loaded %s (%s%s, %s) in %.1fs", self.model_dir, next(model.parameters()).dtype,
                 ", int8 Linear layers" if quant == "int8" else "", device, time.monotonic() - t0)

    @property
    def tokenizer(self):
        self.load()
        return self._tok

    @property
    def model(self):
        self.load()
        return self._model

    def close(self) -> None:
        """Drop the model (frees memory before the next stage step loads something else)."""
        self._model = self._tok = None
        self._ready = False

    def render(self, messages: Messages, prefill: str | None = None) -> str:
        """The exact text the model continues: chat template + generation prompt + prefill."""
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return text + (prefill or "")

    def chat(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, prefill: str | None = None,
             on_result: OnResult | None = None) -> list[Completion]:
        import torch

        if not batch:
            return []
        self.load()
        tok, model = self._tok, self._model
        ids = [tok(self.render(m, prefill), add_special_tokens=False)["input_ids"] for m in batch]
        outs: list[Completion | None] = [None] * len(ids)
        pad = tok.pad_token_id

        def completion(i: int, toks: list[int], secs: float) -> Completion:
            body, n, finish = split_stop(toks, self._eos_ids)
            # Decode with a few prompt tokens in front, then cut them off: SentencePiece
            # tokenizers drop a word's leading space when it is the first token decoded.
            ctx = ids[i][-4:]
            head = tok.decode(ctx, skip_special_tokens=True)
            full = tok.decode(ctx + body, skip_special_tokens=True)
            text = full[len(head):] if full.startswith(head) else tok.decode(body, skip_special_tokens=True)
            return Completion(text=(prefill or "") + text, n_tokens=n,
                              finish_reason="stop" if finish == "eos" else "length", seconds=secs)

        if temperature <= 0:
            t0 = time.monotonic()

            def done(i: int, toks: list[int]) -> None:
                outs[i] = completion(i, toks, time.monotonic() - t0)
                if on_result is not None:
                    on_result(i, outs[i])

            stats: dict = {}
            decode_greedy(model, ids, self._eos_ids, pad, max_new_tokens, self.batch_size, on_done=done, stats=stats)
            for k in ("prompt_tokens", "prefilled_tokens"):  # prefilled < prompt: the shared prefix ran once
                self.stats[k] = self.stats.get(k, 0) + stats[k]
            self._count(outs, time.monotonic() - t0)  # type: ignore[arg-type]
            return outs  # type: ignore[return-value]

        # Sampling: static batches of similar length through model.generate.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            # left padding: the prompts end where generation starts
            input_ids, mask = left_pad([ids[i] for i in idx], pad)
            width = input_ids.shape[1]
            torch.manual_seed(seed)
            gen_kwargs = {"max_new_tokens": max_new_tokens, "use_cache": True, "do_sample": True,
                          "temperature": float(temperature), "top_p": 1.0, "top_k": 0}
            t0 = time.monotonic()
            with torch.inference_mode():
                out = model.generate(input_ids=input_ids.to(self._device), attention_mask=mask.to(self._device),
                                     **gen_kwargs)
            secs = time.monotonic() - t0
            gen = out[:, width:].tolist()
            done_batch = []
            for r, i in enumerate(idx):
                outs[i] = completion(i, gen[r], secs)
                done_batch.append(outs[i])
                if on_result is not None:
                    on_result(i, outs[i])
            self._count(done_batch, secs)
        return outs  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# API backends: what one attempt can go wrong with, and reading a reply's shape


_HEADER_ROOM = 64 * 1024  # bytes of status line and headers allowed on top of max_reply_bytes


class _Failure(Exception):
    """One attempt failed in a way a retry may fix.

    ``kind``: ``"reply"`` (an answer came, but not a usable one: when retries run out it is
    counted as rejected), ``"status"`` (429/5xx), ``"timeout"``, ``"connect"``, ``"broken"``
    (connection dropped or reply cut short) — these end in a :class:`BackendError`.
    """

    def __init__(self, reason: str, detail: str, kind: str, retry_after: float | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.kind, self.retry_after = reason, detail, kind, retry_after


class BadReply(Exception):
    """A reply body that is not a chat completion: ``reason`` (short, counted) and ``detail``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class ParsedReply:
    text: str
    n_tokens: int | None   # None: the server gave no usable count
    finish_reason: str     # "stop" | "length"
    bad_usage: bool = False


_MAX_COUNT = 10 ** 9


def _kind(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, list):
        return "a list"
    if isinstance(x, dict):
        return "an object"
    return type(x).__name__


def _token_count(usage: Any, key: str) -> tuple[int | None, bool]:
    """(count, bad): the count from a usage object; bad when it is there but not a count."""
    if usage is None:
        return None, False
    if not isinstance(usage, dict):
        return None, True
    n = usage.get(key)
    if n is None:
        return None, False
    if isinstance(n, float) and math.isfinite(n) and n.is_integer():
        n = int(n)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= _MAX_COUNT:
        return None, True
    return n, False


def _text_of(content: Any, where: str) -> str:
    """The reply text from a string, null (no text) or a list of parts: strings, ``{"type":
    "text", "text": ...}`` (OpenAI) or ``{"text": ...}`` blocks (Converse). Parts that carry no
    text (a refusal, an image, a tool call, reasoning) are skipped; anything else is a BadReply."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if not isinstance(content, list):
        raise BadReply("bad_content", f"{where} is {_kind(content)}, not a string or a list of text parts")
    out = []
    for i, part in enumerate(content):
        if isinstance(part, str):
            out.append(part)
            continue
        if not isinstance(part, dict):
            raise BadReply("bad_content", f"{where}[{i}] is {_kind(part)}, not a text part")
        kind, text = part.get("type"), part.get("text")
        if isinstance(text, str) and kind in (None, "text", "output_text"):
            out.append(text)
        elif kind in ("text", "output_text") or (kind is None and text is not None):
            raise BadReply("bad_content", f"{where}[{i}].text is {_kind(text)}, not a string")
        # other parts carry no reply text
    return "".join(out)


def _clean(text: str) -> str:
    """Lone surrogates (JSON allows "\\ud800") cannot be written as UTF-8: replace them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def parse_chat_completion(raw: bytes | str) -> ParsedReply:
    """An OpenAI chat-completions response body -> :class:`ParsedReply`; :class:`BadReply` for
    anything else (any bytes, any JSON shape or depth: never another exception)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise BadReply("not_json", f"{type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(data, dict):
        raise BadReply("not_a_completion", f"the reply is {_kind(data)}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        err = data.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        raise BadReply("not_a_completion", f"choices is {_kind(choices) if choices != [] else 'empty'}"
                       + (f" (error: {msg[:200]})" if isinstance(msg, str) else ""))
    choice = choices[0]
    if not isinstance(choice, dict):
        raise BadReply("not_a_completion", f"choices[0] is {_kind(choice)}, not an object")
    message = choice.get("message")
    if not isinstance(message, dict):
        raise BadReply("not_a_completion", f"choices[0].message is {_kind(message)}, not an object")
    text = _clean(_text_of(message.get("content"), "choices[0].message.content"))
    n, bad = _token_count(data.get("usage"), "completion_tokens")
    return ParsedReply(text, n, "length" if choice.get("finish_reason") == "length" else "stop", bad)


def parse_converse(resp: Any) -> ParsedReply:
    """A Converse response (as boto3 returns it) -> :class:`ParsedReply`; :class:`BadReply` else."""
    out = resp.get("output") if isinstance(resp, dict) else None
    message = out.get("message") if isinstance(out, dict) else None
    if not isinstance(message, dict):
        raise BadReply("not_a_completion", "no output.message in the Converse response")
    blocks = message.get("content")
    if not isinstance(blocks, list):
        raise BadReply("bad_content", f"output.message.content is {_kind(blocks)}, not a list of blocks")
    text = _clean(_text_of(blocks, "output.message.content"))
    n, bad = _token_count(resp.get("usage"), "outputTokens")
    return ParsedReply(text, n, "length" if resp.get("stopReason") == "max_tokens" else "stop", bad)


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds or HTTP-date)."""
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            v = float(ms) / 1000
            if math.isfinite(v) and v >= 0:
                return v
        return parse_retry_after(headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


def _read_capped(response: Any, cap: int, setting: str) -> bytes:
    """The whole body of an httpx2 streaming response, or a ``too_large`` failure past ``cap``."""
    length = response.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > cap:
        raise _Failure("too_large", f"reply of {int(length)} bytes > {setting}={cap}", "reply")
    data = bytearray()
    for chunk in response.iter_bytes():  # decoded: a compressed body is capped after decompression
        data += chunk
        if len(data) > cap:
            raise _Failure("too_large", f"reply larger than {setting}={cap} bytes", "reply")
    return bytes(data)


def _transport_failure(exc: BaseException, budget: Any, setting: str, cap_setting: str) -> _Failure:
    """An exception from the HTTP layer (openai's wrapper, or httpx2's own) -> a :class:`_Failure`."""
    import httpx2

    cause = exc
    while not isinstance(cause, httpx2.HTTPError) and cause.__cause__ is not None:
        cause = cause.__cause__
    detail = f"{type(cause).__name__}: {str(cause)[:200]}"
    if budget.too_large:
        return _Failure("too_large", f"reply larger than {cap_setting}={budget.max_bytes - _HEADER_ROOM} bytes",
                        "reply")
    if budget.expired or isinstance(cause, httpx2.TimeoutException):
        return _Failure("timeout", f"no complete reply within {setting}={budget.seconds:g}s ({detail})", "timeout")
    if isinstance(cause, httpx2.ConnectError):
        return _Failure("connect_error", detail, "connect")
    if isinstance(cause, httpx2.RemoteProtocolError):
        return _Failure("cut_short", detail, "broken")
    if isinstance(cause, httpx2.DecodingError):
        return _Failure("not_json", detail, "reply")
    return _Failure("read_error", detail, "broken")


class _APIBackend(Backend):
    """The retry loop the API backends share: attempts counted, backoff, final errors."""

    cfg: Any
    label = "api"
    prefill_always = False  # True: the reply never repeats the prefill, prepend it unconditionally

    def _attempt(self, req: Any) -> ParsedReply:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gave_up(self, f: _Failure, n: int) -> BackendError:  # pragma: no cover - abstract
        raise NotImplementedError

    def _request_with_retries(self, req: Any, prefill: str) -> Completion:
        n = max(0, int(self.cfg.max_retries)) + 1
        t_start = time.monotonic()
        for attempt in range(n):
            t0 = time.monotonic()
            self._bump("attempts")
            try:
                parsed = self._attempt(req)
            except BadReply as e:
                f = _Failure(e.reason, e.detail, "reply")
            except _Failure as e:
                f = e
            else:
                if parsed.bad_usage:
                    self._bump("bad_usage")
                text = parsed.text
                if prefill and (self.prefill_always or not text.startswith(prefill)):
                    text = prefill + text
                n_tok = parsed.n_tokens
                if n_tok is None:  # servers without usage: a rough count keeps throughput figures meaningful
                    n_tok = max(1, len(text) // 4) if text else 0
                return Completion(text=text, n_tokens=n_tok, finish_reason=parsed.finish_reason,
                                  seconds=time.monotonic() - t0)
            if attempt < n - 1:
                self._bump("retries", f.reason)
                delay = _backoff(attempt, self.cfg.backoff_s, self.cfg.max_backoff_s, f.retry_after)
                log.warning("%s: %s; retry %d/%d in %.1fs", self.label, f.detail, attempt + 1, n - 1, delay)
                time.sleep(delay)
        if f.kind == "reply":
            self._bump("rejected", f.reason)
            log.warning("%s: no usable reply after %d attempts (%s: %s); counted as rejected",
                        self.label, n, f.reason, f.detail)
            return Completion(text="", n_tokens=0, finish_reason="error", seconds=time.monotonic() - t_start,
                              error=f"{f.reason}: {f.detail}")
        raise self._gave_up(f, n)


# --------------------------------------------------------------------------------------------
# openai


_RETRY_STATUS = {408, 409, 425, 429}  # and every 5xx


class OpenAIBackend(_APIBackend):
    """OpenAI-compatible chat-completions through the official ``openai`` client, with bounded,
    counted retries of our own."""

    name = "openai"
    label = "openai"

    def __init__(self, cfg: OpenAIConfig):
        super().__init__()
        if not cfg.model:
            raise BackendError("openai backend: set openai.model in params.yaml (the model name the server serves)")
        if not cfg.base_url.startswith(("http://", "https://")):
            raise BackendError(f"openai.base_url must start with http:// or https://, got {cfg.base_url!r}")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._client = None
        self._client_lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return self.cfg.model

    def fingerprint(self) -> str:
        return f"openai:{self.cfg.model}"

    @property
    def client(self):
        """The ``openai.OpenAI`` client (built on first use), on a :func:`bounded_client`."""
        with self._client_lock:
            if self._client is None:
                import openai

                http = bounded_client(max_connections=max(10, self.cfg.concurrency), timeout=self.cfg.timeout_s)
                # The key goes in per request (_auth): it is read from api_key_env, never from
                # OPENAI_API_KEY behind the user's back; the client's own retries are off.
                self._client = openai.OpenAI(base_url=self.cfg.base_url.rstrip("/"), api_key="unused",
                                             max_retries=0, timeout=self.cfg.timeout_s, http_client=http)
            return self._client

    def _auth(self) -> dict:
        import openai

        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        return {"Authorization": f"Bearer {key}" if key else openai.Omit()}

    def _body(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int,
              prefill: str | None) -> dict:
        """Keyword arguments of ``client.chat.completions.create``."""
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        body: dict[str, Any] = {"model": self.cfg.model, "messages": msgs, "max_tokens": int(max_new_tokens),
                                "temperature": float(temperature), "seed": int(seed), "stream": False}
        if prefill and self.cfg.prefill:
            msgs.append({"role": "assistant", "content": prefill})
            # vLLM / SGLang convention; llama.cpp continues a trailing assistant message by itself.
            body["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
        return body

    def _attempt(self, body: dict) -> ParsedReply:
        import httpx2
        import openai

        cap = int(self.cfg.max_reply_bytes)
        with bounded(self.cfg.timeout_s, cap + _HEADER_ROOM) as budget:
            try:
                with self.client.chat.completions.with_streaming_response.create(
                        **body, extra_headers=self._auth()) as resp:
                    raw = _read_capped(resp.http_response, cap, "openai.max_reply_bytes")
            except openai.APIStatusError as e:
                raise self._status_failure(e) from None
            except (openai.APIConnectionError, httpx2.HTTPError) as e:  # APITimeoutError is one
                raise _transport_failure(e, budget, "openai.timeout_s", "openai.max_reply_bytes") from None
            except (_Failure, BackendError):
                raise
            except Exception as e:  # the client failing on a hostile reply: never a bare TypeError
                raise BackendError(f"{self.url}: the openai client failed ({type(e).__name__}: "
                                   f"{str(e)[:200]})") from None
        return parse_chat_completion(raw)

    def _status_failure(self, e: Any) -> Exception:
        status = int(e.status_code)
        try:
            excerpt = e.response.text[:300].replace("\n", " ")
        except Exception:  # a body that cannot be decoded
            excerpt = ""
        if status in (401, 403):
            return BackendError(
                f"{self.url} refused the request (HTTP {status}): put a valid API key in the "
                f"environment variable {self.cfg.api_key_env} ({excerpt})")
        if status == 404:
            return BackendError(f"{self.url}: HTTP 404 — wrong openai.base_url (it should end in /v1) "
                                f"or unknown model {self.cfg.model!r} ({excerpt})")
        if status in _RETRY_STATUS or status >= 500:
            return _Failure(f"http_{status}", f"HTTP {status}: {excerpt}", "status", _retry_after(e.response.headers))
        return BackendError(f"{self.url}: HTTP {status}: {excerpt}")

    def _gave_up(self, f: _Failure, n: int) -> BackendError:
        if f.kind == "status":
            return BackendError(f"{self.url} kept failing after {n} attempts: {f.detail}")
        if f.kind == "timeout":
            return BackendError(f"{self.url}: {f.detail} in each of {n} attempts; the server is too slow or "
                                f"stalled: raise openai.timeout_s (a total per request) or check the server")
        if f.kind == "broken":
            return BackendError(f"{self.url}: the connection broke during the reply in each of {n} attempts "
                                f"({f.detail}); check the server and any proxy in between")
        return BackendError(f"cannot reach the OpenAI-compatible endpoint {self.url} after {n} attempts "
                            f"({f.detail}); is the server running and is openai.base_url right?")

    def _one(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int,
             prefill: str | None) -> Completion:
        body = self._body(messages, max_new_tokens, temperature, seed, prefill)
        return self._request_with_retries(body, prefill if (prefill and self.cfg.prefill) else "")

    def chat(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, prefill: str | None = None,
             on_result: OnResult | None = None) -> list[Completion]:
        t0 = time.monotonic()
        outs = _run_concurrently(lambda i: self._one(batch[i], max_new_tokens, temperature, seed, prefill),
                                 len(batch), self.cfg.concurrency, on_result)
        self._count(outs, time.monotonic() - t0)
        return outs

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None


# --------------------------------------------------------------------------------------------
# bedrock


_BEDROCK_RETRY_CODES = {"ThrottlingException", "ServiceUnavailableException", "InternalServerException",
                        "ModelNotReadyException", "ModelTimeoutException", "TooManyRequestsException",
                        "ServiceUnavailable", "Throttling", "RequestTimeout"}


class _Body:
    """The ``raw`` of a botocore ``AWSResponse``: a body already read."""

    def __init__(self, data: bytes):
        self._data = data

    def stream(self, **_: Any):
        yield self._data


class BedrockBackend(_APIBackend):
    """AWS Bedrock Converse API via boto3 (credentials from the AWS chain, never from the repo).

    boto3 builds, signs and parses; the signed request is sent (botocore's ``before-send`` hook)
    by a :func:`policytune.core.http.bounded_client`, so the total deadline and the reply cap
    hold here as for ``openai``."""

    name = "bedrock"
    label = "bedrock"
    prefill_always = True  # Converse returns only the continuation

    def __init__(self, cfg: BedrockConfig):
        super().__init__()
        if not cfg.model_id:
            raise BackendError("bedrock backend: set bedrock.model_id in params.yaml")
        self.cfg = cfg
        self._client = None
        self._http = None
        self._client_lock = threading.Lock()
        self._tls = threading.local()  # what _send saw of the reply this thread is waiting for

    @property
    def model_id(self) -> str:
        return self.cfg.model_id

    def fingerprint(self) -> str:
        return f"bedrock:{self.cfg.model_id}"

    @property
    def client(self):
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                # Our own retry loop (counted, logged, with clear final errors): botocore's is off.
                conf = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10,
                              read_timeout=self.cfg.timeout_s, max_pool_connections=max(10, self.cfg.concurrency))
                # A session of our own: credentials are resolved from the AWS chain now, not reused
                # from boto3's process-wide default session.
                session = boto3.session.Session(region_name=self.cfg.region)
                client = session.client("bedrock-runtime", endpoint_url=self.cfg.endpoint_url or None, config=conf)
                self._http = bounded_client(max_connections=max(10, self.cfg.concurrency), timeout=self.cfg.timeout_s,
                                            verify=os.environ.get("AWS_CA_BUNDLE") or True)
                client.meta.events.register("before-send.bedrock-runtime.Converse", self._send)
                self._client = client
            return self._client

    def _send(self, request: Any, **_: Any):
        """botocore ``before-send``: send the signed request ourselves, bounded; return the reply."""
        import httpx2
        from botocore.awsrequest import AWSResponse

        cap = int(self.cfg.max_reply_bytes)
        headers = {k: (v.decode("latin-1") if isinstance(v, bytes) else str(v)) for k, v in request.headers.items()}
        body = request.body
        if hasattr(body, "read"):
            body = body.read()
        if isinstance(body, str):
            body = body.encode("utf-8")
        with bounded(self.cfg.timeout_s, cap + _HEADER_ROOM) as budget:
            try:
                with self._http.stream(request.method, request.url, headers=headers, content=body or b"") as r:
                    data = _read_capped(r, cap, "bedrock.max_reply_bytes")
                    status, rheaders = r.status_code, dict(r.headers)
            except httpx2.HTTPError as e:
                raise _transport_failure(e, budget, "bedrock.timeout_s", "bedrock.max_reply_bytes") from None
        if status == 200:
            data = self._check_reply(data)
        rheaders.pop("content-encoding", None)  # already decoded
        rheaders["content-length"] = str(len(data))
        return AWSResponse(request.url, status, rheaders, _Body(data))

    def _check_reply(self, data: bytes) -> bytes:
        """Check a 200 body's shape before botocore parses it (:class:`BadReply` if it is not a
        Converse reply). Counters that are not counts (``usage``, ``metrics``) are dropped, so the
        reply's text survives them: botocore would fail on the whole reply."""
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise BadReply("not_json", f"{type(e).__name__}: {str(e)[:120]}") from None
        parsed = parse_converse(obj)
        dropped = False
        for key in ("usage", "metrics"):
            v = obj.get(key)
            if v is not None and not (isinstance(v, dict) and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v.values())):
                del obj[key]
                dropped = True
        self._tls.bad_usage = parsed.bad_usage or dropped
        if not dropped:
            return data
        try:
            return json.dumps(obj).encode()
        except (ValueError, RecursionError) as e:  # pragma: no cover - nesting at the recursion limit
            raise BadReply("not_json", f"{type(e).__name__}: {str(e)[:120]}") from None

    def _request(self, messages: Messages, max_new_tokens: int, temperature: float,
                 prefill: str | None) -> tuple[dict, str]:
        system = [{"text": m["content"]} for m in messages if m["role"] == "system"]
        msgs = [{"role": m["role"], "content": [{"text": m["content"]}]} for m in messages if m["role"] != "system"]
        sent_prefill = ""
        if prefill and self.cfg.prefill:
            sent_prefill = prefill.rstrip()  # Anthropic rejects a final assistant turn ending in whitespace
            msgs.append({"role": "assistant", "content": [{"text": sent_prefill}]})
        req: dict[str, Any] = {"modelId": self.cfg.model_id, "messages": msgs,
                               "inferenceConfig": {"maxTokens": int(max_new_tokens), "temperature": float(temperature)}}
        if system:
            req["system"] = system
        return req, sent_prefill

    @property
    def _where(self) -> str:
        return f"model {self.cfg.model_id} in {self.cfg.region}"

    def _attempt(self, req: dict) -> ParsedReply:
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, NoCredentialsError, PartialCredentialsError,
                                         ReadTimeoutError)
        from botocore.parsers import ResponseParserError

        where = self._where
        self._tls.bad_usage = False
        try:
            resp = self.client.converse(**req)
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise BackendError(
                f"bedrock: no usable AWS credentials ({type(e).__name__}); configure the AWS credential "
                f"chain (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO or an instance role) — "
                f"policytune never reads credentials from the repository") from None
        except ClientError as e:
            err = e.response.get("Error", {})
            code, msg = str(err.get("Code", "")), str(err.get("Message", ""))
            meta = e.response.get("ResponseMetadata", {})
            status = meta.get("HTTPStatusCode")
            bad_creds = code in ("UnrecognizedClientException", "ExpiredTokenException",
                                 "InvalidSignatureException")
            if code in _BEDROCK_RETRY_CODES or status in (408, 429) or (isinstance(status, int) and status >= 500):
                raise _Failure(code or f"http_{status}", f"{code or status}: {msg[:200]}", "status",
                               _retry_after(meta.get("HTTPHeaders") or {})) from None
            if code == "AccessDeniedException" or (status == 403 and not bad_creds):
                raise BackendError(
                    f"bedrock: access denied to {where} ({msg[:200]}); grant bedrock:InvokeModel to your "
                    f"AWS identity and enable access to this model in the Bedrock console") from None
            if bad_creds:
                raise BackendError(f"bedrock: AWS rejected the credentials ({code}: {msg[:200]}); refresh them "
                                   f"(e.g. `aws sso login`) or check AWS_PROFILE") from None
            if code == "ResourceNotFoundException":
                raise BackendError(f"bedrock: {where} not found ({msg[:200]}); check bedrock.model_id "
                                   f"and bedrock.region") from None
            if code == "ValidationException":
                raise BackendError(f"bedrock: request rejected for {where}: {msg[:300]}"
                                   + (" (try bedrock.prefill: false)" if req["messages"][-1]["role"] == "assistant"
                                      else "")) from None
            raise BackendError(f"bedrock: {code or status} for {where}: {msg[:300]}") from None
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as e:
            raise _Failure("connect_error", f"{type(e).__name__}: {str(e)[:200]}", "connect") from None
        except (_Failure, BackendError):
            raise
        except BotoCoreError as e:
            raise BackendError(f"bedrock: {type(e).__name__}: {e}") from None
        except (ResponseParserError, TypeError, ValueError, AttributeError, KeyError, IndexError,
                RecursionError) as e:  # botocore's parser on a reply of the wrong shape
            raise BadReply("not_a_completion", f"unexpected Converse response ({type(e).__name__}: "
                                               f"{str(e)[:200]})") from None
        parsed = parse_converse(resp)
        parsed.bad_usage = parsed.bad_usage or getattr(self._tls, "bad_usage", False)
        return parsed

    def _gave_up(self, f: _Failure, n: int) -> BackendError:
        endpoint = self.cfg.endpoint_url or f"bedrock-runtime.{self.cfg.region}.amazonaws.com"
        if f.kind == "connect":
            return BackendError(f"bedrock: cannot reach {endpoint} after {n} attempts "
                                f"({f.detail}); check the network, bedrock.region and bedrock.endpoint_url")
        if f.kind == "timeout":
            return BackendError(f"bedrock: {f.detail} from {endpoint} in each of {n} attempts; raise "
                                f"bedrock.timeout_s (a total per request) or lower concurrency")
        if f.kind == "broken":
            return BackendError(f"bedrock: the connection to {endpoint} broke during the reply in each of {n} "
                                f"attempts ({f.detail}); check the network and any proxy in between")
        return BackendError(f"bedrock: {self._where} still throttled/unavailable after {n} "
                            f"attempts ({f.detail}); lower concurrency or raise max_retries")

    def _one(self, messages: Messages, max_new_tokens: int, temperature: float, prefill: str | None) -> Completion:
        req, sent_prefill = self._request(messages, max_new_tokens, temperature, prefill)
        return self._request_with_retries(req, sent_prefill)

    def chat(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, prefill: str | None = None,
             on_result: OnResult | None = None) -> list[Completion]:
        # Converse has no seed parameter; determinism comes from temperature 0 and the cache.
        t0 = time.monotonic()
        outs = _run_concurrently(lambda i: self._one(batch[i], max_new_tokens, temperature, prefill),
                                 len(batch), self.cfg.concurrency, on_result)
        self._count(outs, time.monotonic() - t0)
        return outs

    def close(self) -> None:
        with self._client_lock:
            if self._http is not None:
                self._http.close()
            self._client = self._http = None


# --------------------------------------------------------------------------------------------


class LlamaServerBackend(OpenAIBackend):
    """llama.cpp's ``llama-server`` started by us on 127.0.0.1 (:mod:`policytune.lm.llama_server`),
    spoken to through the OpenAI-compatible path above; started on the first ``chat``, stopped by
    pid on ``close`` (and at exit). Prefill: llama.cpp continues a trailing assistant message."""

    name = "llama_server"
    label = "llama-server"

    def __init__(self, cfg: LlamaServerConfig, model_dir: str | Path = "models/teacher"):
        self.server_cfg, self.model_dir = cfg, Path(model_dir)
        super().__init__(OpenAIConfig(base_url="http://127.0.0.1:1/v1", model="policytune", api_key_env="",
                                      timeout_s=cfg.timeout_s, max_retries=cfg.max_retries,
                                      concurrency=cfg.parallel, prefill=True))
        self.server = None
        self._gguf: Path | None = Path(cfg.gguf) if cfg.gguf else None

    @property
    def gguf(self) -> Path:
        if self._gguf is None:
            from policytune.lm.llama_server import gguf_for_model_dir

            self._gguf = gguf_for_model_dir(self.model_dir)
        return self._gguf

    @property
    def model_id(self) -> str:
        return f"llama-server:{self.gguf.name}"

    def fingerprint(self) -> str:
        from policytune.lm.llama_server import VERSION

        return f"llama_server:{VERSION}:{sha256_file(self.gguf)[:16]}"

    def start(self) -> str:
        if self.server is None:
            from policytune.lm.llama_server import LlamaServer

            c = self.server_cfg
            self.server = LlamaServer(self.gguf, parallel=c.parallel, ctx_per_slot=c.ctx_per_slot, threads=c.threads,
                                      binary=c.binary, startup_timeout_s=c.startup_timeout_s)
            self.server.start()
            self.cfg.base_url = self.server.url + "/v1"
            self.url = self.cfg.base_url + "/chat/completions"
        return self.server.url

    def chat(self, batch: Sequence[Messages], **kw) -> list[Completion]:
        self.start()
        return super().chat(batch, **kw)

    def _body(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int,
              prefill: str | None) -> dict:
        body = super()._body(messages, max_new_tokens, temperature, seed, prefill)
        body.pop("extra_body", None)  # llama.cpp continues a trailing assistant message by itself
        return body

    def close(self) -> None:
        super().close()
        if self.server is not None:
            self.server.stop()
            self.server = None


BACKENDS = ("local", "openai", "bedrock", "llama_server")


def make_backend(cfg: Any) -> Backend:
    """Build the backend a params section asks for; nothing is loaded or contacted yet.

    ``cfg`` is any object (a stage's config dataclass) with ``backend`` ('local'|'openai'|
    'bedrock'), and for local ``model_dir`` (plus optional ``dtype``, ``batch_size``, ``device``),
    for openai ``openai`` (:class:`OpenAIConfig`), for bedrock ``bedrock`` (:class:`BedrockConfig`),
    for llama_server ``llama_server`` (:class:`LlamaServerConfig`) and ``model_dir``.
    """
    kind = getattr(cfg, "backend", "local")
    if kind == "local":
        return LocalBackend(cfg.model_dir, dtype=getattr(cfg, "dtype", "auto"),
                            batch_size=getattr(cfg, "batch_size", 8), device=getattr(cfg, "device", "auto"),
                            quantize=getattr(cfg, "quantize", "none"))
    if kind == "openai":
        return OpenAIBackend(getattr(cfg, "openai", None) or OpenAIConfig())
    if kind == "bedrock":
        return BedrockBackend(getattr(cfg, "bedrock", None) or BedrockConfig())
    if kind == "llama_server":
        return LlamaServerBackend(getattr(cfg, "llama_server", None) or LlamaServerConfig(),
                                  getattr(cfg, "model_dir", "models/teacher"))
    raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


def messages_sha(messages: Messages) -> str:
    return sha256_text(json.dumps(messages, sort_keys=True, ensure_ascii=False))
