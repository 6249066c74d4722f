"""Streaming generation for many concurrent conversations: one model worker thread, continuous batching.

    engine = Engine(model, tokenizer, stop_ids, max_batch=8, max_waiting=16).start()
    reply = engine.submit(prompt_ids, max_new_tokens=128, temperature=0.0, adapter=True)
    for text in reply:          # text pieces as they are decoded (a transformers TextIteratorStreamer)
        print(text, end="", flush=True)
    reply.finish_reason         # "stop" | "length" | "cancelled" | "error" (then reply.error says why)
    reply.cancel()              # e.g. the client went away: the row leaves the batch at the next step
    engine.close()

Sampling settings are checked by :func:`check_sampling` (``submit`` raises :class:`InvalidRequest`
for anything out of range): temperature 0..2, where anything below :data:`MIN_TEMPERATURE` is
greedy (``temperature: 1e-300`` would otherwise divide the logits into inf/NaN); top_p in (0, 1];
a seed in [-2**63, 2**64) (negative seeds are taken modulo 2**64).

Only the worker thread touches the model. ``submit`` (any thread) puts the request in a bounded
waiting queue and returns at once; a full queue raises :class:`EngineBusy` (a server answers 503).
Each step the worker

1. admits waiting requests while fewer than ``max_batch`` rows decode: their prompts are
   prefilled together (left-padded, ``prefill_chunk`` positions per forward pass, so rows that were
   all cancelled stop after one chunk) and their KV caches merged into the running batch, so a new
   question never waits for the answers already being written to finish;
2. runs one decode step for every row (explicit positions per row, as in :mod:`policytune.lm.generation`,
   so each answer is computed as if decoded alone) and picks each row's next token: greedy at temperature 0, else sampled from
   the row's own seeded generator (with top_p, from the smallest set of tokens holding that much
   probability). Each row is picked on its own: a row whose sampling fails (a broken generator,
   non-finite probabilities) ends with finish_reason "error" and leaves the batch, and the other
   rows go on with exactly the tokens they would have had without it;
3. hands each token to its reply's streamer (a per-request queue: a consumer that reads slowly,
   or not at all, never holds up the worker) and drops finished or cancelled rows from the cache.

With a PEFT model, ``adapter=False`` rows run with the LoRA adapter switched off for that row only
(PEFT's mixed-adapter batches, ``adapter_names=[..., "__base__", ...]``), so base and fine-tuned
answers share one batch.

A prefill that raises fails only the rows it was admitting (when several were admitted together,
each is retried alone, so one bad prompt fails only itself); a failing decode step fails the rows
in the batch (the step's state cannot be trusted), never the worker.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

from policytune.lm.generation import grow_in_place, left_pad, merge_batches

log = logging.getLogger("policytune.lm.engine")

FINISH_REASONS = ("stop", "length", "cancelled", "error")
MAX_TEMPERATURE = 2.0
MIN_TEMPERATURE = 1e-3      # below this, sampling is greedy (the limit of softmax(logits / T) as T -> 0)
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1


class InvalidRequest(ValueError):
    """A sampling setting or prompt out of range (a server answers 400)."""


def check_sampling(temperature=0.0, top_p=1.0, seed=None) -> tuple[float, float, Optional[int]]:
    """Validated (temperature, top_p, seed): the temperature is 0 (greedy) below :data:`MIN_TEMPERATURE`,
    the seed an int in [0, 2**64) or None. Raises :class:`InvalidRequest` naming the bad setting."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not number(temperature) or not 0 <= temperature <= MAX_TEMPERATURE:
        raise InvalidRequest(f"temperature must be a number from 0 to {MAX_TEMPERATURE:g}; got {temperature!r}")
    if not number(top_p) or not 0 < top_p <= 1:
        raise InvalidRequest(f"top_p must be a number greater than 0 and at most 1; got {top_p!r}")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not SEED_MIN <= seed <= SEED_MAX):
        raise InvalidRequest(f"seed must be an integer from {SEED_MIN} to {SEED_MAX}; got {seed!r}")
    temperature = float(temperature) if temperature >= MIN_TEMPERATURE else 0.0
    return temperature, float(top_p), (None if seed is None else seed % (1 << 64))


class EngineBusy(RuntimeError):
    """The waiting queue is full; try again shortly."""


class EngineClosed(RuntimeError):
    """The engine was closed (the server is shutting down)."""


@dataclass(eq=False)
class Reply:
    """One request: its prompt, its generation settings, and the stream of its answer."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    adapter: bool
    streamer: Any                       # transformers.TextIteratorStreamer: the per-request text queue
    generator: Any = None               # torch.Generator when sampling
    completion_tokens: int = 0          # generated tokens, the stop token included
    finish_reason: Optional[str] = None
    error: Optional[str] = None
    submitted_at: float = field(default_factory=time.monotonic)
    first_token_at: Optional[float] = None
    finished_at: Optional[float] = None
    top_p: float = 1.0
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _row_error: Optional[str] = field(default=None, repr=False)  # set by the worker when this row's pick failed

    def __iter__(self) -> Iterator[str]:
        """Text pieces as they are generated; ends when the answer is finished (or failed).

        Raises ``queue.Empty`` if nothing arrives within the streamer's timeout."""
        return (text for text in self.streamer if text)

    def pieces(self, gone: Optional[Callable[[], bool]] = None, poll_s: float = 0.25) -> Iterator[str]:
        """Like iterating the reply, but every ``poll_s`` seconds (whether text arrives or not)
        ``gone()`` is asked whether the consumer still wants the answer: True cancels the reply
        and ends the iteration (the row leaves the batch, or never enters it). Raises
        ``queue.Empty`` when nothing arrives within the streamer's timeout."""
        q, stop, limit = self.streamer.text_queue, self.streamer.stop_signal, self.streamer.timeout
        last_text = last_check = time.monotonic()
        while True:
            try:
                text = q.get(timeout=poll_s)
            except queue.Empty:
                text = ""
                if limit is not None and time.monotonic() - last_text >= limit:
                    raise
            else:
                if text == stop:
                    return
                last_text = time.monotonic()
            if gone is not None and time.monotonic() - last_check >= poll_s:
                last_check = time.monotonic()
                if gone():
                    self.cancel()
                    return
            if text:
                yield text

    def text(self) -> str:
        """Wait for the whole answer."""
        return "".join(self)

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class Engine:
    """Continuous-batching decode loop in one worker thread; see the module docstring."""

    def __init__(self, model, tokenizer, stop_ids: Sequence[int], *, max_batch: int = 8,
                 max_waiting: int = 16, stream_timeout_s: Optional[float] = 600.0, prefill_chunk: int = 512):
        if max_batch < 1 or max_waiting < 1 or prefill_chunk < 1:
            raise ValueError("max_batch, max_waiting and prefill_chunk must be >= 1")
        self.prefill_chunk = prefill_chunk
        self.model, self.tokenizer = model, tokenizer
        self.stop_ids = frozenset(int(i) for i in stop_ids)
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.stream_timeout_s = stream_timeout_s
        # A PeftModel carries peft_config {adapter name: config}; its active adapter is the fine-tune.
        self.adapter_name: Optional[str] = model.active_adapter if hasattr(model, "peft_config") else None
        self.device = next(model.parameters()).device
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.stop_ids))
        self.stats = {"submitted": 0, "rejected": 0, "steps": 0, "generated_tokens": 0, "peak_batch": 0,
                      **{reason: 0 for reason in FINISH_REASONS}}
        self._stats_lock = threading.Lock()
        self._waiting: queue.Queue[Reply] = queue.Queue(maxsize=max_waiting)
        self._closed = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # Decode state, owned by the worker thread: one entry per batch row.
        self._rows: list[Reply] = []
        self._cache = self._attn = self._pos = self._last = None

    # ------------------------------------------------------------------ public API (any thread)

    @property
    def has_adapter(self) -> bool:
        return self.adapter_name is not None

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policytune-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, prompt_ids: Sequence[int], *, max_new_tokens: int, temperature: float = 0.0,
               seed: Optional[int] = None, adapter: bool = False, top_p: float = 1.0) -> Reply:
        """Queue one request; returns its :class:`Reply` at once (raises :class:`EngineBusy` if full,
        :class:`InvalidRequest` for settings out of range, see :func:`check_sampling`)."""
        import torch
        from transformers import TextIteratorStreamer

        if self._closed.is_set():
            raise EngineClosed("the engine is shut down")
        if adapter and not self.has_adapter:
            raise InvalidRequest("this model has no adapter loaded")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1 \
                or not prompt_ids:
            raise InvalidRequest("need a non-empty prompt and max_new_tokens >= 1")
        temperature, top_p, seed = check_sampling(temperature, top_p, seed)
        generator = None
        if temperature > 0:
            generator = torch.Generator()
            if seed is None:
                generator.seed()  # a fresh non-deterministic seed
            else:
                generator.manual_seed(seed)
        reply = Reply(list(prompt_ids), int(max_new_tokens), temperature, bool(adapter),
                      TextIteratorStreamer(self.tokenizer, timeout=self.stream_timeout_s, skip_special_tokens=True),
                      generator, top_p=top_p)
        try:
            self._waiting.put_nowait(reply)
        except queue.Full:
            self._count("rejected")
            raise EngineBusy(f"{self.max_waiting} requests are already waiting for the model; "
                             "try again shortly") from None
        self._count("submitted")
        return reply

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker; unfinished replies end with finish_reason "error"."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_waiting("the engine was shut down")

    # ------------------------------------------------------------------ worker thread

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while not self._closed.is_set():
                new = self._take_waiting()
                try:
                    if new:
                        self._admit(new)
                    if self._rows:
                        self._decode_step()
                except Exception as e:  # a failed step fails its rows, never the worker
                    log.exception("generation step failed")
                    for reply in self._rows + new:
                        self._finish(reply, "error", f"generation failed: {type(e).__name__}: {e}")
                    self._rows, self._cache = [], None
        for reply in self._rows:
            self._finish(reply, "error", "the engine was shut down")
        self._rows, self._cache = [], None

    def _take_waiting(self) -> list[Reply]:
        """Waiting requests for the free batch slots (blocks briefly only when nothing decodes)."""
        new: list[Reply] = []
        while len(self._rows) + len(new) < self.max_batch:
            idle = not self._rows and not new
            try:
                reply = self._waiting.get(timeout=0.1) if idle else self._waiting.get_nowait()
            except queue.Empty:
                break
            if reply.cancelled:
                self._finish(reply, "cancelled")
            else:
                new.append(reply)
        return new

    def _forward(self, input_ids, attn, pos, cache, rows: list[Reply]):
        kwargs = {}
        if self.has_adapter and not all(r.adapter for r in rows):
            kwargs["adapter_names"] = [self.adapter_name if r.adapter else "__base__" for r in rows]
        dev = self.device
        return self.model(input_ids=input_ids.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev),
                          past_key_values=cache, use_cache=True, logits_to_keep=1, **kwargs)

    def _admit(self, new: list[Reply]) -> None:
        """Prefill ``new`` together; if their prompt pass fails (before it touched the running
        batch), retry each alone, so only the rows that fail by themselves end with an error."""
        try:
            self._prefill(new)
        except _PrefillFailed as e:
            if len(new) == 1:
                log.warning("prefill failed: %s", e.cause)
                self._finish(new[0], "error", f"generation failed: {type(e.cause).__name__}: {e.cause}")
                return
            for reply in new:
                self._admit([reply])

    def _prefill(self, new: list[Reply]) -> None:
        """Prompt pass for newly admitted rows, merged into the running batch; emits their first token.
        Raises :class:`_PrefillFailed` if the prompt pass itself fails (the running batch untouched)."""
        import torch

        ids, attn = left_pad([r.prompt_ids for r in new], self.pad_id)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        out, width = None, ids.shape[1]
        # In chunks of prefill_chunk positions, so that rows whose clients all went away stop
        # after at most one chunk instead of running a whole long prompt (a full 8k context
        # takes minutes on a CPU).
        for a in range(0, width, self.prefill_chunk):
            if a and all(r.cancelled for r in new):
                for r in new:
                    self._finish(r, "cancelled")
                return
            b = min(width, a + self.prefill_chunk)
            try:
                out = self._forward(ids[:, a:b], attn[:, :b], positions[:, a:b],
                                    out.past_key_values if out is not None else None, new)
            except Exception as e:
                raise _PrefillFailed(e) from e
        attn, pos = attn.to(self.device), attn.sum(-1).to(self.device)
        if not self._rows:
            self._cache, self._attn, self._pos = out.past_key_values, attn, pos
        else:  # left-pad the narrower of the two caches, then stack the new rows under the old ones
            self._attn = merge_batches(self._cache, self._attn, out.past_key_values, attn)
            self._pos = torch.cat([self._pos, pos])
        grow_in_place(self._cache)
        last = self._last if self._rows else None
        self._rows = self._rows + new
        with self._stats_lock:
            self.stats["peak_batch"] = max(self.stats["peak_batch"], len(self._rows))
        tokens = self._pick(out.logits[:, -1], new)
        new_last = torch.tensor(tokens, dtype=torch.long, device=self.device)
        self._last = new_last if last is None else torch.cat([last, new_last])
        self._settle(range(len(self._rows) - len(new), len(self._rows)), tokens)

    def _decode_step(self) -> None:
        import torch

        ones = torch.ones((len(self._rows), 1), dtype=self._attn.dtype, device=self.device)
        self._attn = torch.cat([self._attn, ones], 1)  # one more attended column: the token fed now
        out = self._forward(self._last[:, None], self._attn, self._pos[:, None], self._cache, self._rows)
        self._cache, self._pos = out.past_key_values, self._pos + 1
        tokens = self._pick(out.logits[:, -1], self._rows)
        self._last = torch.tensor(tokens, dtype=torch.long, device=self.device)
        self._count("steps")
        self._settle(range(len(self._rows)), tokens)

    def _pick(self, logits, rows: list[Reply]) -> list[int]:
        """Next token per row: argmax at temperature 0, else a sample from the row's generator.
        A row whose sampling fails gets the pad id and its ``_row_error``; the others are unaffected."""
        tokens = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            if r.temperature > 0:
                try:
                    tokens[i] = sample(logits[i], r.temperature, r.top_p, r.generator)
                except Exception as e:  # only this row's answer fails
                    log.warning("sampling failed for one row: %s: %s", type(e).__name__, e)
                    r._row_error = f"sampling failed: {type(e).__name__}: {e}"
                    tokens[i] = self.pad_id
        return tokens

    def _settle(self, row_indices, tokens: list[int]) -> None:
        """Stream the rows' new tokens; finish rows at a stop token, the length limit or a cancel."""
        import torch

        now = time.monotonic()
        done = set()
        for i, tok in zip(row_indices, tokens):
            r = self._rows[i]
            if r._row_error is not None:
                self._finish(r, "error", r._row_error)
                done.add(i)
                continue
            r.completion_tokens += 1
            self._count("generated_tokens")
            if tok in self.stop_ids:
                self._finish(r, "stop")
            else:
                r.streamer.put(torch.tensor([tok]))
                if r.first_token_at is None:
                    r.first_token_at = now
                if r.completion_tokens >= r.max_new_tokens:
                    self._finish(r, "length")
                elif r.cancelled:
                    self._finish(r, "cancelled")
            if r.finish_reason is not None:
                done.add(i)
        if done:
            self._drop([i for i in range(len(self._rows)) if i not in done])

    def _drop(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` in the batch and its KV cache."""
        import torch

        if not keep:
            self._rows, self._cache = [], None
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._cache.batch_select_indices(idx)
        self._attn, self._pos, self._last = self._attn[idx], self._pos[idx], self._last[idx]
        self._rows = [self._rows[i] for i in keep]
        # Columns that are padding for every remaining row are dead weight: cut them off.
        lead = int((self._attn.sum(0) == 0).long().cumprod(0).sum())
        if lead:
            self._attn = self._attn[:, lead:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]

    def _finish(self, reply: Reply, reason: str, error: Optional[str] = None) -> None:
        if reply.finish_reason is not None:
            return
        reply.finish_reason, reply.error, reply.finished_at = reason, error, time.monotonic()
        self._count(reason)
        reply.streamer.end()  # flushes the last partial word, then ends the consumer's iteration

    def _fail_waiting(self, error: str) -> None:
        while True:
            try:
                self._finish(self._waiting.get_nowait(), "error", error)
            except queue.Empty:
                return


class _PrefillFailed(Exception):
    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


def sample(logits, temperature: float, top_p: float = 1.0, generator=None) -> int:
    """One token id drawn from softmax(logits / temperature), restricted to the top_p nucleus
    (the most probable tokens whose probabilities sum to at least top_p; never empty).
    Raises ValueError when the probabilities are not finite (the caller fails that row only)."""
    import torch

    if not temperature >= MIN_TEMPERATURE:
        raise ValueError(f"temperature {temperature!r} is below {MIN_TEMPERATURE} (greedy, not sampled)")
    x = logits.float().cpu()
    probs = torch.softmax((x - x.max()) / temperature, dim=-1)  # max first: huge logits cannot overflow
    if not bool(torch.isfinite(probs).all()) or not float(probs.sum()) > 0:
        raise ValueError("the token probabilities are not finite")
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p  # the mass before this token already suffices
        outside[0] = False
        kept = sorted_probs.masked_fill(outside, 0.0)
        return int(order[torch.multinomial(kept / kept.sum(), 1, generator=generator)])
    return int(torch.multinomial(probs, 1, generator=generator))
