#!/usr/bin/env bash
# Fetches etcd's v3 API protos (and the two proto trees they import) from
# Debian 12 packages, without installing the ~140 Go packages those -dev
# packages depend on: `apt-get download` + `dpkg-deb -x` of
#   golang-etcd-server-dev                        rpc.proto, kv.proto, auth.proto
#   golang-github-gogo-protobuf-dev               gogoproto/gogo.proto
#   golang-github-grpc-ecosystem-grpc-gateway-dev google/api/{annotations,http}.proto
# (about 2 MB of .deb files). Nothing is copied into the repository; the
# files land in DEST laid out as protoc's import paths expect:
#   DEST/etcd/etcdserver/etcdserverpb/rpc.proto
#   DEST/etcd/mvcc/mvccpb/kv.proto
#   DEST/etcd/auth/authpb/auth.proto
#   DEST/gogoproto/gogo.proto
#   DEST/google/api/annotations.proto, DEST/google/api/http.proto
#   DEST/licenses/<package>.copyright, DEST/VERSIONS
# google/protobuf/descriptor.proto comes from libprotobuf-dev (/usr/include).
#
#   tools/fetch-etcd-protos.sh DEST      # exit 0 when DEST is complete
# Idempotent: does nothing when DEST/VERSIONS exists. Used by
# tools/install-deps.sh and, as a fallback, by proto/etcd/CMakeLists.txt.
set -euo pipefail

DEST="${1:?usage: fetch-etcd-protos.sh DEST}"
if [ -f "$DEST/VERSIONS" ]; then
  echo "fetch-etcd-protos: $DEST is complete"
  exit 0
fi

PKGS=(golang-etcd-server-dev golang-github-gogo-protobuf-dev
      golang-github-grpc-ecosystem-grpc-gateway-dev)
# source path inside the packages -> import path
FILES=(
  "go.etcd.io/etcd/etcdserver/etcdserverpb/rpc.proto:etcd/etcdserver/etcdserverpb/rpc.proto"
  "go.etcd.io/etcd/mvcc/mvccpb/kv.proto:etcd/mvcc/mvccpb/kv.proto"
  "go.etcd.io/etcd/auth/authpb/auth.proto:etcd/auth/authpb/auth.proto"
  "github.com/gogo/protobuf/gogoproto/gogo.proto:gogoproto/gogo.proto"
  "github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis/google/api/annotations.proto:google/api/annotations.proto"
  "github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis/google/api/http.proto:google/api/http.proto"
)

for tool in apt-get dpkg-deb; do
  if ! command -v "$tool" >/dev/null; then
    echo "fetch-etcd-protos: $tool not found (not a Debian system?)" >&2
    exit 1
  fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
# apt-get download runs as _apt when it can; a private world-writable
# directory avoids its "couldn't be accessed by user '_apt'" warning.
chmod 0777 "$tmp"
if ! apt-get download -q "${PKGS[@]}" >download.log 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    # Fresh machines have no package lists yet.
    apt-get update -q >/dev/null 2>&1 || true
    apt-get download -q "${PKGS[@]}" >download.log 2>&1 || {
      cat download.log >&2
      echo "fetch-etcd-protos: apt-get download failed" >&2
      exit 1
    }
  else
    cat download.log >&2
    echo "fetch-etcd-protos: apt-get download failed (run tools/install-deps.sh)" >&2
    exit 1
  fi
fi

mkdir -p root out/licenses
for deb in ./*.deb; do
  dpkg-deb -x "$deb" root
  pkg="$(dpkg-deb -f "$deb" Package)"
  echo "$pkg $(dpkg-deb -f "$deb" Version)" >>out/VERSIONS.tmp
  cp "root/usr/share/doc/$pkg/copyright" "out/licenses/$pkg.copyright" 2>/dev/null || true
done
src=root/usr/share/gocode/src
for entry in "${FILES[@]}"; do
  from="$src/${entry%%:*}"
  to="out/${entry##*:}"
  if [ ! -f "$from" ]; then
    echo "fetch-etcd-protos: $from missing from the packages" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$to")"
  cp "$from" "$to"
done
mv out/VERSIONS.tmp out/VERSIONS

mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.partial"
cp -r out "$DEST.partial"
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "fetch-etcd-protos: etcd v3 protos in $DEST ($(tr '\n' ' ' <"$DEST/VERSIONS"))"
