"""The simple path, no graph: start a local model server, ask a question, fill a pydantic model.

    python examples/ask.py [MODEL]      # MODEL: smoke (default), small, large

Needs `pip install -e '.[local,smoke-model]'` (or '.[cpu]').
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
        print(f"answer: {answer.text.strip()!r} ({answer.usage.total_tokens} tokens, {answer.latency_s:.2f}s)")
        city = await client.parse("Name a large city and its country.", City, max_tokens=40)
        print(f"structured: {city!r}")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "smoke"))
