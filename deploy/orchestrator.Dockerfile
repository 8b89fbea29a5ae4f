# comfymesh orchestrator service image (build from the repository root: docker build -f deploy/orchestrator.Dockerfile .)
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 COMFYMESH_HOME=/data

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY proto ./proto
COPY libs ./libs
COPY services ./services
# stubs are generated before the install so the wheel carries them
RUN pip install --no-cache-dir -c constraints.txt grpcio-tools \
 && python -m grpc_tools.protoc -I proto --python_out=libs --grpc_python_out=libs --pyi_out=libs proto/comfymesh/v1/*.proto \
 && touch libs/comfymesh/v1/__init__.py \
 && pip install --no-cache-dir -c constraints.txt '.[orchestrator]' s3fs  # s3fs: COMFYMESH_ARTIFACTS_URL=s3://…
CMD ["python", "-m", "comfymesh.orchestrator", "--listen", "0.0.0.0:50051"]
