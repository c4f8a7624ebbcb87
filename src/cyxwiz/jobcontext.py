"""What a background job may use: the small context every domain's ``scheduled.py`` takes.

A leaf (config, db, clock and the chain protocol only), so domains can name it without
importing the job registry (``cyxwiz.jobs``) or the web layer. The web app's ``AppContext``
satisfies it; so does any object with these four read-only attributes (tests pass their own).
"""

from __future__ import annotations

from typing import Protocol

from cyxwiz.chain.interfaces import Chain
from cyxwiz.clock import Clock
from cyxwiz.config import Settings
from cyxwiz.db import Database


class JobContext(Protocol):
    """Settings, database, clock and the settlement chain (opened on first use), per process."""

    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def chain(self) -> Chain: ...
