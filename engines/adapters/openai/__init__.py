"""Any OpenAI-compatible server by URL: standard library only, so nothing to install."""

from __future__ import annotations

from engines.base import Availability, EngineInfo


def _rules(run, device: str) -> Availability:
    from engines.adapters.openai.engine import parse_options  # standard library only

    return Availability.unless_refused(lambda: parse_options(dict(run.options)))  # before anything starts


ENGINES = (
    EngineInfo(
        "openai",
        "engines.adapters.openai.engine:OpenAIEngine",
        "any OpenAI-compatible server by URL (--model http://HOST:PORT/v1): TTFT, TPOT, ITL, E2E",
        (),
        "",
        rules=_rules,
        serves_url=True,
        takes_load=True,
    ),
)
