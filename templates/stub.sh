#!/bin/sh
# @NAME@: an encoderfile artifact. This shell stub is followed by the runtime (a PyInstaller
# onedir as tar.gz), model.onnx, tokenizer.json, manifest.json, an index and a 24-byte trailer.
# The runtime is extracted once into a cache keyed by its sha256; the model is read in place.
set -eu
sha=@RUNTIME_SHA256@
case $0 in /*) self=$0 ;; *) self=$PWD/${0#./} ;; esac
if [ -n "${XDG_CACHE_HOME:-}" ]; then cache=$XDG_CACHE_HOME/encoderfile
elif [ -n "${HOME:-}" ]; then cache=$HOME/.cache/encoderfile
else cache=${TMPDIR:-/tmp}/encoderfile-$(id -u); fi
dir=$cache/$sha
if [ ! -f "$dir/.complete" ]; then
  fail() { echo "encoderfile: $*" >&2; exit 2; }
  # A directory without its marker was damaged after extraction: extract again.
  if [ -d "$dir" ] && [ ! -f "$dir/.complete" ]; then rm -rf "$dir"; fi
  mkdir -p "$cache" 2>/dev/null && tmp=$(mktemp -d "$cache/.$sha.XXXXXX") ||
    fail "cannot write the cache $cache. Set XDG_CACHE_HOME to a writable directory."
  trap 'rm -rf "$tmp"' EXIT
  tail -c +$((@RUNTIME_OFFSET@ + 1)) "$self" | head -c @RUNTIME_LENGTH@ > "$tmp/runtime.tar.gz" ||
    fail "cannot read $self. Check that the file is complete and readable."
  if command -v sha256sum >/dev/null 2>&1; then
    got=$(sha256sum < "$tmp/runtime.tar.gz")
    [ "${got%% *}" = "$sha" ] ||
      fail "$self is damaged (runtime sha256 mismatch). Download or rebuild it."
  fi
  tar -xzf "$tmp/runtime.tar.gz" -C "$tmp" ||
    fail "cannot extract the runtime into $cache. Check free space or set XDG_CACHE_HOME."
  rm -f "$tmp/runtime.tar.gz"
  : > "$tmp/.complete"
  # Atomic publish; if another process won the race, keep its copy and drop ours.
  [ -d "$dir" ] || mv "$tmp" "$dir" 2>/dev/null || :
  rm -rf "$tmp" "$dir/${tmp##*/}"
  trap - EXIT
fi
ENCODERFILE_ARTIFACT=$self exec "$dir/encoderfile" "$@"
