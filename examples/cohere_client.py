"""Rerank documents through the cohere SDK: its v1 Client calls /v1/rerank, its ClientV2
calls /v2/rerank; both are served by the app in Cohere's format.

    qrhead serve                            # in another terminal
    python examples/cohere_client.py

QRHEAD_URL: where the app listens (default http://127.0.0.1:8000).
QRHEAD_API_KEY: the key, when the server was started with one (sent as 'Authorization: Bearer').
QRHEAD_MODEL: the retriever's name (default smollm2-135m, what `qrhead serve` runs).
"""

import os
import sys

import cohere
import httpx
from cohere.core.api_error import ApiError

URL = os.environ.get("QRHEAD_URL", "http://127.0.0.1:8000")
KEY = os.environ.get("QRHEAD_API_KEY") or "none"   # the SDK insists on a key
MODEL = os.environ.get("QRHEAD_MODEL", "smollm2-135m")
QUERY = "Which city is the capital of France?"
DOCUMENTS = ["Paris is the capital and largest city of France.",
             "Pasta is a staple food of Italian cuisine.",
             "The Eiffel Tower stands on the Champ de Mars in Paris."]


def show(title: str, results) -> None:
    """Best first: rank, the QRHead score (attention mass; may be negative), the document."""
    print(f"{title}\nquery: {QUERY}")
    for rank, r in enumerate(results, 1):
        print(f"{rank:>2}. {r.relevance_score:8.4f}  {DOCUMENTS[r.index]}")


def main() -> None:
    v1 = cohere.Client(api_key=KEY, base_url=URL, timeout=300)
    show("cohere.Client -> /v1/rerank", v1.rerank(model=MODEL, query=QUERY,
                                                  documents=DOCUMENTS).results)
    v2 = cohere.ClientV2(api_key=KEY, base_url=URL, timeout=300)
    show("cohere.ClientV2 -> /v2/rerank, top_n=2", v2.rerank(model=MODEL, query=QUERY,
                                                             documents=DOCUMENTS, top_n=2).results)


if __name__ == "__main__":
    try:
        main()
    except ApiError as e:                              # 401 (key), 400 (bad request), 503 ...
        sys.exit(f"HTTP {e.status_code}: {e.body}")
    except httpx.ConnectError:
        sys.exit(f"cannot reach {URL}: is the app running (qrhead serve)?")
