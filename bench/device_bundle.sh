#!/bin/bash
# Build .dev/, what a GPU bench needs on the lent device machine (Python 3.12, torch preinstalled, no network),
# under 64 MiB with the repository: the project's pure dependencies unpacked from cp312 wheels into one xz
# tarball (site.tar.xz), the tokenizer files (tok.tar.xz), stand-ins for the frontend and Swagger UI wheels
# (stub/), the device scripts (env.sh, start.sh, wait.sh) and a snapshot of HEAD's code with the generated
# stubs (snap/), so the run is of a commit (snap/COMMIT) even while the working tree changes.
# Usage (repository root, after `make setup`): bash bench/device_bundle.sh
# Then, on the device: `.dev/start.sh NAME "python3 bench/families_gpu.py ..."; .dev/wait.sh 540 NAME` with
# carry [".dev"]; NAME's log, exit status and results land in /tmp/fbr (wait.sh copies the JSON to $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.dev/' .git/info/exclude || echo /.dev/ >> .git/info/exclude
rm -rf .dev && mkdir -p .dev/stub
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
# pinned as in the venv; torch, numpy and triton come with the device's image
pkgs=$(.venv/bin/pip freeze | grep -i -E '^(annotated-doc|anyio|blake3|certifi|cffi|charset.normalizer|click|cryptography|diffusers|einops|fastapi|filelock|fsspec|grpcio|grpcio-health-checking|h11|httpcore|httpx|huggingface.hub|idna|importlib.metadata|isal|markdown-it-py|mdurl|opentelemetry-api|orjson|packaging|pillow|prometheus.client|protobuf|pycparser|pydantic|pydantic.core|pydantic-settings|pyjwt|python-dotenv|python-multipart|pyyaml|regex|requests|rich|safetensors|shellingham|sse-starlette|starlette|tokenizers|torchsde|tqdm|trampoline|transformers|typer|typing.inspection|typing.extensions|urllib3|uvicorn|websockets|zipp)==')
for p in $pkgs; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_34_x86_64 -d "$work/whl" "$p"
done
mkdir -p "$work/site" && for w in "$work"/whl/*.whl; do unzip -q -o "$w" -d "$work/site"; done
tar -C "$work/site" -cf - . | xz -6 -T0 > .dev/site.tar.xz
tok=.venv/share/comfymesh/clip_tokenizer  # Llama 3's files (HiDream) stay behind: no GPU bench reads them
tar -C "$tok" --exclude=./llama3 -cJf .dev/tok.tar.xz .
mkdir -p .dev/stub/comfyui_frontend_package/static .dev/stub/swagger_ui_bundle/assets
echo '<html><body>frontend stand-in</body></html>' > .dev/stub/comfyui_frontend_package/static/index.html
touch .dev/stub/comfyui_frontend_package/__init__.py .dev/stub/swagger_ui_bundle/assets/index.html
printf 'import os\nswagger_ui_path = os.path.join(os.path.dirname(__file__), "assets")\n' \
  > .dev/stub/swagger_ui_bundle/__init__.py
mkdir -p .dev/snap && git archive HEAD libs services bench tests ui pyproject.toml | tar -x -C .dev/snap
cp -r libs/comfymesh/v1 .dev/snap/libs/comfymesh/
(cd .dev/snap && rm -rf tests/cluster tests/e2e tests/golden tests/integration tests/unit tests/plugins tests/shared \
  bench/results bench/*.json && find . -name '*.md' -delete)
git rev-parse --short HEAD > .dev/snap/COMMIT
cat > .dev/env.sh <<'SH'
# sourced by start.sh: the snapshot as the working folder, the unpacked dependencies and tokenizers on the path
DEV="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$DEV/snap" || exit 1
if [ ! -d /tmp/site ]; then mkdir -p /tmp/site && tar -C /tmp/site -xJf "$DEV/site.tar.xz" || exit 1; fi
mkdir -p /tmp/tok && { [ -d /tmp/tok/t5 ] || tar -C /tmp/tok -xJf "$DEV/tok.tar.xz"; }
export PYTHONPATH=/tmp/site:$DEV/stub:$PWD/libs:$PWD/services:$PWD COMFYMESH_TOKENIZER_DIR=/tmp/tok
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p /tmp/fbr
SH
cat > .dev/start.sh <<'SH'
#!/bin/bash
# start.sh NAME CMD...: CMD in the background, in a session of its own (it outlives the call while the machine is
# held), from the snapshot with env.sh's path; its output in /tmp/fbr/NAME.log, its exit status in /tmp/fbr/NAME.rc
source "$(dirname "$0")/env.sh"
name=$1; shift
setsid bash -c "$* > /tmp/fbr/$name.log 2>&1; echo \$? > /tmp/fbr/$name.rc" < /dev/null > /dev/null 2>&1 &
echo "started $name"
SH
cat > .dev/wait.sh <<'SH'
#!/bin/bash
# wait.sh SECONDS NAME...: wait until each NAME has an exit status or SECONDS pass; print their log tails and copy
# the results (/tmp/fbr/*.json) to $OUT
end=$(( $(date +%s) + $1 )); shift
for n in "$@"; do
  while [ ! -f "/tmp/fbr/$n.rc" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
done
for n in "$@"; do echo "== $n rc=$(cat "/tmp/fbr/$n.rc" 2>/dev/null || echo running)"; tail -c 2500 "/tmp/fbr/$n.log"; done
cp /tmp/fbr/*.json "$OUT"/ 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv; df -h /tmp | tail -1
SH
chmod +x .dev/*.sh
echo ".dev: $(du -sh .dev | cut -f1) (with the tracked files: $(( ($(git ls-files -z | xargs -0 cat | wc -c) + $(du -sb .dev | cut -f1)) / 1048576 )) MiB of the 64 MiB a call carries)"
