"""The HTTP side: the route table (`routes`), one handler module per resource (`predict`,
`jobs`, `models`, `health`, `metrics`), request parsing and JSON answers (`io`), the
`answers` (the wrapper every handler is registered in: request ids, the API key, errors
as JSON, metrics), and the OpenAPI docs."""
