"""Chat rows -> token ids with assistant-only labels: each assistant turn is located by rendering
the tokenizer's chat template up to the turn with the generation prompt (exactly the prompt
inference uses) and up to the turn's end; the text in between carries the labels."""

from __future__ import annotations

from dataclasses import dataclass

from policytune.core.progress import get_logger
from policytune.training.config import TrainError

log = get_logger("train")

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]          # the token id where the token carries loss, IGNORE elsewhere
    row: int                   # index of the row in its file
    n_labels: int = 0          # tokens that carry loss (never the first token)
    prompt_len: int = 0        # tokens before the first labelled one

    def __post_init__(self):
        self.n_labels = sum(1 for t in self.labels[1:] if t != IGNORE)
        self.prompt_len = next((i for i, t in enumerate(self.labels) if t != IGNORE), len(self.labels))


def _render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _tokens(tokenizer, text: str) -> list[int]:
    # The chat template writes every special token itself (apply_chat_template does the same).
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise TrainError("'messages' must be a non-empty list of {role, content}")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or \
                m.get("role") not in ("system", "user", "assistant"):
            raise TrainError(f"bad message {m!r}: need role system|user|assistant and string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise TrainError("conversation has no assistant message to learn")


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation; labels are IGNORE except on assistant tokens.

    For assistant turn i the template renders messages[:i] + generation prompt (what inference
    feeds) and messages[:i+1]; the text between them, minus trailing whitespace, is the turn:
    its content plus the end-of-turn marker the model must learn to emit.

    Tokens: the prompt is tokenized on its own (= the ids inference feeds); the answer's ids
    are those that tokenizing prompt + answer gives after the prompt's ids (the answer's
    natural tokenization in context, e.g. no SentencePiece word-start mark after a newline).
    Where the tokenizer merges across the border, the answer is tokenized on its own instead.
    Tokens after the last assistant turn carry no loss and are dropped.
    """
    _check_messages(messages)
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # rendered text already turned into ids
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], True)
        turn = _render(tokenizer, messages[: i + 1], False)
        if not prompt.startswith(done) or not turn.startswith(prompt):
            raise TrainError(
                "the chat template is not prefix-consistent (rendering a conversation up to an "
                "assistant turn with the generation prompt is not a prefix of the rendering "
                "with the turn), so assistant tokens cannot be located; use a template that "
                "renders earlier turns unchanged")
        answer = turn[len(prompt):].rstrip()
        if not answer:
            raise TrainError(f"assistant turn {i} renders to no text; nothing to learn")
        prompt_ids = _tokens(tokenizer, prompt)
        if prompt_ids[:len(ids)] != ids:  # later text re-tokenized earlier turns: keep them
            prompt_ids = ids + _tokens(tokenizer, prompt[len(done):])
        whole = _tokens(tokenizer, prompt + answer)
        if len(whole) > len(prompt_ids) and whole[:len(prompt_ids)] == prompt_ids:
            answer_ids = whole[len(prompt_ids):]
        else:
            answer_ids = _tokens(tokenizer, answer)
        labels += [IGNORE] * (len(prompt_ids) - len(ids)) + answer_ids
        ids = prompt_ids + answer_ids
        done = prompt + answer
    if not ids or labels[0] != IGNORE:
        raise TrainError("conversation renders no prompt before the first assistant turn")
    return ids, labels


def encode_rows(tokenizer, rows: list[dict], max_length: int, overlong: str, what: str
                ) -> tuple[list[Example], dict]:
    """Examples of ``rows``; a row over ``max_length`` is an error (or dropped and counted)."""
    examples, dropped = [], {"prompt_too_long": 0, "answer_too_long": 0}
    for i, row in enumerate(rows):
        where = f"{what} row {i + 1}" + (f" (qa_id {row['qa_id']})" if row.get("qa_id") else "")
        if "messages" not in row:
            raise TrainError(f"{where}: no 'messages' field (chat-format rows come from split/augment)")
        try:
            ex = Example(*encode_conversation(tokenizer, row["messages"]), row=i)
        except TrainError as e:
            raise TrainError(f"{where}: {e}") from None
        if len(ex.input_ids) > max_length:
            kind = "prompt_too_long" if ex.prompt_len >= max_length else "answer_too_long"
            if overlong == "error":
                detail = (f"its prompt alone is {ex.prompt_len} tokens" if kind == "prompt_too_long"
                          else f"the answer would be cut (prompt {ex.prompt_len} tokens)")
                raise TrainError(
                    f"{where}: {len(ex.input_ids)} tokens > train.max_length {max_length}; {detail}. "
                    "Raise train.max_length, or set train.overlong: drop to skip and count such rows")
            dropped[kind] += 1
            continue
        if ex.n_labels == 0:
            raise TrainError(f"{where}: empty label mask (no assistant token carries loss)")
        examples.append(ex)
    n_drop = sum(dropped.values())
    if n_drop:
        log.warning("%s: dropped %d of %d rows longer than max_length %d (%s)", what, n_drop,
                    len(rows), max_length, ", ".join(f"{k} {v}" for k, v in dropped.items() if v))
    return examples, {"rows": len(rows), "kept": len(examples), "dropped_overlong": n_drop, **dropped}
