#!/usr/bin/env bash
# The app's own routes with nothing but curl: rerank documents, chat, answer from a context.
#
#   qrhead serve                 # in another terminal: the app on http://127.0.0.1:8000
#   bash examples/curl.sh
#
# QRHEAD_URL: where the app listens (default http://127.0.0.1:8000).
# QRHEAD_API_KEY: the key, when the server was started with one (QRHEAD_API_KEY or
#   --api-key-file); it goes in the header 'Authorization: Bearer <key>'.
# QRHEAD_MODEL: the retriever's name (default smollm2-135m, what `qrhead serve` runs).
set -euo pipefail
URL="${QRHEAD_URL:-http://127.0.0.1:8000}"
MODEL="${QRHEAD_MODEL:-smollm2-135m}"
AUTH=()
if [ -n "${QRHEAD_API_KEY:-}" ]; then
    AUTH=(-H "Authorization: Bearer $QRHEAD_API_KEY")
fi

# POST a JSON body and print the reply indented. On an HTTP error, --fail-with-body makes curl
# fail but still hands over the server's message (it says what to fix): print it and stop.
post() {
    echo "== POST $1"
    local reply
    reply=$(curl -sS --fail-with-body "${AUTH[@]}" -H 'content-type: application/json' \
        "$URL$1" -d "$2") || { echo "$reply"; return 1; }
    echo "$reply" | python3 -m json.tool
}

# Rerank (Cohere / vLLM format): results come best first, each with the index of the
# document in the request, its relevance_score and the document itself.
post /v1/rerank '{"model": "'"$MODEL"'", "query": "Which city is the capital of France?",
  "documents": ["Paris is the capital and largest city of France.",
                "Pasta is a staple food of Italian cuisine.",
                "The Eiffel Tower stands on the Champ de Mars in Paris."]}'

# Chat through vLLM's OpenAI API ("model" may be any name GET /v1/models lists).
post /v1/chat/completions '{"model": "'"$MODEL"'", "max_tokens": 32, "temperature": 0,
  "messages": [{"role": "user", "content": "What is the capital of France?"}]}'

# Retrieval-augmented answer: the context is split into passages at blank lines, the heads
# pick the best top_k, the generator answers from them; "passages" are the sources cited.
post /v1/answer '{"question": "When was the Eiffel Tower completed?", "top_k": 1,
  "max_tokens": 48,
  "context": "Pasta is a staple food of Italian cuisine.\n\nThe Eiffel Tower is a lattice tower on the Champ de Mars in Paris. It was completed in 1889 for the Exposition Universelle.\n\nThe Golden Gate Bridge spans the strait at the entrance to San Francisco Bay."}'
