"""Chat with the app through the openai SDK: the app serves vLLM's OpenAI API under /v1.

    qrhead serve                            # in another terminal
    python examples/openai_client.py

QRHEAD_URL: where the app listens (default http://127.0.0.1:8000).
QRHEAD_API_KEY: the key, when the server was started with one (the SDK sends it as
'Authorization: Bearer <key>').
"""

import os
import sys

import openai

URL = os.environ.get("QRHEAD_URL", "http://127.0.0.1:8000")
# The SDK insists on a key; a server without keys ignores whatever is sent.
client = openai.OpenAI(base_url=f"{URL}/v1", api_key=os.environ.get("QRHEAD_API_KEY") or "none",
                       timeout=300)
QUESTION = "What is the capital of France?"


def main() -> None:
    model = client.models.list().data[0].id      # a name the server answers to
    messages = [{"role": "user", "content": QUESTION}]
    print(f"model: {model}\nquestion: {QUESTION}")

    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=32,
                                           temperature=0)
    print(f"answer: {reply.choices[0].message.content}")

    # The same request streamed: print each piece of text as it arrives.
    print("answer, streamed: ", end="", flush=True)
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=32,
                                                temperature=0, stream=True):
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
    print()


if __name__ == "__main__":
    try:
        main()
    except openai.APIStatusError as e:                # 401 (key), 400 (bad request), 503 ...
        sys.exit(f"HTTP {e.status_code}: {e.message}")
    except openai.APIConnectionError:
        sys.exit(f"cannot reach {URL}: is the app running (qrhead serve)?")
