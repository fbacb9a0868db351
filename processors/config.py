"""The one configuration object: environment variables (SPEC §10) with documented defaults.

A `.env` file in the working directory may supply variables; real environment variables win.
Names in SPEC §10 are a contract with deployments: add new ones, never rename.

Each field below is declared once (attribute, type, env var, default); pydantic-settings validates
the environment against those declarations, so a bad value stops start-up with one line
(`ConfigError`) that names the variable and the form it expects, instead of a traceback later.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Mapping, Sequence, get_type_hints

from pydantic import BeforeValidator, Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator, create_model
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from processors.domain.model import Crm
from processors.domain.release import MAX_AHEAD_MS, RetryTier, tier_for

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
# `CRM_SYNC_KAFKA_<KEY>` passes librdkafka's `key` (lower case, `_` read as `.`) to every Kafka
# client; `processors.kafka.clients` validates and applies them.
KAFKA_PASSTHROUGH_PREFIX = "CRM_SYNC_KAFKA_"
# Variables under that prefix that are not librdkafka keys (the container build's Kafka jars).
_NOT_PASSTHROUGH = frozenset({"CRM_SYNC_KAFKA_LIBS"})
CONSOLE_ROLES = ("admin", "viewer")  # admin may change, viewer may only look


class ConfigError(ValueError):
    """A bad environment; `str()` is one line, `VAR: expected …` per bad variable, joined by `; `."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


def _form(text: str) -> WrapValidator:
    """Replaces pydantic's wording by what the operator should write, e.g. `a port number (1..65535)`."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValueError:  # pydantic's ValidationError, or a ValueError from an inner validator
            raise PydanticCustomError("config_form", text) from None

    return WrapValidator(check)


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _flag(value: Any) -> bool:
    """Only the spellings we document: pydantic alone would also take `on`, `t`, `y`."""
    key = str(value).strip().lower()
    if key not in _BOOLS:
        raise ValueError(value)
    return _BOOLS[key]


def _choice(*options: str) -> tuple[BeforeValidator, WrapValidator]:
    """Case-insensitive, stored in the upper case the Kafka clients and the log config expect."""

    def check(value: Any) -> str:
        if not isinstance(value, str) or value.upper() not in options:
            raise ValueError(value)
        return value.upper()

    return BeforeValidator(check), _form("one of " + ", ".join(options))


_PROTOCOL, _MECHANISM = _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"), _choice(*_SASL_MECHANISMS)
_LEVEL = _choice("DEBUG", "INFO", "WARNING", "ERROR")
# Field types: the constraint and its wording travel together; attributes keep their plain types.
_Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False), _form("a number of seconds (>= 0)")]
_Hours = Annotated[float, Field(gt=0, allow_inf_nan=False), _form("a number of hours (> 0)")]
_PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False), _form("a number of seconds (> 0)")]
_Rate = Annotated[float, Field(gt=0, allow_inf_nan=False), _form("a number of calls per second (> 0)")]
_Count = Annotated[int, Field(ge=1), _form("a whole number (>= 1)")]
_Processes = Annotated[int, Field(ge=0, le=64), _form("a number of processes (0..64)")]
_Port = Annotated[int, Field(ge=1, le=65535), _form("a port number (1..65535)")]
_Ratio = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False), _form("a share between 0 and 1 (e.g. 0.95)")]
_Flag = Annotated[bool, BeforeValidator(_flag), _form("a boolean (true/false, 1/0, yes/no)")]
_SecurityProtocol = Annotated[str, _PROTOCOL[0], _PROTOCOL[1]]
_SaslMechanism = Annotated[str, _MECHANISM[0], _MECHANISM[1]]
_LogLevel = Annotated[str, _LEVEL[0], _LEVEL[1]]


def _env(var: str, default: Any, *, repr: bool = True) -> Any:
    """A field read from `var`; the dataclass default is the variable's documented default."""
    return field(default=default, repr=repr, metadata={"env": var})


@dataclass(frozen=True)
class Topics:
    """Topic names; inputs and settings are the upstream contract, the rest are internal.

    This class body is the single table of topics: field, variable, default.
    """

    meetings: str = _env("CRM_SYNC_TOPIC_MEETINGS", "scheduling.meetings.v1")
    research: str = _env("CRM_SYNC_TOPIC_RESEARCH", "scheduling.research.v1")
    surveys: str = _env("CRM_SYNC_TOPIC_SURVEYS", "scheduling.surveys.v1")
    settings: str = _env("CRM_SYNC_TOPIC_SETTINGS", "crm-sync.settings.v1")
    dead_letter: str = _env("CRM_SYNC_TOPIC_DEAD_LETTER", "crm-sync.dead-letter.v1")
    # Compacted: the latest state of every dead letter by id, so `dlq show ID` reads one partition.
    dead_letter_index: str = _env("CRM_SYNC_TOPIC_DEAD_LETTER_INDEX", "crm-sync.dead-letter-index.v1")
    delay: str = _env("CRM_SYNC_TOPIC_DELAY", "crm-sync.actions.delay.v1")
    due_salesforce: str = _env("CRM_SYNC_TOPIC_DUE_SALESFORCE", "crm-sync.actions.salesforce.v1")
    due_hubspot: str = _env("CRM_SYNC_TOPIC_DUE_HUBSPOT", "crm-sync.actions.hubspot.v1")
    history: str = _env("CRM_SYNC_TOPIC_HISTORY", "crm-sync.history.v1")
    # Tiered by wait length (`Config.retry_tiers`): the first tier holds short waits (and its name is
    # the original single retry topic's), so a wait far ahead never stalls one due sooner.
    retry: str = _env("CRM_SYNC_TOPIC_RETRY", "crm-sync.actions.retry.v1")
    retry_medium: str = _env("CRM_SYNC_TOPIC_RETRY_MEDIUM", "crm-sync.actions.retry-medium.v1")
    retry_long: str = _env("CRM_SYNC_TOPIC_RETRY_LONG", "crm-sync.actions.retry-long.v1")
    ledger_salesforce: str = _env("CRM_SYNC_TOPIC_LEDGER_SALESFORCE", "crm-sync.ledger.salesforce.v1")
    ledger_hubspot: str = _env("CRM_SYNC_TOPIC_LEDGER_HUBSPOT", "crm-sync.ledger.hubspot.v1")
    audit: str = _env("CRM_SYNC_TOPIC_AUDIT", "crm-sync.settings-audit.v1")

    @property
    def inputs(self) -> tuple[str, str, str]:
        return (self.meetings, self.research, self.surveys)

    def due(self, crm: Crm) -> str:
        return self.due_salesforce if crm is Crm.SALESFORCE else self.due_hubspot

    def ledger(self, crm: Crm) -> str:
        return self.ledger_salesforce if crm is Crm.SALESFORCE else self.ledger_hubspot


TOPIC_ENV: dict[str, str] = {f.name: f.metadata["env"] for f in fields(Topics)}


@dataclass(frozen=True)
class Config:
    """Immutable; `Config()` is every default, `Config.from_env()` the validated environment."""

    bootstrap_servers: str = _env("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP)
    security_protocol: _SecurityProtocol = _env("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    sasl_mechanism: _SaslMechanism | None = _env("KAFKA_SASL_MECHANISM", None)
    sasl_username: str | None = _env("KAFKA_SASL_USERNAME", None)
    sasl_password: str | None = _env("KAFKA_SASL_PASSWORD", None, repr=False)
    ssl_ca_location: str | None = _env("KAFKA_SSL_CA_LOCATION", None)
    schema_registry_url: str | None = _env("SCHEMA_REGISTRY_URL", None)
    # Confluent's `basic.auth.user.info` (`user:password`) and `ssl.ca.location` for the registry client.
    schema_registry_basic_auth_user_info: str | None = _env("SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO", None, repr=False)
    schema_registry_ssl_ca_location: str | None = _env("SCHEMA_REGISTRY_SSL_CA_LOCATION", None)
    delay_seconds: _Seconds = _env("CRM_SYNC_DELAY_SECONDS", 600.0)
    topics: Topics = field(default_factory=Topics)  # each topic has its own variable (TOPIC_ENV)
    topic_partitions: _Count = _env("CRM_SYNC_TOPIC_PARTITIONS", 6)
    replication_factor: _Count = _env("CRM_SYNC_REPLICATION_FACTOR", 1)
    # Off for platforms that forbid app-created topics: the worker then only checks that its topics
    # exist (made from `crm-sync topics print`) and stops with the list of those missing.
    create_topics: bool = _env("CRM_SYNC_CREATE_TOPICS", True)
    secrets_dir: Path = _env("CRM_SYNC_SECRETS_DIR", Path("./secrets"))
    metrics_port: _Port = _env("CRM_SYNC_METRICS_PORT", 9464)
    # The worker's HTTP server listens here; company data on it needs the token off loopback.
    http_bind: str = _env("CRM_SYNC_HTTP_BIND", "127.0.0.1")
    http_token: str | None = _env("CRM_SYNC_HTTP_TOKEN", None, repr=False)
    ca_bundle: str | None = _env("CRM_SYNC_CA_BUNDLE", None)
    # More hosts CRM credentials may be sent to (https; `http://host` also allows plain http to it).
    crm_allowed_hosts: str | None = _env("CRM_SYNC_CRM_ALLOWED_HOSTS", None)
    # Writable, shared by every replica: rotated CRM tokens (default `<CRM_SYNC_STATE_DIR>/tokens`).
    token_dir: Path | None = _env("CRM_SYNC_TOKEN_DIR", None)
    app_id: str = _env("CRM_SYNC_APP_ID", "crm-sync")
    state_dir: Path = _env("CRM_SYNC_STATE_DIR", Path("./.run/state"))
    log_level: _LogLevel = _env("CRM_SYNC_LOG_LEVEL", "INFO")
    delay_lookahead_seconds: _Seconds = _env("CRM_SYNC_DELAY_LOOKAHEAD_SECONDS", 60.0)
    paused_repark_seconds: _Seconds = _env("CRM_SYNC_PAUSED_REPARK_SECONDS", 3600.0)
    # Retry tiers: waits up to the first bound go to the retry topic, up to the second to its medium
    # tier, longer ones (up to 7 days) to its long tier. Retention must outlast the longest wait.
    retry_short_max_seconds: _Seconds = _env("CRM_SYNC_RETRY_SHORT_MAX_SECONDS", 60.0)
    retry_medium_max_seconds: _Seconds = _env("CRM_SYNC_RETRY_MEDIUM_MAX_SECONDS", 3600.0)
    retry_retention_hours: _Hours = _env("CRM_SYNC_RETRY_RETENTION_HOURS", 192.0)
    sink_give_up_seconds: _Seconds = _env("CRM_SYNC_SINK_RETRY_SECONDS", 86_400.0)
    sink_inline_retry_seconds: _Seconds = _env("CRM_SYNC_SINK_INLINE_RETRY_SECONDS", 10.0)
    sink_batch_size: _Count = _env("CRM_SYNC_SINK_BATCH_SIZE", 200)
    ledger_keep_hours: _Hours = _env("CRM_SYNC_LEDGER_KEEP_HOURS", 168.0)
    group_instance_id: str | None = _env("CRM_SYNC_GROUP_INSTANCE_ID", None)
    # (variable, librdkafka key, value) of each `CRM_SYNC_KAFKA_<KEY>`; values may be secrets.
    kafka_options: tuple[tuple[str, str, str], ...] = field(default=(), repr=False)
    ingest_batch_size: _Count = _env("CRM_SYNC_INGEST_BATCH_SIZE", 1000)
    # Ingest's decode → plan → encode in this many processes of its own; 0: in the worker's process.
    ingest_processes: _Processes = _env("CRM_SYNC_INGEST_PROCESSES", 0)
    sink_batch_window_seconds: _Seconds = _env("CRM_SYNC_SINK_BATCH_WINDOW_SECONDS", 0.2)
    # The most CRM threads one (CRM, company) may hold (each has its own; one call runs at a time).
    sink_concurrency: _Count = _env("CRM_SYNC_SINK_CONCURRENCY", 16)
    salesforce_rate_per_second: _Rate = _env("CRM_SYNC_SALESFORCE_RATE", 20.0)
    hubspot_rate_per_second: _Rate = _env("CRM_SYNC_HUBSPOT_RATE", 9.0)
    salesforce_action_id_field: str | None = _env("CRM_SYNC_SALESFORCE_ACTION_ID_FIELD", None)
    hubspot_action_id_property: str | None = _env("CRM_SYNC_HUBSPOT_ACTION_ID_PROPERTY", None)
    # The shared `_default/` credentials directory is used only when true (demo and sandbox).
    allow_default_credentials: _Flag = _env("CRM_SYNC_ALLOW_DEFAULT_CREDENTIALS", False)
    # A brand-new consumer group starts from now minus this, not from the topic's beginning.
    new_group_lookback_seconds: _Seconds = _env("CRM_SYNC_NEW_GROUP_LOOKBACK_SECONDS", 600.0)
    # After a change of CRM_SYNC_APP_ID: the old one. Each stage's brand-new group then starts
    # where the old app id's group of that stage left off (its commits), not at the lookback.
    previous_app_id: str | None = _env("CRM_SYNC_PREVIOUS_APP_ID", None)
    settings_ready_timeout_seconds: _Seconds = _env("CRM_SYNC_SETTINGS_READY_TIMEOUT_SECONDS", 30.0)
    # A sink's ledger read (on every assignment) that has not reached the end by then fails and is
    # tried again; meanwhile nothing is delivered from those partitions and the worker is not ready.
    ledger_read_timeout_seconds: _Seconds = _env("CRM_SYNC_LEDGER_READ_TIMEOUT_SECONDS", 120.0)
    # A CRM's Retry-After longer than this is capped.
    retry_after_cap_seconds: _Seconds = _env("CRM_SYNC_RETRY_AFTER_CAP_SECONDS", 900.0)
    # How long one company's deliveries may hold a sink batch before the rest of its group is deferred.
    sink_company_budget_seconds: _Seconds = _env("CRM_SYNC_SINK_COMPANY_BUDGET_SECONDS", 5.0)
    # A company that used this share of its CRM's daily API quota has its actions deferred, not failed.
    quota_defer_ratio: _Ratio = _env("CRM_SYNC_QUOTA_DEFER_RATIO", 0.95)
    # While deferred for quota, one batch tries again after this long (reading the quota anew).
    quota_defer_seconds: _Seconds = _env("CRM_SYNC_QUOTA_DEFER_SECONDS", 900.0)
    # The admin console (`crm-sync console`): who may log in, where it listens, what signs its sessions.
    console_users_file: Path | None = _env("CRM_SYNC_CONSOLE_USERS_FILE", None)
    console_bind: str = _env("CRM_SYNC_CONSOLE_BIND", "127.0.0.1")
    console_port: _Port = _env("CRM_SYNC_CONSOLE_PORT", 8470)
    console_secret: str | None = _env("CRM_SYNC_CONSOLE_SECRET", None, repr=False)
    # A session ends after this long without a request (and after 8 hours in any case).
    console_idle_seconds: _PositiveSeconds = _env("CRM_SYNC_CONSOLE_IDLE_SECONDS", 1800.0)
    # The console's own TLS (PEM files); with them it serves HTTPS only and its cookies are Secure.
    console_tls_cert: Path | None = _env("CRM_SYNC_CONSOLE_TLS_CERT", None)
    console_tls_key: Path | None = _env("CRM_SYNC_CONSOLE_TLS_KEY", None)
    # A TLS-terminating proxy (on loopback, e.g. a sidecar) serves the console: its cookies are Secure.
    console_behind_tls: _Flag = _env("CRM_SYNC_CONSOLE_BEHIND_TLS", False)
    # Single sign-on: oauth2-proxy authenticates and names the user in X-Forwarded-* headers,
    # believed only from these addresses; the role comes from the groups (`group=role,…`).
    console_trusted_headers: _Flag = _env("CRM_SYNC_CONSOLE_TRUSTED_HEADERS", False)
    console_trusted_proxies: str = _env("CRM_SYNC_CONSOLE_TRUSTED_PROXIES", "127.0.0.1,::1")
    console_group_roles: str = _env("CRM_SYNC_CONSOLE_GROUP_ROLES", "")
    # Failed logins allowed per user name and per client address within the window.
    console_login_user_attempts: _Count = _env("CRM_SYNC_CONSOLE_LOGIN_USER_ATTEMPTS", 5)
    console_login_address_attempts: _Count = _env("CRM_SYNC_CONSOLE_LOGIN_ADDRESS_ATTEMPTS", 20)
    console_login_window_seconds: _PositiveSeconds = _env("CRM_SYNC_CONSOLE_LOGIN_WINDOW_SECONDS", 900.0)

    @property
    def tokens_dir(self) -> Path:
        """Where rotated CRM tokens are kept: `CRM_SYNC_TOKEN_DIR`, else beside the worker's state."""
        return self.token_dir or self.state_dir / "tokens"

    @property
    def http_loopback(self) -> bool:
        """Only this machine can reach the HTTP server (then company data needs no token)."""
        return _loopback(self.http_bind)

    @property
    def console_tls(self) -> bool:
        """The console serves HTTPS itself."""
        return self.console_tls_cert is not None and self.console_tls_key is not None

    @property
    def console_secure_cookies(self) -> bool:
        """The browser reaches the console over TLS (its own, or a proxy's)."""
        return self.console_tls or self.console_behind_tls

    def retry_tiers(self) -> tuple[RetryTier, ...]:
        """The retry topics, shortest waits first; each holds waits up to its `max_wait_ms`."""
        t = self.topics
        return (
            RetryTier(t.retry, "retry", int(self.retry_short_max_seconds * 1000)),
            RetryTier(t.retry_medium, "retry-medium", int(self.retry_medium_max_seconds * 1000)),
            RetryTier(t.retry_long, "retry-long", MAX_AHEAD_MS),
        )

    def retry_topic(self, wait_ms: int) -> str:
        """Where an action that is due in `wait_ms` waits (0 or less: the first tier)."""
        return tier_for(wait_ms, self.retry_tiers()).topic

    def retry_problems(self) -> list[str]:
        """Tiers must grow, and their retention outlast the longest wait plus a pause's repark time."""
        problems = []
        if not 0 < self.retry_short_max_seconds < self.retry_medium_max_seconds < MAX_AHEAD_MS / 1000:
            problems.append(
                "CRM_SYNC_RETRY_SHORT_MAX_SECONDS, CRM_SYNC_RETRY_MEDIUM_MAX_SECONDS: expected 0 < short < medium < 604800 "
                f"(7 days), got {self.retry_short_max_seconds:g} and {self.retry_medium_max_seconds:g}"
            )
        need = (MAX_AHEAD_MS / 1000 + self.paused_repark_seconds) / 3600
        if self.retry_retention_hours <= need:
            problems.append(
                f"CRM_SYNC_RETRY_RETENTION_HOURS: expected more than {need:g} hours (the longest wait, 7 days, plus "
                f"CRM_SYNC_PAUSED_REPARK_SECONDS), got {self.retry_retention_hours:g}"
            )
        return problems

    def http_problems(self) -> list[str]:
        """Why the worker must not serve HTTP this way: company data open to the network."""
        if self.http_loopback or self.http_token:
            return []
        return [f"CRM_SYNC_HTTP_TOKEN: expected a token (CRM_SYNC_HTTP_BIND is {self.http_bind}, not loopback), got nothing"]

    @property
    def console_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """CRM_SYNC_CONSOLE_TRUSTED_PROXIES as networks (ValueError when one is not an address or CIDR)."""
        return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in self.console_trusted_proxies.split(",") if part.strip())

    @property
    def console_group_role_map(self) -> dict[str, str]:
        """CRM_SYNC_CONSOLE_GROUP_ROLES as group -> role (ValueError on a part that is not `group=role`)."""
        mapping: dict[str, str] = {}
        for part in self.console_group_roles.split(","):
            if part.strip():
                group, sep, role = part.rpartition("=")
                if not sep or not group.strip() or role.strip() not in CONSOLE_ROLES:
                    raise ValueError(part)
                mapping[group.strip()] = role.strip()
        return mapping

    def console_problems(self) -> list[str]:
        """Why the console must not serve this way: passwords or sessions in clear on the network,
        half a TLS or single sign-on setup. Checked at start, like http_problems for the worker."""
        problems = []
        if (self.console_tls_cert is None) != (self.console_tls_key is None):
            missing = "CRM_SYNC_CONSOLE_TLS_KEY" if self.console_tls_key is None else "CRM_SYNC_CONSOLE_TLS_CERT"
            problems.append(f"{missing}: expected a PEM file (the other of CRM_SYNC_CONSOLE_TLS_CERT/_KEY is set), got nothing")
        for var, path in (("CRM_SYNC_CONSOLE_TLS_CERT", self.console_tls_cert), ("CRM_SYNC_CONSOLE_TLS_KEY", self.console_tls_key)):
            if path is not None and not path.is_file():
                problems.append(f"{var}: expected a readable PEM file, got {str(path)!r}")
        if not (_loopback(self.console_bind) or self.console_tls or self.console_trusted_headers):
            problems.append(
                f"CRM_SYNC_CONSOLE_TLS_CERT: expected a certificate or CRM_SYNC_CONSOLE_TRUSTED_HEADERS=true "
                f"(CRM_SYNC_CONSOLE_BIND is {self.console_bind}, not loopback: passwords and sessions would cross the network in clear), got nothing"
            )
        try:
            if self.console_trusted_headers and not self.console_proxy_networks:
                raise ValueError(self.console_trusted_proxies)
        except ValueError:
            problems.append(f"CRM_SYNC_CONSOLE_TRUSTED_PROXIES: expected addresses or CIDRs, comma-separated, got {self.console_trusted_proxies!r}")
        if self.console_trusted_headers:
            try:
                if not self.console_group_role_map:
                    raise ValueError(self.console_group_roles)
            except ValueError:
                problems.append(f"CRM_SYNC_CONSOLE_GROUP_ROLES: expected group=admin|viewer, comma-separated, got {self.console_group_roles!r}")
        if self.console_secret is not None and (len(self.console_secret) < 32 or len(set(self.console_secret)) < 8):
            problems.append("CRM_SYNC_CONSOLE_SECRET: expected at least 32 random characters (e.g. `openssl rand -hex 32`), got a weaker one")
        if not self.console_trusted_headers and self.console_users_file is None:
            problems.append("CRM_SYNC_CONSOLE_USERS_FILE: expected a users file (see docs/console.md), got nothing")
        return problems

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """`env`, or (None) os.environ after loading `.env` without overriding; empty means unset.

        Raises ConfigError naming every bad variable at once.
        """
        if env is None:
            _load_dotenv()
            env = os.environ
        values: dict[str, Any] = {var: env[var] for var in _VARS if env.get(var, "") != ""}
        try:
            settings = _Settings(**values)
        except ValidationError as exc:
            raise ConfigError([_describe(error) for error in exc.errors()] + _sasl_problems(values)) from None
        if problems := _sasl_problems(values):
            raise ConfigError(problems)
        topics = Topics(**{name: getattr(settings, var) for name, var in TOPIC_ENV.items()})
        return cls(
            topics=topics, kafka_options=kafka_passthrough(env), **{name: getattr(settings, var) for name, var in _CONFIG_ENV.items()}
        )


def kafka_passthrough(env: Mapping[str, str]) -> tuple[tuple[str, str, str], ...]:
    """Every set `CRM_SYNC_KAFKA_<KEY>` as (variable, librdkafka key, value), sorted by variable."""
    return tuple(
        sorted(
            (var, var[len(KAFKA_PASSTHROUGH_PREFIX):].lower().replace("_", "."), value)
            for var, value in env.items()
            if var.startswith(KAFKA_PASSTHROUGH_PREFIX) and var not in _NOT_PASSTHROUGH and value != ""
        )
    )


def _loopback(bind: str) -> bool:
    """Only this machine can reach a server bound here."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def _load_dotenv() -> None:
    """Into os.environ, as before, so anything else reading the environment sees the same values."""
    path = Path(".env")
    if path.is_file():
        from dotenv import load_dotenv

        load_dotenv(path, override=False)


_CONFIG_ENV: dict[str, str] = {f.name: f.metadata["env"] for f in fields(Config) if "env" in f.metadata}
_HIDDEN: frozenset[str] = frozenset(f.metadata["env"] for f in fields(Config) if not f.repr and "env" in f.metadata)


def _settings_model() -> type[BaseSettings]:
    """One pydantic-settings field per variable, named by it, typed and defaulted by the dataclasses."""
    definitions: dict[str, Any] = {}
    for cls in (Config, Topics):
        hints = get_type_hints(cls, include_extras=True)
        for f in fields(cls):
            if "env" in f.metadata:
                definitions[f.metadata["env"]] = (hints[f.name], f.default)

    class Base(BaseSettings):
        model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore")

        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            # from_env hands over the one mapping to read, so a test's mapping and the real
            # environment (+ .env) go through the same validation and nothing else leaks in.
            return (init_settings,)

    return create_model("_Settings", __base__=Base, **definitions)


_Settings = _settings_model()
_VARS: tuple[str, ...] = tuple(_Settings.model_fields)


def _describe(error: Any) -> str:
    """`VAR: expected <form>, got '<value>'` (secrets are never echoed)."""
    var = str(error["loc"][0])
    got = "(hidden)" if var in _HIDDEN else repr(error["input"])
    return f"{var}: expected {error['msg']}, got {got}"


def _sasl_problems(values: Mapping[str, str]) -> list[str]:
    """SASL protocols cannot connect without a mechanism, a user name and a password."""
    protocol = values.get("KAFKA_SECURITY_PROTOCOL", "").upper()
    if protocol not in ("SASL_PLAINTEXT", "SASL_SSL"):
        return []
    needed = {"KAFKA_SASL_MECHANISM": "one of " + ", ".join(_SASL_MECHANISMS)}
    if values.get("KAFKA_SASL_MECHANISM", "").upper() != "OAUTHBEARER":  # a token, from CRM_SYNC_KAFKA_SASL_OAUTHBEARER_*
        needed.update({"KAFKA_SASL_USERNAME": "a user name", "KAFKA_SASL_PASSWORD": "a password"})
    return [
        f"{var}: expected {form} (KAFKA_SECURITY_PROTOCOL is {protocol}), got nothing"
        for var, form in needed.items()
        if var not in values
    ]
