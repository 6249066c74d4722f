"""Layer 7 — app: the chatbot (terminal) and the local web app / OpenAI-compatible server."""
