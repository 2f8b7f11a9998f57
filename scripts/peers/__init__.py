"""Peer servers for scripts/bench_peers: the sentence-embedding example behind other
frameworks, each written from its own documentation. Benchmark-only: they run in
.venv-peers, never in the service's environment."""
