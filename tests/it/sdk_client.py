"""A guest using an official SDK exactly as a user would: configured only by the environment
(HTTPS_PROXY, SSL_CERT_FILE, OPENAI_API_KEY / ANTHROPIC_API_KEY / ANTHROPIC_AUTH_TOKEN,
OPENAI_BASE_URL / ANTHROPIC_BASE_URL), holding a handle where the SDK wants its key.

    python3 sdk_client.py openai|anthropic call|refused

`call`: one non-streaming and one streaming request; `refused`: one request that the proxy
refuses, reporting the exception, how many HTTP attempts the SDK made and how long it took.
Prints one JSON object on stdout. Used by tests/it/sdk.rs; the SDK itself is not modified.
"""

import json
import logging
import sys
import time

sdk_name, mode = sys.argv[1], sys.argv[2]


class Attempts(logging.Handler):
    """Counts the SDK's own "Sending HTTP Request" debug lines: one per attempt, retries too."""

    count = 0

    def emit(self, record):
        if record.getMessage().startswith("Sending HTTP Request"):
            Attempts.count += 1


logger = logging.getLogger(f"{sdk_name}._base_client")
logger.setLevel(logging.DEBUG)
logger.addHandler(Attempts())
logger.propagate = False

if sdk_name == "openai":
    import openai as sdk

    client = sdk.OpenAI()
    messages = [{"role": "user", "content": "which header carried the key?"}]

    def plain():
        r = client.chat.completions.create(model="gpt-test", messages=messages)
        return r.choices[0].message.content, [r.object]

    def streamed():
        texts, kinds = [], []
        for chunk in client.chat.completions.create(model="gpt-test", messages=messages, stream=True):
            kinds.append(chunk.object)
            for choice in chunk.choices:
                if choice.delta.content:
                    texts.append(choice.delta.content)
        return texts, kinds

elif sdk_name == "anthropic":
    import anthropic as sdk

    client = sdk.Anthropic()
    messages = [{"role": "user", "content": "which header carried the key?"}]

    def plain():
        r = client.messages.create(model="claude-test", max_tokens=32, messages=messages)
        return "".join(b.text for b in r.content if b.type == "text"), [r.type]

    def streamed():
        texts, kinds = [], []
        for event in client.messages.create(model="claude-test", max_tokens=32, messages=messages, stream=True):
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
        return texts, kinds

else:
    sys.exit(f"unknown SDK {sdk_name}")

# Which headers the SDK itself puts the key in (names only: the values are the handle).
auth_headers = sorted(k.lower() for k in client.auth_headers)
out = {"sdk": sdk_name, "version": sdk.__version__, "auth_headers": auth_headers}

if mode == "call":
    out["text"], out["kinds"] = plain()
    out["stream_texts"], out["stream_kinds"] = streamed()
    out["attempts"] = Attempts.count
elif mode == "refused":
    t0 = time.monotonic()
    try:
        plain()
        out["error"] = None
    except Exception as e:  # report whatever the SDK raised
        chain, x = [], e
        while x is not None and len(chain) < 10:
            chain.append(f"{type(x).__name__}: {x}")
            x = x.__cause__ or x.__context__
        out["error"] = type(e).__name__
        out["status"] = getattr(e, "status_code", None)
        out["body"] = getattr(e, "body", None)
        out["chain"] = chain
    out["elapsed"] = time.monotonic() - t0
    out["attempts"] = Attempts.count
else:
    sys.exit(f"unknown mode {mode}")

print(json.dumps(out))
