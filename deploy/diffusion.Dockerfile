# comfymesh diffusion service image (build from the repository root: docker build -f deploy/diffusion.Dockerfile .)
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 COMFYMESH_HOME=/data

# the torch build: cpu, or a CUDA wheel tag (cu126, cu128, cu130; docker-compose.gpu.yml passes one)
ARG TORCH_BUILD=cpu

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY proto ./proto
COPY libs ./libs
COPY services ./services
# stubs are generated before the install so the wheel carries them
RUN pip install --no-cache-dir -c constraints.txt grpcio-tools \
 && python -m grpc_tools.protoc -I proto --python_out=libs --grpc_python_out=libs --pyi_out=libs proto/comfymesh/v1/*.proto \
 && touch libs/comfymesh/v1/__init__.py \
 && grep -v '^torch==' constraints.txt > /tmp/constraints-torch.txt \
 && pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/${TORCH_BUILD} -c /tmp/constraints-torch.txt \
      torch==2.13.0+${TORCH_BUILD} '.[diffusion]' s3fs \
 && pip install --no-cache-dir --no-deps -c constraints.txt spandrel==0.4.2 einops==0.8.2
RUN python -m comfymesh.diffusion.text.tokenizer_build --if-missing
CMD ["python", "-m", "comfymesh.diffusion", "--listen", "0.0.0.0:50071"]
