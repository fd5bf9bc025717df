"""A retrieval-augmented answer, streamed: POST /v1/answer with "stream": true.

The app splits the context into passages, its retrieval heads pick the best ones, and the
generator answers from them. The reply is server-sent events: first the chosen passages
("answer.passages"), then the generator's text in pieces (vLLM's "chat.completion.chunk"),
then how long each step took ("answer.timings"), then "data: [DONE]".

    qrhead serve                            # in another terminal
    python examples/answer_stream.py

QRHEAD_URL: where the app listens (default http://127.0.0.1:8000).
QRHEAD_API_KEY: the key, when the server was started with one (sent as 'Authorization: Bearer').
"""

import json
import os
import sys

import httpx

URL = os.environ.get("QRHEAD_URL", "http://127.0.0.1:8000")
KEY = os.environ.get("QRHEAD_API_KEY")
CONTEXT = """Pasta is a staple food of Italian cuisine, made from wheat flour and water.

The Eiffel Tower is a lattice tower on the Champ de Mars in Paris. It was completed in 1889
as the entrance arch of the World's Fair.

The Golden Gate Bridge spans the strait at the entrance to San Francisco Bay."""
BODY = {"question": "When was the Eiffel Tower completed?", "context": CONTEXT, "top_k": 2,
        "max_tokens": 48, "stream": True}


def events(response: httpx.Response):
    """The JSON payload of each server-sent event, as it arrives."""
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line.removeprefix("data: "))


def main() -> None:
    headers = {"Authorization": f"Bearer {KEY}"} if KEY else {}
    print(f"question: {BODY['question']}\nanswer: ", end="", flush=True)
    with httpx.stream("POST", f"{URL}/v1/answer", json=BODY, headers=headers,
                      timeout=300) as response:
        if response.status_code != 200:
            response.read()                           # the error says what to fix
            sys.exit(f"\nHTTP {response.status_code}: {response.text}")
        for event in events(response):
            if event["object"] == "answer.passages":
                passages = event["passages"]
            elif event["object"] == "chat.completion.chunk" and event["choices"]:
                print(event["choices"][0]["delta"].get("content") or "", end="", flush=True)
            elif event["object"] == "answer.timings":
                timings = event["timings"]
    print("\nsources (best first; start/end are offsets into the context):")
    for p in passages:
        text = " ".join(p["text"].split())           # a passage may span lines
        print(f"[{p['rank']}] {p['score']:8.4f}  {p['start']}-{p['end']}  {text}")
    print(f"retrieval {timings['retrieval_s']:.2f} s, generation {timings['generation_s']:.2f} s")


if __name__ == "__main__":
    try:
        main()
    except httpx.ConnectError:
        sys.exit(f"cannot reach {URL}: is the app running (qrhead serve)?")
