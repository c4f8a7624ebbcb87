"""Imports every domain's ORM models so ``Base.metadata`` is complete (migrations, tests)."""

from cyxwiz.accounts import models as accounts_models
from cyxwiz.billing import models as billing_models
from cyxwiz.catalog import models as catalog_models
from cyxwiz.db import Base
from cyxwiz.inference import models as inference_models
from cyxwiz.inference import usage_models as inference_usage_models
from cyxwiz.ledger import models as ledger_models
from cyxwiz.licensing import models as licensing_models
from cyxwiz.provenance import models as provenance_models

__all__ = [
    "Base",
    "accounts_models",
    "billing_models",
    "catalog_models",
    "inference_models",
    "inference_usage_models",
    "ledger_models",
    "licensing_models",
    "provenance_models",
]
