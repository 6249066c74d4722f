"""chat: talk to the fine-tuned model in the terminal; answers stream as they are generated.

    python -m policytune.app.chat         # the variant the evaluate stage found best (metrics/eval.json)
    python -m policytune.app.chat --variant finetuned_rag   # or name one: base|finetuned|base_rag|finetuned_rag
    python -m policytune.app.chat --base  # the base model alone (--rag: grounded in the top-k chunks)
    policytune chat [flags]               # the same, as the console script

Which variant answers: ``--variant best`` (the default) reads metrics/eval.json and takes the
variant with the highest fact recall (:func:`policytune.evaluation.config.best_variant`, the one
the report names); without that file, the fine-tuned model without retrieval. ``--base`` and
``--rag`` override it (``--base`` alone = base, ``--rag`` alone = fine-tuned + RAG). The banner
says which variant answers and why.

Reads   models/student     the base model
        models/adapter     the LoRA adapter; its policytune_train.json ``chat_template_sha`` must equal
                           the tokenizer's (as in the evaluate stage), else chat refuses to start
        params.yaml        ``split.system_prompt`` (the system message every training row carries;
                           policytune.lm.chat_format.DEFAULT_SYSTEM_PROMPT if unset), ``evaluate.rag.top_k``
        --rag only: models/encoder and data/chunks.jsonl (rows with chunk_id, text, url, title)
Writes  nothing (not a DVC stage).

Prompts are built exactly as at training and evaluation: system prompt + conversation, rendered by
the tokenizer's chat template; with --rag the current question is wrapped with its retrieved
excerpts by ``policytune.lm.chat_format.rag_question`` (the RAFT rows' and the evaluate stage's layout). The
conversation is kept within the model's context: the oldest turns are dropped (never the system
prompt) until the prompt plus ``--max-new-tokens`` fits (found in O(log n) renders of the chat
template, not one per dropped turn). At the prompt, ``/reset`` forgets the conversation and
``/exit`` (or Ctrl-D) quits; Ctrl-C stops an answer.

:class:`Chatbot` (models loaded once, prompt building, retrieval, generation through
:mod:`policytune.lm.engine`) is shared with the web app (:mod:`policytune.app.serve`) and bench/bench_chat.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from policytune.core.params import ParamsError, read_params
from policytune.core.progress import get_logger
from policytune.core.records import read_jsonl
from policytune.lm.chat_format import DEFAULT_SYSTEM_PROMPT, template_sha
from policytune.lm import embedding
from policytune.lm.retrieval import METHODS, ChunkIndex
from policytune.lm.engine import Engine, Reply, check_sampling
from policytune.lm.generation import stop_token_ids

MODEL_DIR = Path("models/student")
ADAPTER_DIR = Path("models/adapter")
ENCODER_DIR = Path("models/encoder")
CHUNKS_PATH = Path("data/chunks.jsonl")

log = get_logger("chat")


class ChatbotError(RuntimeError):
    """Something the user can fix (missing models, template mismatch, a question too long...)."""


class PromptCancelled(RuntimeError):
    """The caller went away while its prompt was being built (nothing was queued)."""


def missing(what: str, path: Path) -> ChatbotError:
    return ChatbotError(f"{what} {path} not found. Build it with `dvc repro` (or fetch the shared "
                        "artifacts with `dvc pull`), or point the matching --*-dir flag elsewhere.")


def defaults_from_params(path: Optional[str] = None) -> tuple[str, int, str]:
    """(system prompt, RAG top-k, retrieval method) from params.yaml: split.system_prompt,
    evaluate.rag.top_k and evaluate.rag.retriever (what the evaluate stage measured)."""
    try:
        params = read_params(path)
    except ParamsError as e:
        log.warning("%s; using the default system prompt", e)
        return DEFAULT_SYSTEM_PROMPT, 3, "hybrid"
    system = (params.get("split") or {}).get("system_prompt") or DEFAULT_SYSTEM_PROMPT
    rag = (params.get("evaluate") or {}).get("rag") or {}
    method = rag.get("retriever") if rag.get("retriever") in METHODS else "hybrid"
    return str(system), int(rag.get("top_k") or 3), method


# ---------------------------------------------------------------------------------------------
# retrieval
# ---------------------------------------------------------------------------------------------

class Retriever:
    """Top-k chunks by the evaluate stage's retriever (policytune.lm.retrieval.ChunkIndex: hybrid
    dense + BM25 by default); chunk embeddings and the BM25 index are built once, at start-up."""

    def __init__(self, encoder, chunks: Sequence[dict], top_k: int = 3, max_chars: int = 1500,
                 method: str = "hybrid"):
        if not chunks:
            raise ChatbotError("the chunks file has no chunks to retrieve from; run `dvc repro extract`")
        self.encoder, self.chunks = encoder, list(chunks)
        self.top_k, self.max_chars = top_k, max_chars
        self._lock = threading.Lock()  # one tokenizer + model, called from many request threads
        self.index = ChunkIndex(self.chunks, self._embed, method)

    def _embed(self, texts: Sequence[str]):
        with self._lock:
            return embedding.encode(self.encoder, texts, batch_size=64)

    def search(self, question: str) -> list[dict]:
        """The top-k chunks as sources: chunk_id, title, url, score (encoder cosine), text (cut to
        max_chars)."""
        sims = self.index.cosines([question])[0]
        order = self.index.search([question], self.top_k, cosines=sims[None, :])[0]  # ties: the earlier chunk first
        return [{"chunk_id": self.chunks[i].get("chunk_id"),
                 "title": self.chunks[i].get("title") or self.chunks[i].get("url") or "",
                 "url": self.chunks[i].get("url") or "",
                 "score": round(float(sims[i]), 4),
                 "text": self.chunks[i]["text"][:self.max_chars]} for i in order]


# ---------------------------------------------------------------------------------------------
# the chatbot: models loaded once, prompts, generation
# ---------------------------------------------------------------------------------------------

@dataclass
class Prompt:
    ids: list[int]           # token ids the model continues
    messages: list[dict]     # what it sees: system prompt + kept turns (last question with excerpts)
    dropped: int = 0         # oldest messages left out to fit the context
    sources: list[dict] = field(default_factory=list)  # retrieved chunks (RAG)
    renders: int = 1         # chat-template renders it took to find the cut (O(log n), see Chatbot._fit)


@dataclass
class Chatbot:
    model: Any                          # the base model, or a PeftModel (base + LoRA adapter)
    tokenizer: Any
    engine: Engine
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    context_tokens: int = 2048          # prompt + answer must fit in this many tokens
    retriever: Optional[Retriever] = None
    rag_unavailable: str = "RAG is off (start with --rag)"  # why, when retriever is None
    info: dict = field(default_factory=dict)  # model paths, template sha (shown by /v1/models)
    _tok_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def models(self) -> list[str]:
        """Variants this chatbot can answer with."""
        return ["base", "finetuned"] if self.engine.has_adapter else ["base"]

    @classmethod
    def load(cls, model_dir: str | Path = MODEL_DIR, adapter_dir: str | Path | None = ADAPTER_DIR, *,
             system_prompt: str = DEFAULT_SYSTEM_PROMPT, encoder_dir: str | Path | None = None,
             chunks_path: str | Path | None = None, top_k: int = 3, max_chars: int = 1500,
             retriever_method: str = "hybrid", dtype: str = "auto", context_tokens: Optional[int] = None, max_batch: int = 8,
             max_waiting: int = 16) -> "Chatbot":
        """Load the base model (+ adapter, unless ``adapter_dir`` is None) and, when
        ``encoder_dir`` and ``chunks_path`` are given, the retriever; start the engine."""
        model_dir = Path(model_dir)
        # Check every path before the slow imports, so a missing model fails in a blink.
        if not (model_dir / "config.json").is_file():
            raise missing("base model", model_dir)
        if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise missing("LoRA adapter (the train stage's output)", Path(adapter_dir))
        if (encoder_dir is None) != (chunks_path is None):
            raise ValueError("RAG needs both encoder_dir and chunks_path (or neither)")
        if encoder_dir is not None and not Path(encoder_dir).is_dir():
            raise missing("encoder", Path(encoder_dir))
        if chunks_path is not None and not Path(chunks_path).is_file():
            raise missing("chunks file", Path(chunks_path))

        import transformers

        from policytune.lm.adapters import AdapterError, check_adapter, load_lm, load_tok

        transformers.logging.set_verbosity_error()
        tokenizer = load_tok(model_dir)  # the tokenizer's chat template (fallback: the train stage's)
        info = {"model_dir": str(model_dir), "adapter_dir": str(adapter_dir) if adapter_dir else None,
                "chat_template_sha": template_sha(tokenizer)}
        if adapter_dir is not None:
            try:  # before loading any weights: a mismatch fails at once
                train_info = check_adapter(adapter_dir, tokenizer)
            except AdapterError as e:
                raise ChatbotError(str(e)) from None
            info["adapter_trained_with_template_sha"] = train_info.get("chat_template_sha")
        model = load_lm(model_dir, dtype=dtype)
        if adapter_dir is not None:
            from peft import PeftModel

            # Not merged: the same weights answer as base (adapter off per row) and fine-tuned.
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
        retriever = None
        if encoder_dir is not None:
            from policytune.lm.loading import load_encoder

            retriever = Retriever(load_encoder(encoder_dir), read_jsonl(chunks_path), top_k, max_chars,
                                  retriever_method)
            info.update(encoder_dir=str(encoder_dir), chunks=str(chunks_path), chunk_count=len(retriever.chunks))
        limit = context_tokens or int(getattr(model.config, "max_position_embeddings", 0) or 2048)
        engine = Engine(model, tokenizer, stop_token_ids(model, tokenizer), max_batch=max_batch,
                        max_waiting=max_waiting).start()
        return cls(model, tokenizer, engine, system_prompt=system_prompt, context_tokens=limit,
                   retriever=retriever, info=info)

    def with_engine(self, engine: Engine) -> "Chatbot":
        """The same models and settings behind another engine (e.g. other queue limits)."""
        return dataclasses.replace(self, engine=engine)

    def close(self) -> None:
        self.engine.close()

    def encode(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        with self._tok_lock:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def build_prompt(self, messages: Sequence[dict], *, max_new_tokens: int, rag: bool = False,
                     gone: Optional[Callable[[], bool]] = None) -> Prompt:
        """System prompt + as many of the latest turns as fit with ``max_new_tokens`` more tokens.

        ``messages`` are {role, content} dicts ending with the user's question; a leading system
        message replaces the default system prompt. With ``rag`` the question carries its
        retrieved excerpts (only the current question: earlier turns stay as they were asked).
        Whole turns are dropped, oldest first (see :meth:`_fit`: O(log n) renders, not one per turn)."""
        from policytune.lm.chat_format import rag_question

        msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
        if not msgs or msgs[-1]["role"] != "user":
            raise ChatbotError("the conversation must end with a user message")
        if msgs[0]["role"] == "system":
            system = [msgs.pop(0)]
        else:
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        sources: list[dict] = []
        if rag:
            if self.retriever is None:
                raise ChatbotError(self.rag_unavailable)
            sources = self.retriever.search(msgs[-1]["content"])
            msgs[-1] = {"role": "user", "content": rag_question(msgs[-1]["content"], [s["text"] for s in sources])}
        return self._fit(system, msgs, max_new_tokens=max_new_tokens, rag=rag, sources=sources, gone=gone)

    def _fit(self, system: list[dict], msgs: list[dict], *, max_new_tokens: int, rag: bool, sources: list[dict],
             gone: Optional[Callable[[], bool]] = None) -> Prompt:
        """The longest suffix of ``msgs`` starting at a turn (a user message; or the whole
        conversation) whose prompt fits. The whole conversation is rendered once; when it does not
        fit, the cut is found by galloping back from the last question (1, 2, 4... turns) and then
        bisecting, so the work is one render of the conversation plus O(log n) renders no longer
        than twice what is kept, instead of one render of the whole conversation per dropped turn
        (quadratic: 2,001 turns took 12 s). Token counts fall as turns are dropped (every template
        renders each message on its own), so the cut is the one dropping turns one by one finds.
        ``gone()``, asked between renders, True raises :class:`PromptCancelled`."""
        budget = self.context_tokens - max_new_tokens

        def fits(k: int) -> Optional[list[int]]:
            if gone is not None and gone():
                raise PromptCancelled("the client went away")
            ids = self.encode(system + msgs[k:])
            renders.append(len(ids))
            return ids if len(ids) <= budget else None

        renders: list[int] = []
        whole = fits(0)
        if whole is not None:
            return Prompt(whole, system + msgs, 0, sources, renders=1)
        # Cut points: the start of each turn (a user message); the last message is the question.
        cuts = [0] + [k for k in range(1, len(msgs)) if msgs[k]["role"] == "user"]
        good, bad = len(cuts) - 1, 0          # indices into cuts: good fits, bad does not
        kept = fits(cuts[good]) if good > bad else None
        if kept is None:
            raise ChatbotError(
                f"the question takes {renders[-1]} tokens with the system prompt"
                f"{' and excerpts' if rag else ''}; with max_new_tokens={max_new_tokens} that exceeds "
                f"the {self.context_tokens}-token context. Shorten it or ask for fewer tokens.")
        step = 1
        while good - step > bad:              # gallop back: 1, 2, 4, ... more turns
            ids = fits(cuts[good - step])
            if ids is None:
                bad = good - step
                break
            good, kept, step = good - step, ids, step * 2
        while good - bad > 1:                 # bisect between the last fit and the first misfit
            mid = (good + bad) // 2
            ids = fits(cuts[mid])
            if ids is None:
                bad = mid
            else:
                good, kept = mid, ids
        return Prompt(kept, system + msgs[cuts[good]:], cuts[good], sources, renders=len(renders))

    def ask(self, messages: Sequence[dict], *, finetuned: bool = True, rag: bool = False,
            max_new_tokens: int = 256, temperature: float = 0.0, seed: Optional[int] = None, top_p: float = 1.0,
            gone: Optional[Callable[[], bool]] = None) -> tuple[Reply, Prompt]:
        """Queue an answer; iterate the returned :class:`Reply` for its text as it is generated.

        Sampling settings out of range raise :class:`policytune.lm.engine.InvalidRequest` before any
        work; ``gone()`` True (the client left) while the prompt is built raises :class:`PromptCancelled`."""
        if finetuned and not self.engine.has_adapter:
            raise ChatbotError("no adapter is loaded (base model only)")
        check_sampling(temperature, top_p, seed)  # fail fast, before retrieval and rendering
        prompt = self.build_prompt(messages, max_new_tokens=max_new_tokens, rag=rag, gone=gone)
        if gone is not None and gone():
            raise PromptCancelled("the client went away")
        reply = self.engine.submit(prompt.ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                   seed=seed, adapter=finetuned, top_p=top_p)
        return reply, prompt


# ---------------------------------------------------------------------------------------------
# terminal chat
# ---------------------------------------------------------------------------------------------

def add_model_args(ap: argparse.ArgumentParser) -> None:
    """Flags shared by `chat`, `serve` and the benchmark."""
    ap.add_argument("--model-dir", default=str(MODEL_DIR), help="base model folder (default: %(default)s)")
    ap.add_argument("--adapter-dir", default=str(ADAPTER_DIR), help="LoRA adapter folder (default: %(default)s)")
    ap.add_argument("--base", action="store_true", help="base model only: do not load the adapter")
    ap.add_argument("--encoder-dir", default=str(ENCODER_DIR), help="RAG encoder folder (default: %(default)s)")
    ap.add_argument("--chunks", default=str(CHUNKS_PATH), help="RAG chunks JSONL (default: %(default)s)")
    ap.add_argument("--top-k", type=int, default=None,
                    help="chunks retrieved per question (default: params.yaml evaluate.rag.top_k, else 3)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="answer length limit (default: %(default)s)")
    ap.add_argument("--context-tokens", type=int, default=None,
                    help="prompt + answer token limit (default: the model's max_position_embeddings)")
    ap.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (default: auto)")
    ap.add_argument("--params", default=None, help="params.yaml path (default: ./params.yaml)")


def print_sources(sources: list[dict], out=sys.stdout) -> None:
    print("sources:", file=out)
    for i, s in enumerate(sources, 1):
        print(f"  [{i}] {s['title']} — {s['url'] or s['chunk_id']} (score {s['score']:.2f})", file=out)


def repl(bot: Chatbot, *, finetuned: bool, rag: bool, max_new_tokens: int, temperature: float,
         read=input, out=sys.stdout) -> None:
    """Read questions line by line, stream each answer, keep the conversation as history."""
    history: list[dict] = []
    while True:
        try:
            question = read("you> ").strip()
        except EOFError:  # Ctrl-D, or the end of piped input
            out.write("\n")
            return
        if question in ("/exit", "/quit"):
            return
        if question == "/reset":
            history = []
            print("(conversation cleared)", file=out)
            continue
        if not question:
            continue
        try:
            reply, prompt = bot.ask(history + [{"role": "user", "content": question}], finetuned=finetuned,
                                    rag=rag, max_new_tokens=max_new_tokens, temperature=temperature)
        except ChatbotError as e:
            print(f"(error: {e})", file=out)
            continue
        if prompt.dropped:
            print(f"(the {prompt.dropped} oldest messages were dropped to fit the context)", file=out)
        out.write("bot> ")
        pieces = []
        try:
            for text in reply:
                pieces.append(text)
                out.write(text)
                out.flush()
        except KeyboardInterrupt:
            reply.cancel()
            out.write(" [stopped]")
        out.write("\n")
        if reply.error:
            print(f"(error: {reply.error})", file=out)
        elif reply.finish_reason == "length":
            print(f"(answer cut at --max-new-tokens {max_new_tokens})", file=out)
        if prompt.sources:
            print_sources(prompt.sources, out)
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": "".join(pieces).strip()}]


VARIANT_CHOICES = ("best", "base", "finetuned", "base_rag", "finetuned_rag")
EVAL_JSON = Path("metrics/eval.json")


def resolve_variant(variant: str = "best", base: bool = False, rag: bool = False,
                    eval_json: Path = EVAL_JSON) -> tuple[bool, bool, str]:
    """(fine-tuned?, RAG?, why) of the variant that answers: explicit --base / --rag win, then a
    named --variant, then ``best`` = the evaluate stage's best variant by fact recall."""
    if base or rag:
        return not base, rag, "chosen by --base/--rag"
    why = f"--variant {variant}"
    if variant == "best":
        from policytune.core.records import read_json
        from policytune.evaluation.config import best_variant

        try:
            found = best_variant(read_json(eval_json))
        except (OSError, ValueError, TypeError, AttributeError):
            found = None
        variant = found or "finetuned"
        why = (f"the best variant by fact recall in {eval_json}" if found else
               f"no fact recall in {eval_json} (run `dvc repro evaluate`); the fine-tuned model answers")
    return variant.startswith("finetuned"), variant.endswith("_rag"), why


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--variant", choices=VARIANT_CHOICES, default="best",
                    help="which variant answers (default: best = the evaluate stage's best by fact recall)")
    ap.add_argument("--rag", action="store_true", help="ground answers in the top-k chunks and print their URLs")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), else sampling")
    args = ap.parse_args(argv)
    if args.max_new_tokens < 1 or (args.top_k is not None and args.top_k < 1) or not 0 <= args.temperature <= 2:
        ap.error("--max-new-tokens and --top-k must be >= 1, --temperature from 0 to 2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    system_prompt, top_k, method = defaults_from_params(args.params)
    finetuned, rag, why = resolve_variant(args.variant, args.base, args.rag)
    args.base, args.rag = not finetuned, rag
    try:
        bot = Chatbot.load(args.model_dir, None if args.base else args.adapter_dir, system_prompt=system_prompt,
                           encoder_dir=args.encoder_dir if args.rag else None,
                           chunks_path=args.chunks if args.rag else None, top_k=args.top_k or top_k,
                           retriever_method=method, dtype=args.dtype, context_tokens=args.context_tokens, max_batch=1, max_waiting=1)
    except ChatbotError as e:
        raise SystemExit(f"chat: {e}") from None
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    variant = "base model" if args.base else f"fine-tuned (adapter {args.adapter_dir})"
    print(f"policytune chat — {args.model_dir}, {variant}"
          f"{', RAG top ' + str(bot.retriever.top_k) if bot.retriever else ', no retrieval'} ({why}), "
          f"chat template {bot.info['chat_template_sha']}. /reset clears, /exit quits.")
    try:
        repl(bot, finetuned=not args.base, rag=args.rag, max_new_tokens=args.max_new_tokens,
             temperature=args.temperature)
    except KeyboardInterrupt:
        print()
    finally:
        bot.close()


if __name__ == "__main__":
    main()
