"""What the worker's jobs share within one worker process (built in arq's on_startup)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from shared.contract.model_client import ModelClient
from shared.settings import Settings


@dataclass
class Resources:
    """What jobs share within one worker process (built in arq's on_startup)."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: Any  # arq's ArqRedis (redis.asyncio)
    model: ModelClient
