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
``max_new_tokens``).

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
  Ollama, OpenAI). The API key is read from the environment variable named in params, never
  from params, and never logged. 429/5xx/connection errors are retried with backoff.
- ``bedrock``: AWS Bedrock ``bedrock-runtime`` Converse API through boto3, credentials from the
  usual AWS chain. Throttling/unavailable are retried with backoff; other errors become
  :class:`BackendError` with a message that says what to fix.

Every failure a user can fix raises :class:`BackendError` (a ``RuntimeError``) with a message
naming the setting or the command that fixes it.
"""

from __future__ import annotations

import json
import logging
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
from policytune.core.records import sha256_text

log = logging.getLogger("policytune.lm.backends")

Messages = list[dict]
OnResult = Callable[[int, "Completion"], None]  # (index in the batch, its completion), as each finishes


class BackendError(RuntimeError):
    """A chat backend failed in a way retrying will not fix (or retries ran out)."""


@dataclass
class Completion:
    text: str              # the whole assistant reply, prefill included
    n_tokens: int          # generated tokens (prefill and padding excluded)
    finish_reason: str     # "stop" | "length"
    seconds: float = 0.0   # wall time of the request / the batch this prompt was in


# --------------------------------------------------------------------------------------------
# Configuration (nested in a stage's params section, e.g. generate_qa.openai / generate_qa.bedrock)


@dataclass
class OpenAIConfig:
    base_url: str = field(default="http://127.0.0.1:8000/v1", metadata={
        "help": "OpenAI-compatible API root; the backend POSTs to <base_url>/chat/completions"})
    model: str = field(default="", metadata={"help": "model name the server knows"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "name of the environment variable holding the API key (unset = no key sent)"})
    timeout_s: float = field(default=120.0, metadata={"help": "per-request timeout"})
    max_retries: int = field(default=5, metadata={"help": "retries on 429/5xx/connection errors"})
    backoff_s: float = field(default=1.0, metadata={"help": "first backoff; doubles per retry"})
    max_backoff_s: float = field(default=30.0, metadata={"help": "cap on one backoff (and on Retry-After)"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once"})
    prefill: bool = field(default=False, metadata={
        "help": "send the prefill as a final assistant message with continue_final_message "
                "(vLLM / llama.cpp); false = ignore the prefill"})


@dataclass
class BedrockConfig:
    model_id: str = field(default="anthropic.claude-3-haiku-20240307-v1:0", metadata={
        "help": "Bedrock model id or inference profile id"})
    region: str = field(default="us-east-1", metadata={"help": "AWS region of bedrock-runtime"})
    endpoint_url: str = field(default="", metadata={"help": "override the endpoint (VPC endpoint, tests)"})
    timeout_s: float = field(default=120.0, metadata={"help": "read timeout per request"})
    max_retries: int = field(default=6, metadata={"help": "retries on throttling/unavailable/connection errors"})
    backoff_s: float = field(default=1.0, metadata={"help": "first backoff; doubles per retry"})
    max_backoff_s: float = field(default=30.0, metadata={"help": "cap on one backoff"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once"})
    prefill: bool = field(default=True, metadata={
        "help": "send the prefill as a final assistant message (Anthropic models support it)"})


# --------------------------------------------------------------------------------------------


class Backend:
    """Base class: ``chat`` plus counters (``stats``) and an identity for caches/lineage."""

    name = "base"

    def __init__(self) -> None:
        self.stats = {"calls": 0, "prompts": 0, "generated_tokens": 0, "seconds": 0.0, "retries": 0}

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
        self.stats["calls"] += 1
        self.stats["prompts"] += len(outs)
        self.stats["generated_tokens"] += sum(o.n_tokens for o in outs)
        self.stats["seconds"] += seconds

    def close(self) -> None:  # pragma: no cover - trivial
        pass


def _backoff(attempt: int, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with a little jitter; a server's Retry-After wins (capped)."""
    if retry_after is not None and retry_after >= 0:
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
# openai


_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class OpenAIBackend(Backend):
    """OpenAI-compatible chat-completions over HTTP (requests), with bounded retries."""

    name = "openai"

    def __init__(self, cfg: OpenAIConfig):
        super().__init__()
        if not cfg.model:
            raise BackendError("openai backend: set openai.model in params.yaml (the model name the server serves)")
        if not cfg.base_url.startswith(("http://", "https://")):
            raise BackendError(f"openai.base_url must start with http:// or https://, got {cfg.base_url!r}")
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._session = None

    @property
    def model_id(self) -> str:
        return self.cfg.model

    def fingerprint(self) -> str:
        return f"openai:{self.cfg.model}"

    def _headers(self) -> dict:
        h = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        if key:
            h["Authorization"] = f"Bearer {key}"
        return h

    def _body(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int,
              prefill: str | None) -> dict:
        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        body: dict[str, Any] = {"model": self.cfg.model, "messages": msgs, "max_tokens": max_new_tokens,
                                "temperature": float(temperature), "seed": int(seed), "stream": False}
        if prefill and self.cfg.prefill:
            msgs.append({"role": "assistant", "content": prefill})
            # vLLM / SGLang convention; llama.cpp continues a trailing assistant message by itself.
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def _one(self, messages: Messages, max_new_tokens: int, temperature: float, seed: int,
             prefill: str | None) -> Completion:
        import requests

        if self._session is None:
            self._session = requests.Session()
        body = self._body(messages, max_new_tokens, temperature, seed, prefill)
        use_prefill = bool(prefill and self.cfg.prefill)
        last = ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            t0 = time.monotonic()
            try:
                r = self._session.post(self.url, json=body, headers=self._headers(), timeout=self.cfg.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = f"{type(e).__name__}: {str(e)[:200]}"
            else:
                if r.status_code == 200:
                    return self._parse(r, use_prefill, prefill, time.monotonic() - t0)
                excerpt = r.text[:300].replace("\n", " ")
                if r.status_code in (401, 403):
                    raise BackendError(
                        f"{self.url} refused the request (HTTP {r.status_code}): put a valid API key in the "
                        f"environment variable {self.cfg.api_key_env} ({excerpt})")
                if r.status_code == 404:
                    raise BackendError(f"{self.url}: HTTP 404 — wrong openai.base_url (it should end in /v1) "
                                       f"or unknown model {self.cfg.model!r} ({excerpt})")
                if r.status_code not in _RETRY_STATUS:
                    raise BackendError(f"{self.url}: HTTP {r.status_code}: {excerpt}")
                last = f"HTTP {r.status_code}: {excerpt}"
                try:
                    retry_after = float(r.headers.get("Retry-After", ""))
                except ValueError:
                    retry_after = None
            if attempt < self.cfg.max_retries:
                self.stats["retries"] += 1
                delay = _backoff(attempt, self.cfg.backoff_s, self.cfg.max_backoff_s, retry_after)
                log.warning("openai: %s; retry %d/%d in %.1fs", last, attempt + 1, self.cfg.max_retries, delay)
                time.sleep(delay)
        if last.startswith("HTTP"):
            raise BackendError(f"{self.url} kept failing after {self.cfg.max_retries + 1} attempts: {last}")
        raise BackendError(f"cannot reach the OpenAI-compatible endpoint {self.url} after "
                           f"{self.cfg.max_retries + 1} attempts ({last}); is the server running and "
                           f"is openai.base_url right?")

    def _parse(self, r, use_prefill: bool, prefill: str | None, secs: float) -> Completion:
        try:
            data = r.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            reason = choice.get("finish_reason") or "stop"
            n = (data.get("usage") or {}).get("completion_tokens")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise BackendError(f"{self.url}: not a chat-completions response ({type(e).__name__}: "
                               f"{r.text[:200]!r})") from None
        if use_prefill and prefill and not text.startswith(prefill):
            text = prefill + text
        if n is None:  # servers without usage: a rough count keeps throughput figures meaningful
            n = max(1, len(text) // 4) if text else 0
        return Completion(text=text, n_tokens=int(n), finish_reason="length" if reason == "length" else "stop",
                          seconds=secs)

    def chat(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, prefill: str | None = None,
             on_result: OnResult | None = None) -> list[Completion]:
        t0 = time.monotonic()
        outs = _run_concurrently(lambda i: self._one(batch[i], max_new_tokens, temperature, seed, prefill),
                                 len(batch), self.cfg.concurrency, on_result)
        self._count(outs, time.monotonic() - t0)
        return outs


# --------------------------------------------------------------------------------------------
# bedrock


_BEDROCK_RETRY_CODES = {"ThrottlingException", "ServiceUnavailableException", "InternalServerException",
                        "ModelNotReadyException", "ModelTimeoutException", "TooManyRequestsException",
                        "ServiceUnavailable", "Throttling", "RequestTimeout"}


class BedrockBackend(Backend):
    """AWS Bedrock Converse API via boto3 (credentials from the AWS chain, never from the repo)."""

    name = "bedrock"

    def __init__(self, cfg: BedrockConfig):
        super().__init__()
        if not cfg.model_id:
            raise BackendError("bedrock backend: set bedrock.model_id in params.yaml")
        self.cfg = cfg
        self._client = None

    @property
    def model_id(self) -> str:
        return self.cfg.model_id

    def fingerprint(self) -> str:
        return f"bedrock:{self.cfg.model_id}"

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Our own retry loop (counted, logged, with clear final errors): botocore's is off.
            conf = Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=10,
                          read_timeout=self.cfg.timeout_s, max_pool_connections=max(10, self.cfg.concurrency))
            # A session of our own: credentials are resolved from the AWS chain now, not reused
            # from boto3's process-wide default session.
            session = boto3.session.Session(region_name=self.cfg.region)
            self._client = session.client("bedrock-runtime", endpoint_url=self.cfg.endpoint_url or None,
                                          config=conf)
        return self._client

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

    def _one(self, messages: Messages, max_new_tokens: int, temperature: float, prefill: str | None) -> Completion:
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, NoCredentialsError, PartialCredentialsError,
                                         ReadTimeoutError)

        req, sent_prefill = self._request(messages, max_new_tokens, temperature, prefill)
        where = f"model {self.cfg.model_id} in {self.cfg.region}"
        last, unreachable = "", False
        for attempt in range(self.cfg.max_retries + 1):
            t0 = time.monotonic()
            try:
                resp = self.client.converse(**req)
            except (NoCredentialsError, PartialCredentialsError) as e:
                raise BackendError(
                    f"bedrock: no usable AWS credentials ({type(e).__name__}); configure the AWS credential "
                    f"chain (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, SSO or an instance role) — "
                    f"policytune never reads credentials from the repository") from None
            except ClientError as e:
                err = e.response.get("Error", {})
                code, msg = err.get("Code", ""), err.get("Message", "")
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                bad_creds = code in ("UnrecognizedClientException", "ExpiredTokenException",
                                     "InvalidSignatureException")
                if code in _BEDROCK_RETRY_CODES or status in (429, 500, 502, 503, 504):
                    last, unreachable = f"{code or status}: {msg[:200]}", False
                elif code == "AccessDeniedException" or (status == 403 and not bad_creds):
                    raise BackendError(
                        f"bedrock: access denied to {where} ({msg[:200]}); grant bedrock:InvokeModel to your "
                        f"AWS identity and enable access to this model in the Bedrock console") from None
                elif bad_creds:
                    raise BackendError(f"bedrock: AWS rejected the credentials ({code}: {msg[:200]}); refresh them "
                                       f"(e.g. `aws sso login`) or check AWS_PROFILE") from None
                elif code == "ResourceNotFoundException":
                    raise BackendError(f"bedrock: {where} not found ({msg[:200]}); check bedrock.model_id "
                                       f"and bedrock.region") from None
                elif code == "ValidationException":
                    raise BackendError(f"bedrock: request rejected for {where}: {msg[:300]}"
                                       + (" (try bedrock.prefill: false)" if sent_prefill else "")) from None
                else:
                    raise BackendError(f"bedrock: {code or status} for {where}: {msg[:300]}") from None
            except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as e:
                last, unreachable = f"{type(e).__name__}: {str(e)[:200]}", True
            except BotoCoreError as e:
                raise BackendError(f"bedrock: {type(e).__name__}: {e}") from None
            else:
                return self._parse(resp, sent_prefill, time.monotonic() - t0)
            if attempt < self.cfg.max_retries:
                self.stats["retries"] += 1
                delay = _backoff(attempt, self.cfg.backoff_s, self.cfg.max_backoff_s)
                log.warning("bedrock: %s; retry %d/%d in %.1fs", last, attempt + 1, self.cfg.max_retries, delay)
                time.sleep(delay)
        endpoint = self.cfg.endpoint_url or f"bedrock-runtime.{self.cfg.region}.amazonaws.com"
        if unreachable:
            raise BackendError(f"bedrock: cannot reach {endpoint} after {self.cfg.max_retries + 1} attempts "
                               f"({last}); check the network, bedrock.region and bedrock.endpoint_url")
        raise BackendError(f"bedrock: {where} still throttled/unavailable after {self.cfg.max_retries + 1} "
                           f"attempts ({last}); lower concurrency or raise max_retries")

    def _parse(self, resp: dict, sent_prefill: str, secs: float) -> Completion:
        try:
            blocks = resp["output"]["message"]["content"]
            text = "".join(b.get("text", "") for b in blocks)
        except (KeyError, TypeError) as e:
            raise BackendError(f"bedrock: unexpected Converse response ({type(e).__name__}: {str(resp)[:200]})") from None
        n = int((resp.get("usage") or {}).get("outputTokens") or 0)
        reason = resp.get("stopReason", "end_turn")
        return Completion(text=sent_prefill + text, n_tokens=n,
                          finish_reason="length" if reason == "max_tokens" else "stop", seconds=secs)

    def chat(self, batch: Sequence[Messages], *, max_new_tokens: int, temperature: float = 0.0,
             seed: int = 0, prefill: str | None = None,
             on_result: OnResult | None = None) -> list[Completion]:
        # Converse has no seed parameter; determinism comes from temperature 0 and the cache.
        t0 = time.monotonic()
        outs = _run_concurrently(lambda i: self._one(batch[i], max_new_tokens, temperature, prefill),
                                 len(batch), self.cfg.concurrency, on_result)
        self._count(outs, time.monotonic() - t0)
        return outs


# --------------------------------------------------------------------------------------------


BACKENDS = ("local", "openai", "bedrock")


def make_backend(cfg: Any) -> Backend:
    """Build the backend a params section asks for; nothing is loaded or contacted yet.

    ``cfg`` is any object (a stage's config dataclass) with ``backend`` ('local'|'openai'|
    'bedrock'), and for local ``model_dir`` (plus optional ``dtype``, ``batch_size``, ``device``),
    for openai ``openai`` (:class:`OpenAIConfig`), for bedrock ``bedrock`` (:class:`BedrockConfig`).
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
    raise BackendError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


def messages_sha(messages: Messages) -> str:
    return sha256_text(json.dumps(messages, sort_keys=True, ensure_ascii=False))
