"""One frozen settings object for every service, read once from `COMFYMESH_*` environment variables.

Fields of one concern live in their own module (`fast_path`, `batching`, `diffusion`, `testing`) and
`Settings` joins them, so each variable keeps its flat `COMFYMESH_<FIELD>` name.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from comfymesh.config.batching import BatchingSettings
from comfymesh.config.diffusion import DiffusionSettings
from comfymesh.config.discovery import DiscoverySettings, check_replica_addresses
from comfymesh.config.fast_path import FastPathSettings
from comfymesh.config.files import FilesSettings, files_folder
from comfymesh.config.model_pull import ModelPullSettings
from comfymesh.config.models import ModelsSettings
from comfymesh.config.operations import OperationsSettings
from comfymesh.config.policies import RetryPolicy, TimeoutPolicy
from comfymesh.config.telemetry import TelemetrySettings
from comfymesh.config.testing import FaultSwitches
from comfymesh.config.workflows import WorkflowSettings

# shorter tokens and secrets are refused at start-up: they fall to guessing
MIN_SECRET_LENGTH = 16
MAKE_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Settings(FastPathSettings, BatchingSettings, DiffusionSettings, FaultSwitches, WorkflowSettings, ModelPullSettings,
               OperationsSettings, FilesSettings, ModelsSettings, DiscoverySettings, TelemetrySettings,
               BaseSettings):
    """Zero-configuration defaults that run the whole mesh on one machine."""

    model_config = SettingsConfigDict(env_prefix="COMFYMESH_", frozen=True, extra="ignore")

    home: Path = Field(Path("./data"), description="data root shared by all local services")
    host: str = Field("127.0.0.1", description="interface the gateway binds")
    port: int = Field(8080, ge=1, le=65535, description="gateway HTTP port")
    allowed_hosts: str = Field("", description="comma-separated Host names the gateway also answers to, beside "
                                               "IP addresses, localhost and `host` (a reverse proxy's; `*`: any)")
    allowed_origins: str = Field("", pattern=r"^(\s*https?://[^/?#\s,]+\s*(,|$))*$",
                                 description="comma-separated origins (scheme://host[:port]) of other sites "
                                             "whose pages may call the gateway (a reverse proxy's)")
    orchestrator: str = Field("127.0.0.1:50051", description="orchestrator gRPC address")
    imaging_replicas: str = Field("127.0.0.1:50061", description="comma-separated imaging stage addresses")
    diffusion_replicas: str = Field("127.0.0.1:50071", description="comma-separated diffusion stage addresses")
    diffusion_devices: str = Field("", pattern=r"^(\s*(cpu|cuda(:\d+)?)\s*(,|$))*$",
                                   description="`comfymesh up`: one diffusion replica per listed device, e.g. "
                                               "cuda:0,cuda:1 or cpu,cpu (empty: COMFYMESH_DEVICE, else every "
                                               "visible CUDA device, else one cpu)")
    artifacts_url: str = Field("", description="fsspec URL of the artifact store; default <home>/artifacts")
    database: str = Field("", description="the job store: a SQLite file (default <home>/comfymesh.db) or a "
                                          "postgresql://user:password@host:port/db URL shared by several orchestrators")
    lease_ttl_s: float = Field(15.0, gt=0, le=3600, description="PostgreSQL store: how long an orchestrator's claim on "
                                                                "a job lasts unrenewed (renewed every third of it)")
    extra_model_paths: str = Field("", description="more model folders, in ComfyUI's extra_model_paths.yaml "
                                                   "format; default <home>/extra_model_paths.yaml when it exists")
    stage_slots: int = Field(2, ge=1, le=64, description="stage calls one stage replica runs at once")
    gil_switch_interval_s: float = Field(0.0005, gt=0, le=1,
                                         description="a stage process's GIL switch interval (sys.setswitchinterval)")
    gc_thresholds: str = Field("700,10,10", pattern=r"^(\d+,\d+,\d+)?$",
                               description="every service's garbage-collector thresholds (young,middle,old; "
                                           "set after start-up froze its heap; empty: Python's collector untouched)")
    max_running_jobs: int = Field(4, ge=1, le=256, description="jobs the orchestrator drives at once")
    preview_method: Literal["none", "auto", "latent2rgb", "taesd"] = Field(
        "none", description="step previews on /ws for prompts whose extra_data names no preview_method, as "
                            "ComfyUI's --preview-method (none: no previews; taesd is served as latent2rgb)")
    max_attempts: int = Field(3, ge=1, le=20, description="attempts per stage call before a job fails")
    queue_wait_timeout_s: float = Field(24 * 3600.0, gt=0, description="longest a job may wait in the queue")
    attempt_timeout_s: float = Field(30 * 60.0, gt=0, description="longest one stage call may run")
    job_timeout_s: float = Field(30 * 60.0, gt=0, description="longest a job may run (per job overridable)")
    heartbeat_timeout_s: float = Field(300.0, gt=0, description="longest a stage may stay silent during a call")
    max_queue: int = Field(1000, ge=1, description="queued jobs accepted before submits get 429")
    max_pixels: int = Field(4096 * 4096, ge=64, description="most pixels (width x height x batch) one node may make")
    max_batch: int = Field(64, ge=1, description="largest batch_size a node may make")
    max_steps: int = Field(1000, ge=1, description="most sampling steps per sampler node")
    cache_max_age_s: float = Field(7 * 24 * 3600.0, ge=0, description="cached node outputs unused this long go (0: keep)")
    cache_max_bytes: int = Field(20 * 2**30, ge=0, description="size budget of cached tensors (least recently used go)")
    temp_max_age_s: float = Field(24 * 3600.0, ge=0, description="PreviewImage files older than this go (0: keep)")
    output_max_age_s: float = Field(0.0, ge=0, description="SaveImage files older than this go (0: keep forever)")
    rate_limit_per_min: int = Field(600, ge=0, description="state-changing requests per client per minute (0: off)")
    rate_limit_burst: int = Field(120, ge=1, description="requests a client may send at once before the rate applies")
    gc_interval_s: float = Field(600.0, gt=0, description="time between retention passes")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest accepted request body")
    outbound_allow: str = Field("", description="comma-separated networks (CIDR) and host names that outbound "
                                                "requests (webhooks) may reach although they are loopback, "
                                                "private or link-local (empty: public addresses only)")
    grpc_max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="largest gRPC message, both ways "
                                                                              "(tensors never cross gRPC)")
    trace: bool = Field(False, description="every service writes a JSON mark to stderr at each hop of a job "
                                           "(comfymesh.trace)")
    node_timings: bool = Field(False, description="stages log each node's wall-clock start and duration")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_json: bool | None = Field(None, description="structured JSON logs (true) or text (false); unset: text "
                                                    "on a terminal, JSON otherwise")
    # secrets are SecretStr so that a logged or printed Settings shows '**********', never the value
    api_token: SecretStr = Field(SecretStr(""), description="static bearer token every gateway route requires")
    jwt_keys: SecretStr = Field(SecretStr(""), description="comma-separated HS256 secrets and/or paths of PEM "
                                                          "public keys (RS256/ES256) that sign accepted JWTs")
    jwt_allowed_users: str = Field("", description="comma-separated JWT `sub` values allowed in (empty: any)")
    session_ttl_s: float = Field(12 * 3600.0, gt=0, description="lifetime of a browser login's session cookie")
    webhook_secret: SecretStr = Field(SecretStr(""), description="signs webhooks (empty: a random secret kept "
                                                                 "in <home>/webhook_secret)")
    internal_secret: SecretStr = Field(SecretStr(""), description="shared secret every gRPC call between "
                                                                  "services must carry")
    grpc_tls_cert: str = Field("", description="PEM certificate chain a gRPC service presents (with grpc_tls_key)")
    grpc_tls_key: str = Field("", description="PEM private key of grpc_tls_cert")
    grpc_tls_ca: str = Field("", description="PEM CA certificates gRPC clients verify services against "
                                             "(set: every channel uses TLS)")

    @field_validator("api_token", "internal_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        length = len(value.get_secret_value())
        if 0 < length < MIN_SECRET_LENGTH:
            raise ValueError(f"{length} characters is too short to resist guessing: use at least "
                             f"{MIN_SECRET_LENGTH} random characters, e.g. the output of {MAKE_SECRET}")
        return value

    @field_validator("imaging_replicas", "diffusion_replicas")
    @classmethod
    def _replica_addresses(cls, value: str) -> str:
        return check_replica_addresses(value)

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _local_files_are_the_home(self) -> Settings:
        # every service reads local inputs and outputs under the data home: another folder would split them
        if self.files_url.lower().startswith("file://") and files_folder(self.files_url) != self.home:
            raise ValueError(f"COMFYMESH_FILES_URL: a file:// URL must name the data home ({self.home.as_uri()}); "
                             "for another local folder set COMFYMESH_HOME to it, or share files with s3://")
        return self

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(max_attempts=self.max_attempts)

    @property
    def timeout_policy(self) -> TimeoutPolicy:
        return TimeoutPolicy(queue_wait_s=self.queue_wait_timeout_s, attempt_s=self.attempt_timeout_s,
                             overall_s=self.job_timeout_s, heartbeat_s=self.heartbeat_timeout_s)

    @property
    def artifacts(self) -> str:
        return self.artifacts_url or (self.home / "artifacts").as_uri()

    @property
    def files(self) -> str:
        """COMFYMESH_FILES_URL, or file://<home>: outputs in output/, uploads in input/, as ever."""
        return self.files_url or self.home.as_uri()

    @property
    def models(self) -> str:
        """COMFYMESH_MODELS_URL, or file://<home>/models: the model folders as ever."""
        return self.models_url or (self.home / "models").as_uri()

    @property
    def extra_model_paths_file(self) -> Path:
        return Path(self.extra_model_paths).expanduser() if self.extra_model_paths else \
            self.home / "extra_model_paths.yaml"

    @property
    def public_base_url(self) -> str:
        """Where clients reach the gateway: `public_url`, else the address it binds."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def database_path(self) -> Path:
        """The SQLite file (meaningless when `database` is a URL: see comfymesh.jobs.open_job_store)."""
        return Path(self.database) if self.database else self.home / "comfymesh.db"

    @property
    def auth_configured(self) -> bool:
        """Whether the gateway demands credentials (an API token or JWT keys)."""
        return bool(self.api_token.get_secret_value() or self.jwt_key_entries())

    def jwt_key_entries(self) -> list[str]:
        return [key.strip() for key in self.jwt_keys.get_secret_value().split(",") if key.strip()]

    def allowed_host_names(self) -> frozenset[str]:
        return frozenset(host.strip().lower() for host in self.allowed_hosts.split(",") if host.strip())

    def allowed_origin_list(self) -> list[str]:
        return [origin.strip().lower() for origin in self.allowed_origins.split(",") if origin.strip()]

    def allowed_users(self) -> frozenset[str]:
        return frozenset(user.strip() for user in self.jwt_allowed_users.split(",") if user.strip())

    def replicas(self, stage: str) -> list[str]:
        raw = {"imaging": self.imaging_replicas, "diffusion": self.diffusion_replicas}.get(stage, "")
        return [address.strip() for address in raw.split(",") if address.strip()]

    def folder(self, name: str) -> Path:
        """A folder of the data root (input, output, temp, models/checkpoints, ...), created on demand."""
        path = self.home / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once at start-up; invalid ones stop the process with a line for each."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(configuration_problems(exc)) from None


def configuration_problems(exc: ValidationError) -> str:
    """One line per refused setting, named by its variable; never the value (it may be a secret)."""
    # a check of several settings (no loc) names its variables in its message
    lines = [(f"{_variable(error['loc'])}: " if error["loc"] else "")
             + error["msg"].removeprefix("Value error, ") for error in exc.errors()]
    return "comfymesh: invalid configuration\n  " + "\n  ".join(lines)


def _variable(loc: tuple[int | str, ...]) -> str:
    name = "_".join(str(part) for part in loc).upper()
    # a setting read from several variables is reported by its first alias, a whole variable name already
    return name if name.startswith("COMFYMESH_") else f"COMFYMESH_{name}"


__all__ = ["BatchingSettings", "DiffusionSettings", "DiscoverySettings", "FastPathSettings", "FaultSwitches",
           "FilesSettings", "ModelPullSettings", "RetryPolicy", "Settings", "TelemetrySettings", "TimeoutPolicy",
           "WorkflowSettings", "get_settings"]
