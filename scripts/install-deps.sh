#!/usr/bin/env bash
# Installs adabldm's build and test dependencies from Debian packages (skips the install when all are present).
# --fuzz adds clang and its libFuzzer runtime (scripts/test.sh fuzzes every reader briefly; docs/reliability.md).
set -euo pipefail
packages=(cmake make g++ libeigen3-dev doctest-dev libstb-dev nlohmann-json3-dev libbenchmark-dev zlib1g-dev
          libpng-dev libjpeg62-turbo-dev)
if [ "${1:-}" = "--fuzz" ]; then packages+=(clang libclang-rt-14-dev); fi
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all dependencies present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
