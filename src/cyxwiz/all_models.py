"""Imports every domain's ORM models so ``Base.metadata`` is complete (migrations, tests)."""

from cyxwiz.accounts import models as accounts_models
from cyxwiz.catalog import models as catalog_models
from cyxwiz.db import Base

__all__ = ["Base", "accounts_models", "catalog_models"]
