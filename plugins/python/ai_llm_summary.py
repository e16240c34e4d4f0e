"""Summaries written by a language model behind an OpenAI-compatible chat-completions endpoint
(Ollama, vLLM, llama.cpp's server, or a hosted API), streamed token by token.

Entries are collected until ``batch_entries`` have come; then the model is asked for a short
summary of them, with ``stream: true``. Every token that arrives is yielded at once as a partial
result (``{"delta", "text"}``), so ``logloom ai tail -f`` shows the summary being written; the
last result is the whole summary. Without an ``endpoint`` the plugin says so once and answers
nothing, and the rest of the pipeline goes on. Standard library only (urllib).
"""

import json
import logging
import urllib.error
import urllib.request

PLUGIN_INFO = {
    "name": "ai_llm_summary",
    "version": "1.0.0",
    "type": "ai",
    "capability": ["text", "summary", "stream"],
    "author": "Logloom Team",
    "description": "LLM summaries of batches of entries, streamed token by token",
    "api": ">=1.0,<2",
}

log = logging.getLogger("logloom.plugins.ai_llm_summary")

settings = {
    "endpoint": None,
    "model": "llama3.2",
    "api_key": None,
    "batch_entries": 200,
    "max_tokens": 300,
    "timeout_s": 60,
    "prompt": (
        "You are an SRE. Summarise these log entries in at most three sentences: what is "
        "failing, where, and whether it needs attention. Name IPs, users and hosts involved."
    ),
}
state = {"buffer": []}


def plugin_init(config):
    unknown = set(config) - set(settings)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    settings.update(config)
    state["buffer"] = []
    if not settings["endpoint"]:
        log.warning("ai_llm_summary: no endpoint configured (set endpoint in its YAML); idle")
    return 0


def analyze(entry):
    if not settings["endpoint"]:
        return None
    state["buffer"].append(entry)
    if len(state["buffer"]) < int(settings["batch_entries"]):
        return None
    batch, state["buffer"] = state["buffer"], []
    return summarise(batch)


def summarise(entries):
    """Yield ``{"delta", "text"}`` per streamed token, then the whole summary."""
    lines = "\n".join(
        f"{e.get('timestamp', '')} {e.get('level', '')} {e.get('module', '')}: "
        f"{e.get('message') or e.get('lang_key', '')}"
        for e in entries
    )
    body = {
        "model": settings["model"],
        "stream": True,
        "max_tokens": int(settings["max_tokens"]),
        "messages": [
            {"role": "system", "content": settings["prompt"]},
            {"role": "user", "content": lines},
        ],
    }
    text = ""
    for delta in stream_completion(body):
        text += delta
        yield {"delta": delta, "text": text}
    yield {
        "summary": text.strip(),
        "entries": len(entries),
        "model": settings["model"],
        "first": entries[0].get("timestamp"),
        "last": entries[-1].get("timestamp"),
    }


def stream_completion(body):
    """The content deltas of a streamed chat completion (server-sent events)."""
    url = settings["endpoint"].rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if settings["api_key"]:
        headers["Authorization"] = f"Bearer {settings['api_key']}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        response = urllib.request.urlopen(request, timeout=float(settings["timeout_s"]))
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{url} answered {exc.code}: {exc.read()[:200]!r}") from None
    with response:
        for raw in response:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue  # blank separators, comments, "event:" lines
            data = line[5:].strip()
            if data == "[DONE]":
                return
            choices = json.loads(data).get("choices") or [{}]
            delta = (choices[0].get("delta") or {}).get("content")
            if delta:
                yield delta


def plugin_shutdown():
    state["buffer"] = []
