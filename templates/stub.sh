#!/bin/sh
# @NAME@: an encoderfile artifact. This shell stub is followed by the runtime (a PyInstaller
# onedir as tar.gz), model.onnx, tokenizer.json, manifest.json, an index and a 24-byte trailer.
# The runtime is extracted once into a private cache keyed by its sha256; the model is read in
# place. Every start checks the extracted files against the listing taken at extraction (inode,
# size and ctime of each: one `ls`, no hashing) and extracts again if anything changed.
set -eu
sha=@RUNTIME_SHA256@
fail() { echo "encoderfile: $*" >&2; exit 2; }
case $0 in /*) self=$0 ;; *) self=$PWD/${0#./} ;; esac
uid=$(id -u)
if [ -n "${XDG_CACHE_HOME:-}" ]; then cache=$XDG_CACHE_HOME/encoderfile
elif [ -n "${HOME:-}" ]; then cache=$HOME/.cache/encoderfile
else cache=${TMPDIR:-/tmp}/encoderfile-$uid; fi
# The cache must be a real directory of ours that no one else can write; mkdir -m 0700 creates
# it atomically and fails rather than follow a symlink planted at its path.
if [ ! -d "$cache" ] && [ ! -L "$cache" ]; then
  mkdir -p "${cache%/*}" 2>/dev/null || :
  mkdir -m 0700 "$cache" 2>/dev/null || :
fi
private() {
  [ ! -L "$1" ] || fail "the cache $1 is a symbolic link. Remove it, or set XDG_CACHE_HOME to a private directory."
  [ -d "$1" ] || fail "cannot write the cache directory $1. Set XDG_CACHE_HOME to a writable directory."
  set -f; set -- "$1" $(ls -ldn "$1"); set +f
  [ "$4" = "$uid" ] ||
    fail "the cache $1 belongs to uid $4, not to you (uid $uid). Remove it, or set XDG_CACHE_HOME to a private directory."
  case $2 in ?????w* | ????????w*)
    fail "the cache $1 is writable by others ($2). Run 'chmod go-w $1', or set XDG_CACHE_HOME to a private directory." ;;
  esac
}
private "$cache"
dir=$cache/$sha
listing() { (cd "$1" && ls -lniRc --full-time .); }
sound() { [ ! -L "$1" ] && [ -d "$1" ] && listing "$1" 2>/dev/null | cmp -s - "$1/.complete"; }
if ! sound "$dir"; then
  # Missing, damaged or modified; a symlink or file there is removed, never followed.
  if [ -L "$dir" ] || { [ -e "$dir" ] && [ ! -d "$dir" ]; }; then rm -f "$dir"; fi
  tmp=$(mktemp -d "$cache/.$sha.XXXXXX") ||
    fail "cannot write the cache $cache. Set XDG_CACHE_HOME to a writable directory."
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
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
  listing "$tmp" > "$tmp/.complete"
  # Atomic publish, setting a damaged copy aside; if another process published a sound copy
  # meanwhile, keep it and drop ours.
  if ! sound "$dir"; then
    if [ -d "$dir" ]; then mv "$dir" "$tmp.old" 2>/dev/null || :; fi
    mv "$tmp" "$dir" 2>/dev/null || :
  fi
  rm -rf "$tmp" "$tmp.old" "$dir/${tmp##*/}"
  trap - EXIT INT TERM
fi
# The runtime brings its own loader and libc (docs/artifact.md#portability); --library-path,
# unlike LD_LIBRARY_PATH, is not inherited by child processes. _PYI_*: PyInstaller's bootloader
# skips its re-exec through the host's loader. LOCPATH: never the host's locale archive.
loader=$dir/@LOADER@
if [ -f "$loader" ]; then
  ENCODERFILE_ARTIFACT=$self _PYI_ARCHIVE_FILE=$dir/encoderfile _PYI_PARENT_PROCESS_LEVEL=-1 \
    LOCPATH=$dir/@LIBRARY_DIR@/locale exec "$loader" --inhibit-cache \
    --library-path "$dir/@LIBRARY_DIR@" --argv0 "$dir/encoderfile" "$dir/encoderfile" "$@"
fi
ENCODERFILE_ARTIFACT=$self exec "$dir/encoderfile" "$@"
