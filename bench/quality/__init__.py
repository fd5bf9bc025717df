"""Re-ranking quality: QRHead head sets vs ICR, random heads, BM25 and a dense embedder."""
