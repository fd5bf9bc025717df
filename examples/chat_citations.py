"""Chat with documents through the openai SDK: the answer, how relevant each document is, and
which documents each sentence of the answer drew on, all from the one generation.

    qrhead serve                            # in another terminal
    python examples/chat_citations.py

The documents go in ``extra_body`` (the SDK sends unknown fields as they are); the scores and
citations come back in the response's ``qrhead`` object (``resp.model_extra["qrhead"]``).
QRHEAD_URL: where the app listens (default http://127.0.0.1:8000).
QRHEAD_API_KEY: the key, when the server was started with one.
"""

import os
import sys

import openai

URL = os.environ.get("QRHEAD_URL", "http://127.0.0.1:8000")
client = openai.OpenAI(base_url=f"{URL}/v1", api_key=os.environ.get("QRHEAD_API_KEY") or "none",
                       timeout=300)
QUESTION = "When was the Eiffel Tower completed?"
DOCUMENTS = [
    {"title": "Golden Gate Bridge",
     "text": "The Golden Gate Bridge spans the strait at the entrance to San Francisco Bay."},
    {"title": "Eiffel Tower",
     "text": "The Eiffel Tower is a lattice tower on the Champ de Mars in Paris. It was "
             "completed in 1889 as the entrance arch of the World's Fair."},
    "Pasta is a staple food of Italian cuisine.",
]


def title(i: int) -> str:
    doc = DOCUMENTS[i]
    return doc["title"] if isinstance(doc, dict) else doc[:40]


def main() -> None:
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=model, messages=messages, max_tokens=48,
                                           temperature=0, extra_body={"documents": DOCUMENTS})
    qrhead = reply.model_extra["qrhead"]
    print(f"question: {QUESTION}\nanswer: {reply.choices[0].message.content}")
    print("documents (best first):")
    for d in qrhead["documents"]:
        print(f"  {d['rank']}. {d['score']:8.4f}  [{d['index']}] {title(d['index'])}")
    print("citations:")
    for c in qrhead["citations"]:
        sources = ", ".join(f"[{i}] {s:.0%}" for i, s in zip(c["document_indices"], c["shares"]))
        print(f"  {c['text']!r} <- {sources}")

    # Streamed: the scores arrive with the first chunk, each sentence's citation as soon as
    # the sentence is complete.
    print("streamed: ", end="", flush=True)
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=48,
                                                temperature=0, stream=True,
                                                extra_body={"documents": DOCUMENTS}):
        extra = (chunk.model_extra or {}).get("qrhead", {})
        if "documents" in extra:
            print(f"(best document: [{extra['documents'][0]['index']}]) ", end="")
        if chunk.choices:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        for c in extra.get("citations", []):
            print(f" [cites {c['document_indices']}]", end="", flush=True)
    print()


if __name__ == "__main__":
    try:
        main()
    except openai.APIStatusError as e:                # 401 (key), 400 (bad request), 503 ...
        sys.exit(f"HTTP {e.status_code}: {e.message}")
    except openai.APIConnectionError:
        sys.exit(f"cannot reach {URL}: is the app running (qrhead serve)?")
