"""Any OpenAI-compatible server by URL: standard library only, so nothing to install."""

from __future__ import annotations

from engines.base import EngineInfo

ENGINES = (
    EngineInfo(
        "openai",
        "engines.adapters.openai.engine:OpenAIEngine",
        "any OpenAI-compatible server by URL (--model http://HOST:PORT/v1): TTFT, TPOT, ITL, E2E",
        (),
        "",
        serves_url=True,
        takes_load=True,
    ),
)
