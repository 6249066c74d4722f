"""Streaming generation for many concurrent conversations: one model worker thread, continuous batching.

    engine = Engine(model, tokenizer, stop_ids, max_batch=8, max_waiting=16).start()
    reply = engine.submit(prompt_ids, max_new_tokens=128, temperature=0.0, adapter=True)
    for text in reply:          # text pieces as they are decoded (a transformers TextIteratorStreamer)
        print(text, end="", flush=True)
    reply.finish_reason         # "stop" | "length" | "cancelled" | "error" (then reply.error says why)
    reply.cancel()              # e.g. the client went away: the row leaves the batch at the next step
    engine.close()

Only the worker thread touches the model. ``submit`` (any thread) puts the request in a bounded
waiting queue and returns at once; a full queue raises :class:`EngineBusy` (a server answers 503).
Each step the worker

1. admits waiting requests while fewer than ``max_batch`` rows decode: their prompts are
   prefilled together (left-padded) and their KV caches merged into the running batch, so a new
   question never waits for the answers already being written to finish;
2. runs one decode step for every row (explicit positions per row, as in :mod:`policytune.lm.generation`,
   so each answer is computed as if decoded alone) and picks each row's next token: greedy at temperature 0, else sampled from
   the row's own seeded generator;
3. hands each token to its reply's streamer (a per-request queue: a consumer that reads slowly,
   or not at all, never holds up the worker) and drops finished or cancelled rows from the cache.

With a PEFT model, ``adapter=False`` rows run with the LoRA adapter switched off for that row only
(PEFT's mixed-adapter batches, ``adapter_names=[..., "__base__", ...]``), so base and fine-tuned
answers share one batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

from policytune.lm.generation import grow_in_place, left_pad, merge_batches

log = logging.getLogger("policytune.lm.engine")

FINISH_REASONS = ("stop", "length", "cancelled", "error")


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
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def __iter__(self) -> Iterator[str]:
        """Text pieces as they are generated; ends when the answer is finished (or failed).

        Raises ``queue.Empty`` if nothing arrives within the streamer's timeout."""
        return (text for text in self.streamer if text)

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
                 max_waiting: int = 16, stream_timeout_s: Optional[float] = 600.0):
        if max_batch < 1 or max_waiting < 1:
            raise ValueError("max_batch and max_waiting must be >= 1")
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
               seed: Optional[int] = None, adapter: bool = False) -> Reply:
        """Queue one request; returns its :class:`Reply` at once (raises :class:`EngineBusy` if full)."""
        import torch
        from transformers import TextIteratorStreamer

        if self._closed.is_set():
            raise EngineClosed("the engine is shut down")
        if adapter and not self.has_adapter:
            raise ValueError("this model has no adapter loaded")
        if max_new_tokens < 1 or not prompt_ids:
            raise ValueError("need a non-empty prompt and max_new_tokens >= 1")
        generator = None
        if temperature > 0:
            generator = torch.Generator()
            if seed is None:
                generator.seed()  # a fresh non-deterministic seed
            else:
                generator.manual_seed(int(seed))
        reply = Reply(list(prompt_ids), int(max_new_tokens), float(temperature), bool(adapter),
                      TextIteratorStreamer(self.tokenizer, timeout=self.stream_timeout_s, skip_special_tokens=True),
                      generator)
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
                        self._prefill(new)
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

    def _prefill(self, new: list[Reply]) -> None:
        """Prompt pass for newly admitted rows, merged into the running batch; emits their first token."""
        import torch

        ids, attn = left_pad([r.prompt_ids for r in new], self.pad_id)
        out = self._forward(ids, attn, (attn.cumsum(-1) - 1).clamp(min=0), None, new)
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
        """Next token per row: argmax at temperature 0, else a sample from the row's generator."""
        import torch

        tokens = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            if r.temperature > 0:
                probs = torch.softmax(logits[i].float().cpu() / r.temperature, dim=-1)
                tokens[i] = int(torch.multinomial(probs, 1, generator=r.generator))
        return tokens

    def _settle(self, row_indices, tokens: list[int]) -> None:
        """Stream the rows' new tokens; finish rows at a stop token, the length limit or a cancel."""
        import torch

        now = time.monotonic()
        done = set()
        for i, tok in zip(row_indices, tokens):
            r = self._rows[i]
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
