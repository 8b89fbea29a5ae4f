"""The gateway: our REST API (/v1) and ComfyUI's API over the orchestrator; stateless."""
