"""The embedding example behind FastAPI and uvicorn, as the first version of this API was
built: a plain (sync) route, so each request is one model call in Starlette's thread
pool; no batching, no queue.

    .venv-peers/bin/python scripts/peers/fastapi_app.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from examples.embedding_model import Embedder

model = Embedder()
model.setup()
app = FastAPI()


class PredictRequest(BaseModel):
    input: str


@app.post("/predict")
def predict(body: PredictRequest) -> dict[str, Any]:
    return {"input": body.input, "result": model.predict(body.input)}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
