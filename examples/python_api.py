"""Rank documents in Python with QRHeadRanker: no server, the model runs in this process.

    python examples/python_api.py

QRHeadRanker() takes the bundled SmolLM2-135M and its detected retrieval heads
(configs/heads/smollm2-135m-hotpotqa.yaml) on the transformers backend; pass backend="vllm"
to score inside a vLLM engine instead (same scores), and model= / heads= for other ones.
"""

from qrhead_vllm import QRHeadRanker

QUERY = "Which city is the capital of France?"
DOCUMENTS = [  # plain strings, or {"id", "title", "text"} objects
    "Pasta is a staple food of Italian cuisine.",
    {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
    "The Eiffel Tower stands on the Champ de Mars in Paris.",
]

ranker = QRHeadRanker()
try:
    results = ranker.rank(QUERY, DOCUMENTS)
finally:
    ranker.close()                                     # frees the model

# Best first. The score is the attention mass the retrieval heads put on the document (minus
# what they put there for an empty query); only the order means something.
print(f"query: {QUERY}")
for r in results:
    print(f"{r.rank:>2}. {r.score:8.4f}  {r.doc_id!s:>5}  {r.document.text}")
