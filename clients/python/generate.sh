#!/usr/bin/env bash
# Regenerates the gRPC client code in src/switchyard_client/_proto from
# ../../proto (needs grpcio-tools). The generated files are committed so that
# `pip install` needs no protoc; the tests check they match the proto.
#
# usage: clients/python/generate.sh [OUT_DIR]   (default: the package's _proto)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/src/switchyard_client/_proto}"
python="${PYTHON:-python3}"
mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m grpc_tools.protoc -I "$here/../../proto" --python_out="$tmp" --pyi_out="$tmp" \
  --grpc_python_out="$tmp" switchyard/v1/router.proto
# The generated service module imports the messages as a top-level package;
# inside this package it is a sibling module.
sed 's/^from switchyard\.v1 import router_pb2 as/from . import router_pb2 as/' \
  "$tmp/switchyard/v1/router_pb2_grpc.py" >"$out/router_pb2_grpc.py"
cp "$tmp/switchyard/v1/router_pb2.py" "$tmp/switchyard/v1/router_pb2.pyi" "$out/"
touch "$out/__init__.py"
