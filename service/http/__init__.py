"""The HTTP side: the route table (`routes`), one handler module per resource (`predict`,
`jobs`, `models`, `health`, `metrics`), request parsing and JSON answers (`io`), the
middlewares that map errors and check the API key, and the OpenAPI docs."""
