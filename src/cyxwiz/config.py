"""Settings for every process (env prefix ``CYXWIZ_``). Imports nothing from cyxwiz."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from enum import StrEnum
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values people paste from examples; refused outright in production.
PLACEHOLDER_KEYS = frozenset(
    {"", "changeme", "change-me", "change_me", "placeholder", "secret", "dev", "test", "xxx"}
)
MASTER_KEY_FILE = "master.key"


class Env(StrEnum):
    dev = "dev"
    production = "production"


class BlobBackend(StrEnum):
    local = "local"
    s3 = "s3"


class ChainBackend(StrEnum):
    local = "local"
    rpc = "rpc"


class ConfigError(RuntimeError):
    """The configuration cannot be used as given (the message says how to fix it)."""


class Settings(BaseSettings):
    """Everything a process needs to know about its environment."""

    model_config = SettingsConfigDict(env_prefix="CYXWIZ_", env_file=None, extra="ignore")

    env: Env = Env.dev
    data_dir: Path = Path("./cyxwiz-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in the data dir (WAL)."
    )
    # Blob storage
    blob_backend: BlobBackend = BlobBackend.local
    blob_dir: Path | None = None  # default: <data_dir>/blobs
    s3_bucket: str | None = None
    s3_prefix: str = "blobs/"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    blob_chunk_size: int = 1024 * 1024

    # Keys: base64 of 32 random bytes. If not set, generated into <data_dir>/master.key (dev).
    master_key: SecretStr | None = None
    previous_master_keys: list[SecretStr] = Field(default_factory=list)

    # HTTP
    base_url: str = "http://127.0.0.1:8000"
    access_token_ttl_seconds: int = 60 * 60 * 24 * 7
    session_ttl_seconds: int = 60 * 60 * 24 * 30
    max_upload_bytes: int = 8 * 1024**3
    max_json_bytes: int = 1024 * 1024
    cookie_secure: bool = False
    trusted_proxy_count: int = Field(
        default=0,
        ge=0,
        le=10,
        description="proxies in front of the app whose X-Forwarded-For is believed (client IP "
        "for throttles); 0 = the socket peer is the client",
    )

    # Security (issue 9): model file scanning (docs/scanning.md)
    scan_refuse_dangerous: bool = Field(
        default=True,
        description="refuse to publish a version with a file whose scan is 'dangerous' (a "
        "pickle importing os.system, builtins.eval, subprocess...)",
    )
    scan_refuse_suspicious: bool = Field(
        default=False,
        description="also refuse files whose scan is 'suspicious' (imports the scanner does "
        "not know to be harmless, unparseable pickles, code); off: they publish with a badge",
    )
    scan_onnx_max_bytes: int = Field(
        default=2**31 - 1,
        ge=1,
        description="largest ONNX file accepted at publish (it is parsed in memory; a larger "
        "ONNX model needs external data, which is refused anyway)",
    )

    # Security (issue 9): accounts and web — sign-in / sign-up throttles (web/throttle.py)
    login_ip_max_failures: int = Field(
        default=20, ge=1, description="failed sign-ins per client IP (any account) per window"
    )
    login_ip_window_seconds: float = Field(default=300.0, gt=0)
    login_account_ip_max_failures: int = Field(
        default=5, ge=1, description="failed sign-ins per account from one client IP per window"
    )
    login_account_ip_window_seconds: float = Field(default=300.0, gt=0)
    login_account_max_failures: int = Field(
        default=20,
        ge=1,
        description="failed sign-ins per account from any IP per window (not applied to IPs "
        "that signed in to the account within login_known_ip_days)",
    )
    login_account_window_seconds: float = Field(default=900.0, gt=0)
    login_known_ip_days: float = Field(
        default=30.0,
        ge=0,
        description="after a successful sign-in, that IP skips the account-wide limit this long",
    )
    register_ip_max_accounts: int = Field(
        default=10, ge=1, description="accounts created per client IP per window (API and web)"
    )
    register_ip_window_seconds: float = Field(default=3600.0, gt=0)
    # Security (issue 9): accounts and web — HTTP headers (web/middleware.py)
    content_security_policy: str | None = Field(
        default=None,
        description="override the Content-Security-Policy sent on HTML pages (default: "
        "self only; see web/middleware.py)",
    )
    hsts_seconds: int = Field(
        default=31_536_000,
        ge=0,
        description="Strict-Transport-Security max-age sent in production (0 = not sent)",
    )

    # Security (issue 9): nodes — operator trust tier, routing, answer caps, SSRF (H1)
    inference_node_heartbeat_seconds: float = Field(
        default=5.0, gt=0, description="how often nodes are told to heartbeat (at registration)"
    )
    inference_node_max_inflight: int = Field(
        default=32,
        ge=1,
        description="requests one gateway replica sends to one node at once before it "
        "prefers other nodes (platform-set; a node's reported capacity is never used)",
    )
    inference_node_health_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how often each gateway checks every routable node's readiness itself "
        "(GET /v2/health/ready with the gateway secret); a failing node leaves routing until "
        "a check passes",
    )
    inference_node_health_timeout_seconds: float = Field(
        default=2.0, gt=0, description="time limit of one readiness check"
    )
    inference_node_max_response_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="largest answer body the gateway accepts from a node (default: twice "
        "inference_max_body_bytes); larger answers fail the call as the node's fault",
    )
    inference_node_allowed_networks: str = Field(
        default="",
        description="comma-separated CIDRs node URLs may resolve to in production besides "
        "public addresses (e.g. the private network your own nodes run in)",
    )

    # Money
    cyx_price_usdc: str = Field(default="0.25", description="USDC per 1 CYX for CYX payments")
    cyx_discount_bps: int = 1500
    refund_window_days: int = 7
    release_interval_seconds: float = 60.0
    faucet_max_amount: int = 10_000 * 10**6

    # Hosted inference: metering and demo credits
    demo_credits_per_model: int = Field(default=10, ge=0)
    compute_share_bps: int = Field(default=3000, ge=0, le=10_000)
    inference_platform_fee_bps: int = Field(default=2000, ge=0, le=10_000)
    reservation_requests: int = Field(
        default=100, ge=1, description="calls one balance reservation covers (a block)"
    )
    metering_flush_seconds: float = Field(default=1.0, gt=0)
    metering_batch_size: int = Field(default=1000, ge=1)
    metering_idle_release_seconds: float = Field(
        default=30.0, gt=0, description="an unused reservation is released after this long"
    )
    metering_reservation_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="the sweeper settles a reservation pending this long whose meter is gone",
    )
    metering_sweep_interval_seconds: float = Field(
        default=60.0, gt=0, description="how often the scheduler sweeps orphaned reservations"
    )
    # Security (issue 9): metering — batch rows, demo budgets (docs/metering.md)
    inference_max_batch_rows: int = Field(
        default=10_000,
        ge=1,
        description="most rows (batch size) one inference call may carry, unless the model's "
        "ONNX metadata `cyxwiz.max_batch_rows` says otherwise; above it: 413 batch_too_large",
    )
    demo_ip_daily_rows: int = Field(
        default=100,
        ge=0,
        description="free demo rows per client IP per UTC day, shared by every account from "
        "that IP (IPv6: per /64); 0 = no per-IP budget",
    )
    demo_model_daily_rows: int = Field(
        default=10_000,
        ge=0,
        description="free demo rows per model per UTC day, all demo callers together; "
        "0 = no per-model budget",
    )

    # Inference gateway (docs/gateway.md)
    redis_url: str | None = Field(
        default=None, description="Redis for rate-limit buckets shared by API replicas."
    )
    # Token buckets per API key (or user) and plan (docs/gateway.md): the paid plan's limit
    # keeps the historical names; demo = calls on free demo credits; owner = own models.
    inference_rate_per_second: float = Field(default=50.0, gt=0)  # paid: refill per second
    inference_burst: int = Field(default=100, ge=1)  # paid: bucket size
    inference_demo_rate_per_second: float = Field(default=2.0, gt=0)
    inference_demo_burst: int = Field(default=5, ge=1)
    inference_owner_rate_per_second: float = Field(default=50.0, gt=0)
    inference_owner_burst: int = Field(default=100, ge=1)
    inference_cache_seconds: float = 60.0  # results of deterministic models; 0 disables
    inference_cache_entries: int = 10_000
    inference_auth_cache_seconds: float = 5.0  # a revoked key still works up to this long
    inference_model_cache_seconds: float = 2.0  # owner/name -> latest published version
    inference_nodes_cache_seconds: float = 1.0  # the routing table
    inference_node_stale_seconds: float = 15.0  # no heartbeat for this long: out of routing
    inference_max_body_bytes: int = 16 * 1024 * 1024
    inference_node_timeout_seconds: float = 30.0
    inference_fast_path: bool = True  # serve infer routes below the framework (plain ASGI)
    eviction_interval_seconds: float = 5.0  # marks nodes with missed heartbeats offline
    # The local node `cyxwiz serve` starts (port 0 = serve port + 1)
    local_node: bool = True
    local_node_port: int = 0
    local_node_capacity: int = 0  # 0 = CPU count

    # Solana settlement (docs/chain.md)
    chain_backend: ChainBackend = ChainBackend.local
    chain_dir: Path | None = None  # local backend state; default: <data_dir>/chain
    chain_rpc_url: str | None = Field(default=None, description="JSON-RPC URL (rpc backend)")
    chain_usdc_mint: str | None = None  # rpc backend: the USDC mint address
    chain_cyx_mint: str | None = None  # rpc backend: the CYX mint address
    chain_treasury_keypair: Path | None = Field(
        default=None,
        description="rpc backend: the treasury keypair sealed with the master key "
        "(`cyxwiz chain import-treasury` writes it); default <chain dir>/treasury.json",
    )
    chain_commitment: str = Field(
        default="finalized",
        pattern="^(confirmed|finalized)$",
        description="deposits are credited (spendable) at this commitment",
    )
    chain_watch_interval_seconds: float = Field(default=2.0, gt=0)
    chain_blockhash_ttl_seconds: float = Field(default=60.0, gt=0)
    chain_serve_rpc: bool = True  # dev + local backend: serve the chain at /chain/rpc
    deposit_ttl_seconds: int = Field(default=3600, ge=60)
    deposit_max_amount: int = Field(default=1_000_000 * 10**6, ge=1)
    payout_instant_fee_bps: int = Field(default=100, ge=0, le=10_000)
    payout_weekly_minimum: int = Field(default=10 * 10**6, ge=0)
    cyx_payout_bonus_bps: int = Field(default=500, ge=0, le=10_000)
    # Security (issue 9): money — payout minimums (docs/chain.md, "Money out")
    payout_minimum_usdc: int = Field(
        default=1_000_000,
        ge=1,
        description="smallest payout debiting USDC, in minor units (1 USDC): every payout is "
        "an on-chain transaction the platform pays for, so dust is refused",
    )
    payout_minimum_cyx: int = Field(
        default=4_000_000,
        ge=1,
        description="smallest payout debiting CYX, in minor units (4 CYX, 1 USDC at the "
        "default price)",
    )
    siws_ttl_seconds: int = Field(default=600, ge=30)

    @field_validator("previous_master_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @property
    def node_max_response_bytes(self) -> int:
        """The cap on a node's answer body (``inference_node_max_response_bytes`` or twice
        ``inference_max_body_bytes``)."""
        if self.inference_node_max_response_bytes is not None:
            return self.inference_node_max_response_bytes
        return 2 * self.inference_max_body_bytes

    @property
    def is_production(self) -> bool:
        return self.env == Env.production

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cyxwiz.db').resolve()}"

    @property
    def resolved_chain_dir(self) -> Path:
        return self.chain_dir if self.chain_dir is not None else self.data_dir / "chain"

    @property
    def resolved_blob_dir(self) -> Path:
        return self.blob_dir if self.blob_dir is not None else self.data_dir / "blobs"

    @cached_property
    def master_keys(self) -> dict[str, bytes]:
        """Key id -> key; the first entry is the active wrapping key."""
        active = self._load_or_create_master_key()
        keys = {key_id(active): active}
        for old in self.previous_master_keys:
            raw = _decode_key(old.get_secret_value(), "CYXWIZ_PREVIOUS_MASTER_KEYS")
            keys.setdefault(key_id(raw), raw)
        return keys

    def _load_or_create_master_key(self) -> bytes:
        if self.master_key is not None:
            value = self.master_key.get_secret_value().strip()
            if self.is_production and value.lower() in PLACEHOLDER_KEYS:
                raise ConfigError(
                    "CYXWIZ_MASTER_KEY is a placeholder; in production set it to "
                    "base64 of 32 random bytes (python -c 'import secrets,base64;"
                    "print(base64.b64encode(secrets.token_bytes(32)).decode())')"
                )
            raw = _decode_key(value, "CYXWIZ_MASTER_KEY")
            if self.is_production and len(set(raw)) < 8:
                raise ConfigError("CYXWIZ_MASTER_KEY is not random enough for production")
            return raw
        path = self.data_dir / MASTER_KEY_FILE
        if path.exists():
            return _decode_key(path.read_text().strip(), str(path))
        if self.is_production:
            raise ConfigError(
                "no master key: in production CYXWIZ_MASTER_KEY must be set explicitly "
                "(a generated key on an ephemeral disk would make every stored model unreadable)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        raw = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(raw).decode() + "\n")
        return raw


def key_id(key: bytes) -> str:
    """A short stable id for a master key (never reveals the key)."""
    return hashlib.sha256(b"cyxwiz-key-id:" + key).hexdigest()[:8]


def _decode_key(value: str, where: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid base64") from exc
    if len(raw) != 32:
        raise ConfigError(f"{where}: must decode to exactly 32 bytes, got {len(raw)}")
    return raw


def get_settings() -> Settings:
    """Settings read from the environment."""
    return Settings()
