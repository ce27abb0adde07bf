# shellcheck shell=bash
# Sourced by the scripts that pack binaries for a machine without our
# dependencies (tools/gpu/run_gpu_suite.sh, tools/pack_service_bench.sh).
#
#   bundle_shared_libs DEST EXCLUDE_REGEX BINARY...
#
# Copies into DEST every shared library the binaries load (ldd's closure)
# whose file name does not match EXCLUDE_REGEX (the libraries the other
# machine has itself), once each, writable and stripped. Fails (status 1,
# naming them) when ldd cannot find a library that would have to travel;
# an excluded one may be missing here (e.g. the GPU driver's).
bundle_shared_libs() {
  local dest=$1 exclude=$2 bin deps lib path
  shift 2
  for bin in "$@"; do
    deps=$(ldd "$bin") || { echo "ldd $bin failed" >&2; return 1; }
    while read -r lib; do
      [[ "$lib" =~ $exclude ]] && continue
      echo "$bin needs $lib, which this machine lacks" >&2
      return 1
    done < <(awk '$2 == "=>" && $3 == "not" {print $1}' <<< "$deps")
    while read -r lib path; do
      [[ "$lib" =~ $exclude || -e "$dest/$lib" ]] && continue
      cp -L "$path" "$dest/$lib"
      chmod u+w "$dest/$lib"
      strip --strip-unneeded "$dest/$lib" 2> /dev/null || true
    done < <(awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' <<< "$deps")
  done
}
