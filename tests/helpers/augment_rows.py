"""Train rows, questions and tool checks shared by the augment tests (library and stage)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from policytune.lm.chat_format import to_messages

HAVE_APERTIUM = shutil.which("apertium") is not None and Path("/usr/share/apertium/modes/eng-spa.mode").exists()
HAVE_WORDNET = Path("/usr/share/wordnet/data.noun").exists() and Path("/usr/share/wordnet/index.sense").exists()
needs_apertium = pytest.mark.skipif(not HAVE_APERTIUM, reason="needs `apt-get install apertium apertium-eng-spa`")
needs_wordnet = pytest.mark.skipif(not HAVE_WORDNET, reason="needs `apt-get install wordnet-base wordnet-sense-index`")

SENTENCE = "The employee must submit the request quickly"
QUESTIONS = [
    "How many days of annual leave do employees get after 5 years?",
    "Who must approve a purchase above 25,000 EUR?",
    "Can I use a generative AI tool to summarise patient records?",
    "What happens if an expense claim is submitted after 90 days?",
    "Which documents must a contractor provide before starting work?",
]


def train_row(i: int, question: str, answer: str | None = None) -> dict:
    answer = answer or f"See section {i + 1}: the limit is {100 + i} EUR."
    return {"qa_id": f"qa{i:03d}", "question": question, "answer": answer, "chunk_id": f"c{i}",
            "doc_id": "d0", "url": "file://x", "teacher": {"backend": "local", "model": "m", "prompt_sha": "p"},
            "split": "train", "messages": to_messages(question, answer, system="SYS")}


def rows_for(n: int) -> list[dict]:
    return [train_row(i, QUESTIONS[i % len(QUESTIONS)] + f" (case {i})") for i in range(n)]
