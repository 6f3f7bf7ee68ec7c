#!/usr/bin/env bash
# Copies the build dependencies a bare GPU machine may lack (Eigen, nlohmann-json, stb, doctest headers with their
# CMake package files, zlib's headers and library) from this (Debian) machine into one folder, ~14 MB, so that a
# machine without them and without network can build the CUDA tests:
#   benchmarks/gpu/stage_deps.sh [DIR]            (default DIR: .gpu-deps, ignore it in .git/info/exclude)
#   ... on the GPU machine: DEPS_PREFIX=$PWD/.gpu-deps benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-.gpu-deps}
rm -rf "$dir"
mkdir -p "$dir/include" "$dir/lib/cmake" "$dir/share/cmake"
cp -r /usr/include/eigen3 /usr/include/nlohmann /usr/include/stb /usr/include/doctest "$dir/include/"
cp /usr/include/zlib.h /usr/include/zconf.h "$dir/include/"
cp -r /usr/share/eigen3 "$dir/share/"                          # share/eigen3/cmake/Eigen3Config.cmake
cp -r /usr/share/cmake/nlohmann_json "$dir/share/cmake/"
cp -r /usr/lib/cmake/doctest "$dir/lib/cmake/"
cp -P /usr/lib/x86_64-linux-gnu/libz.so* "$dir/lib/"
du -sh "$dir"
