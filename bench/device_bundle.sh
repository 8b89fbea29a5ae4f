#!/bin/bash
# Build .dev/, what a GPU bench needs on the lent device machine (Python 3.12, torch preinstalled, no network),
# under 64 MiB with the repository: the project's pure dependencies unpacked from cp312 wheels into one xz
# tarball (site.tar.xz), the tokenizer files (tok.tar.xz), stand-ins for the frontend and Swagger UI wheels
# (stub/), the device scripts (env.sh, start.sh, wait.sh) and a snapshot of HEAD's code with the generated
# stubs (snap/), so the run is of a commit (snap/COMMIT) even while the working tree changes.
# Usage (repository root, after `make setup`): bash bench/device_bundle.sh
# Then, on the device: `.dev/start.sh NAME "python3 bench/families_gpu.py ..."; .dev/wait.sh 540 NAME` with
# carry [".dev"]; NAME's log, exit status and results land in /tmp/fbr (wait.sh copies the JSON and the
# meshes' logs to $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.dev/' .git/info/exclude || echo /.dev/ >> .git/info/exclude
rm -rf .dev && mkdir -p .dev/stub
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
# the project's runtime dependencies (its diffusion, gateway and orchestrator extras) and theirs, walked from the
# venv's metadata with markers read for Python 3.12 on Linux, pinned as installed; torch and what comes with it in the
# device's image are left out, and so are the wheels stood in for (frontend, Swagger UI) and ImageMagick's binding
pkgs=$(.venv/bin/python - <<'PY'
from importlib.metadata import PackageNotFoundError, distribution
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

IMAGE = {"torch", "triton", "numpy", "scipy", "sympy", "networkx", "jinja2", "markupsafe", "mpmath", "setuptools"}
STOOD_IN = {"comfyui-frontend-package", "swagger-ui-bundle-v2", "wand", "asyncpg"}
seen: dict[str, str] = {}
todo = [("comfymesh", {"diffusion", "gateway", "orchestrator"})]
while todo:
    name, extras = todo.pop()
    for text in distribution(name).requires or []:
        req = Requirement(text)
        env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
        if req.marker and not any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
            continue
        key = canonicalize_name(req.name)
        if key in IMAGE or key.startswith("nvidia-") or key in STOOD_IN:
            continue
        try:
            version = distribution(req.name).version
        except PackageNotFoundError:
            continue  # an optional dependency the venv does not have
        if key not in seen:
            seen[key] = version
            todo.append((req.name, set(req.extras)))
        elif req.extras:
            todo.append((req.name, set(req.extras)))
print(" ".join(f"{k}=={v}" for k, v in sorted(seen.items())))
PY
)
echo "dependencies: $pkgs"
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
# the code runs from a copy: a later call re-sends .dev, which would replace snap/ under a running bench
[ -d /tmp/snap ] || cp -r "$DEV/snap" /tmp/snap
cd /tmp/snap || exit 1
if [ ! -d /tmp/site ]; then mkdir -p /tmp/site && tar -C /tmp/site -xJf "$DEV/site.tar.xz" || exit 1; fi
mkdir -p /tmp/tok && { [ -d /tmp/tok/t5 ] || tar -C /tmp/tok -xJf "$DEV/tok.tar.xz"; }
[ -d /tmp/stub ] || cp -r "$DEV/stub" /tmp/stub
export PYTHONPATH=/tmp/site:/tmp/stub:$PWD/libs:$PWD/services:$PWD COMFYMESH_TOKENIZER_DIR=/tmp/tok
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p /tmp/fbr
SH
cat > .dev/start.sh <<'SH'
#!/bin/bash
# start.sh NAME CMD...: CMD in the background, in a session of its own (it outlives the call while the machine is
# held), from the snapshot with env.sh's path; its output in /tmp/fbr/NAME.log, its exit status in /tmp/fbr/NAME.rc
source "$(dirname "$0")/env.sh"
name=$1; shift
setsid bash -c "{ $*; } > /tmp/fbr/$name.log 2>&1; echo \$? > /tmp/fbr/$name.rc" < /dev/null > /dev/null 2>&1 &
echo "started $name"
SH
cat > .dev/wait.sh <<'SH'
#!/bin/bash
# wait.sh SECONDS NAME...: wait until each NAME has an exit status or SECONDS pass; print their log tails and copy
# to $OUT what a reply carries (8 files at most): the results (/tmp/fbr/*.json), the chains' logs, the newest meshes' logs
end=$(( $(date +%s) + $1 )); shift
for n in "$@"; do
  while [ ! -f "/tmp/fbr/$n.rc" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 5; done
done
for n in "$@"; do
  echo "== $n rc=$(cat "/tmp/fbr/$n.rc" 2>/dev/null || echo running)"; tail -c 2500 "/tmp/fbr/$n.log"
done
shopt -s nullglob
files=(/tmp/fbr/*.json)
for n in "$@"; do files+=("/tmp/fbr/$n.log"); done
mapfile -t logs < <(ls -t /tmp/fbr/mesh-*.log 2>/dev/null)
files+=("${logs[@]}")
cp "${files[@]:0:8}" "$OUT"/ 2>/dev/null
nvidia-smi --query-gpu=memory.used --format=csv; df -h /tmp | tail -1
SH
chmod +x .dev/*.sh
carried=$(( ($(git ls-files -z | xargs -0 cat | wc -c) + $(du -sb .dev | cut -f1)) / 1048576 ))
echo ".dev: $(du -sh .dev | cut -f1) (with the tracked files: $carried MiB of the 64 MiB a call carries)"
