"""Model pulls (`POST /v1/models/pull`, `comfymesh models pull`): which hosts models may come from, how big and
how slow a download may be."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelPullSettings(BaseModel):
    """The model-pull part of `Settings` (COMFYMESH_MODEL_PULL_*)."""

    model_config = ConfigDict(frozen=True)

    model_pull_hosts: str = Field(
        "huggingface.co,hf.co,civitai.com,github.com,githubusercontent.com",
        description="comma-separated host names models may be downloaded from (a name also allows its "
                    "subdomains; redirects are followed only to these); the outbound policy applies too")
    model_pull_max_bytes: int = Field(64 * 1024**3, ge=1, description="largest model file a pull may write")
    model_pull_timeout_s: float = Field(6 * 3600.0, gt=0, description="longest one pull may take, in seconds")

    def model_pull_host_list(self) -> tuple[str, ...]:
        return tuple(host.strip().lower().rstrip(".") for host in self.model_pull_hosts.split(",") if host.strip())
