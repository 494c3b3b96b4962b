#!/usr/bin/env bash
# The container images, built without any registry: `commerce` and
# `commerce-operator` (release binaries on a distroless-like base assembled
# from Debian packages) and a pause image for the local node (Debian's static
# catatonit).
#
#   images.sh build            build all three as image archives in the cache
#   images.sh stage NAME DIR   write the staged root of image NAME into DIR, for
#                              `docker build -f Dockerfile --build-arg BINARY=NAME DIR`
#   images.sh list             one line per image: `<image ref> <archive path>`
#                              (a stable format: other scripts import from it)
#   images.sh status           whether each archive exists
#
# The base root is cached in $COMMERCE_CACHE_DIR/images/base-<key>/, keyed by
# the Debian package versions it is unpacked from; the archives are
# docker-archive tars (`ctr -n k8s.io images import FILE` keeps their tag) in
# $COMMERCE_CACHE_DIR/images/, each rebuilt only when its inputs change.
# Buildah's storage: $COMMERCE_CACHE_DIR/buildah/storage (emptied after each
# build), its run root $COMMERCE_STATE_DIR/buildah/run.
# Log: $COMMERCE_STATE_DIR/logs/images.log
COMPONENT=images
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Functions whose output is captured ($(...)) stop at their first failure too.
shopt -s inherit_errexit

# The Makefile exports the same default; a direct run shares its builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/commerce-stack/target}"

IMAGES_DIR="$CACHE/images"
DEBS_DIR="$IMAGES_DIR/debs"
STAGE_DIR="$IMAGES_DIR/stage"
IMAGES_LOG="$(log_file images)"
DOCKERFILE="$REPO_ROOT/Dockerfile"
REGISTRY="ghcr.io/commerce-stack"
PAUSE_NAME="commerce-pause"
# The product images, built from the repository's Dockerfile.
BINARIES=(commerce commerce-operator)
# What every glibc binary needs at run time, plus the files a Go or Rust
# network service reads (/etc/protocols and /etc/services, zoneinfo). Any
# other library the binaries link is added from `ldd` (see base_packages).
BASE_PACKAGES=(libc6 libgcc-s1 netbase tzdata)
# The id distroless calls `nonroot`; the Dockerfile's USER.
NONROOT_ID=65532

# --- versions and names ------------------------------------------------------

# [workspace.package] version of Cargo.toml: the version the CommerceStack's
# image tags default to.
workspace_field() {
  awk -v key="$1" '
    /^\[/ { in_section = ($0 == "[workspace.package]") }
    in_section && $1 == key { sub(/^[^=]*= *"/, ""); sub(/".*$/, ""); print; exit }
  ' "$REPO_ROOT/Cargo.toml"
}

workspace_version() {
  local version
  version="$(workspace_field version)"
  [[ -n "$version" ]] || die "no version in [workspace.package] of $REPO_ROOT/Cargo.toml"
  printf '%s\n' "$version"
}

# The chart's appVersion is the operator image's default tag, and the operator
# names the commerce image with its own version: all three must agree, or the
# chart would deploy an image this script never built.
check_chart_version() {
  local chart="$REPO_ROOT/charts/commerce-operator/Chart.yaml" version app
  version="$(workspace_version)"
  app="$(sed -n 's/^appVersion:[[:space:]]*//p' "$chart" | tr -d "\"' ")"
  [[ "$app" == "$version" ]] \
    || die "appVersion in $chart is '$app' but the workspace version in Cargo.toml is '$version'; set them to the same version"
}

# The pause image's tag: catatonit's upstream version (a Debian revision such
# as `-1+b2` is not a valid tag). The installed package when there is one,
# else the one apt would install.
catatonit_version() {
  local version
  version="$(dpkg-query -W -f '${Version}' catatonit 2>/dev/null || true)"
  [[ -n "$version" ]] || version="$(apt-cache show --no-all-versions catatonit 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)"
  [[ -n "$version" ]] || { echo unknown; return 0; }
  version="${version#*:}"
  printf '%s\n' "${version%%-*}"
}

image_ref() {
  case "$1" in
    "$PAUSE_NAME") printf 'localhost/%s:%s\n' "$PAUSE_NAME" "$(catatonit_version)" ;;
    *) printf '%s/%s:%s\n' "$REGISTRY" "$1" "$(workspace_version)" ;;
  esac
}

image_archive() {
  local ref
  ref="$(image_ref "$1")"
  printf '%s/%s-%s.tar\n' "$IMAGES_DIR" "$1" "${ref##*:}"
}

all_images() { printf '%s\n' "${BINARIES[@]}" "$PAUSE_NAME"; }

is_binary() {
  local name
  for name in "${BINARIES[@]}"; do [[ "$1" == "$name" ]] && return 0; done
  return 1
}

# --- tools and binaries --------------------------------------------------------

# Debian's buildah builds from a Dockerfile without a daemon; catatonit is the
# pause process; ca-certificates provides the CA bundle the base copies.
ensure_tools() {
  local missing=()
  command -v apt-get >/dev/null || die "apt-get is missing: the base image is assembled from Debian packages"
  if [[ "${1:-}" == build ]]; then
    command -v buildah >/dev/null || missing+=(buildah)
    dpkg-query -W -f '${Status}' catatonit 2>/dev/null | grep -q 'ok installed' || missing+=(catatonit)
  fi
  [[ -s /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
  ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
  if [[ ! -s /etc/ssl/certs/ca-certificates.crt ]] && command -v update-ca-certificates >/dev/null; then
    update-ca-certificates >>"$IMAGES_LOG" 2>&1 || true
  fi
  [[ -s /etc/ssl/certs/ca-certificates.crt ]] \
    || die "/etc/ssl/certs/ca-certificates.crt is missing after installing ca-certificates"
}

# Builds the release binaries of the given packages (same names as the
# binaries). Cargo does nothing when they are current.
build_binaries() {
  local args=() name start=$SECONDS
  for name in "$@"; do args+=(-p "$name"); done
  log "cargo build --release ${args[*]} into $CARGO_TARGET_DIR (log: $IMAGES_LOG)"
  if ! (cd "$REPO_ROOT" && cargo build --release --locked "${args[@]}") >>"$IMAGES_LOG" 2>&1; then
    tail -n 30 "$IMAGES_LOG" >&2
    die "cargo build --release failed; see $IMAGES_LOG"
  fi
  for name in "$@"; do
    [[ -x "$(binary_path "$name")" ]] || die "cargo built no $(binary_path "$name")"
  done
  log "release binaries ready in $((SECONDS - start))s"
}

binary_path() { printf '%s/release/%s\n' "$CARGO_TARGET_DIR" "$1"; }

# --- the base root -------------------------------------------------------------

# The Debian package that owns FILE (a path ldd printed). Debian 12 merged
# /lib into /usr/lib, but dpkg records the path the package shipped, so try
# both spellings.
package_of() {
  local file="$1" alt owner
  case "$file" in
    /usr/*) alt="${file#/usr}" ;;
    *) alt="/usr$file" ;;
  esac
  owner="$(dpkg -S "$file" 2>/dev/null || dpkg -S "$alt" 2>/dev/null || dpkg -S "$(readlink -f "$file")" 2>/dev/null)" \
    || die "no Debian package owns $file (needed by the release binaries)"
  owner="${owner%%: *}"
  printf '%s\n' "${owner%%:*}"
}

# BASE_PACKAGES plus the package of every shared library the binaries load.
base_packages() {
  local binary lib
  {
    printf '%s\n' "${BASE_PACKAGES[@]}"
    for binary in "$@"; do
      if ldd "$binary" | grep -q 'not found'; then
        ldd "$binary" >&2
        die "$binary needs a library this machine does not have"
      fi
      # `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)` and the loader
      # `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
      ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' \
        | while read -r lib; do package_of "$lib"; done
    done
  } | sort -u
}

# The version apt would download of PKG (the candidate).
candidate_version() {
  apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1
}

# `name=version` of each package, refreshing the package lists once when a
# package has no candidate (a new machine has no lists).
pinned_packages() {
  local pkg version pinned=() refreshed=0
  for pkg in "$@"; do
    version="$(candidate_version "$pkg")"
    if [[ -z "$version" && $refreshed -eq 0 ]]; then
      log "no candidate version of $pkg; running apt-get update"
      apt-get update >>"$LOG_DIR/apt.log" 2>&1 || die "apt-get update failed, see $LOG_DIR/apt.log"
      refreshed=1
      version="$(candidate_version "$pkg")"
    fi
    [[ -n "$version" ]] || die "apt knows no version of $pkg"
    pinned+=("$pkg=$version")
  done
  printf '%s\n' "${pinned[@]}"
}

# Downloads PKG=VERSION... into DEBS_DIR (kept: a rebuilt base reuses them);
# prints the .deb paths. One apt-get update and retry when the mirror no
# longer has a version the stale lists name.
download_debs() {
  local spec deb debs=() missing=()
  mkdir -p "$DEBS_DIR"
  for spec in "$@"; do
    deb="$(deb_path "$spec")"
    [[ -s "$deb" ]] || missing+=("$spec")
  done
  if ((${#missing[@]} > 0)); then
    log "downloading ${missing[*]}"
    if ! (cd "$DEBS_DIR" && apt-get download "${missing[@]}") >>"$IMAGES_LOG" 2>&1; then
      die "apt-get download ${missing[*]} failed (stale package lists? run apt-get update); see $IMAGES_LOG"
    fi
  fi
  for spec in "$@"; do
    deb="$(deb_path "$spec")"
    [[ -s "$deb" ]] || die "apt-get download left no $deb"
    debs+=("$deb")
  done
  printf '%s\n' "${debs[@]}"
}

# apt-get download's file name for PKG=VERSION: an epoch's colon is %3a.
deb_path() {
  local pkg="${1%%=*}" version="${1#*=}" arch
  arch="$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Architecture: //p' | head -n 1)"
  printf '%s/%s_%s_%s.deb\n' "$DEBS_DIR" "$pkg" "${version//:/%3a}" "${arch:-$(dpkg --print-architecture)}"
}

# Identifies a base root: the packages and their versions, the host files it
# copies (CA bundle, os-release) and the recipe itself (this script's
# functions that assemble it), so changing any of them builds a new one.
base_key() {
  {
    printf '%s\n' "$@"
    sha256sum /etc/ssl/certs/ca-certificates.crt | cut -d' ' -f1
    cat /etc/os-release
    declare -f assemble_base write_base_files prune_base status_entry
  } | sha256sum | cut -c1-16
}

# Unpacks the .debs into DIR, prunes it to a runtime root and adds the files
# a container needs (users, CA bundle, nsswitch, /tmp).
assemble_base() {
  local dir="$1" deb
  shift
  mkdir -p "$dir"
  for deb in "$@"; do
    dpkg-deb -x "$deb" "$dir"
    status_entry "$deb" >"$dir/.status.$(dpkg-deb -f "$deb" Package)"
  done
  prune_base "$dir"
  write_base_files "$dir"
  mkdir -p "$dir/var/lib/dpkg/status.d"
  for deb in "$dir"/.status.*; do mv "$deb" "$dir/var/lib/dpkg/status.d/${deb##*/.status.}"; done
}

# The dpkg status stanza of a package, as distroless writes it to
# /var/lib/dpkg/status.d/: image scanners read the package versions there.
status_entry() {
  dpkg-deb -f "$1" | awk 'NR == 1 { print; print "Status: install ok installed"; next } { print }'
}

# No documentation, locales or package metadata, and no program at all: only
# libraries and data stay. gconv (iconv's converters, 8 MB) goes too: Rust
# binaries never call iconv.
prune_base() {
  local dir="$1"
  rm -rf "${dir:?}"/usr/share/{doc,man,info,locale,lintian,bug,gdb,gcc} \
    "${dir:?}"/bin "${dir:?}"/sbin "${dir:?}"/usr/bin "${dir:?}"/usr/sbin "${dir:?}"/usr/libexec \
    "${dir:?}"/usr/lib/*/gconv "${dir:?}"/usr/lib/*/audit \
    "${dir:?}"/etc/init.d "${dir:?}"/etc/default "${dir:?}"/etc/systemd "${dir:?}"/usr/lib/systemd
}

write_base_files() {
  local dir="$1"
  mkdir -p "$dir/etc/ssl/certs" "$dir/tmp" "$dir/home/nonroot" "$dir/usr/local/bin"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  chmod 0644 "$dir/etc/ssl/certs/ca-certificates.crt"
  # The Debian release the libraries come from, for scanners.
  cp /etc/os-release "$dir/etc/os-release"
  cat >"$dir/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$NONROOT_ID:$NONROOT_ID:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$dir/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
nonroot:x:$NONROOT_ID:
EOF
  # glibc's resolver and getpwnam read this; files first, then DNS.
  cat >"$dir/etc/nsswitch.conf" <<'EOF'
passwd:    files
group:     files
shadow:    files
hosts:     files dns
networks:  files
protocols: files
services:  files
ethers:    files
rpc:       files
EOF
  chmod 1777 "$dir/tmp"
  chmod 0755 "$dir/home/nonroot"
}

# Fails when a root holds a shell or busybox, or a bin or sbin directory (the
# image's one program lives in /usr/local/bin).
check_no_programs() {
  local dir="$1" found
  found="$(find "$dir" \( -name sh -o -name bash -o -name dash -o -name ash -o -name busybox \
    -o -name zsh -o -name ksh -o -name mksh -o -name csh -o -name tcsh \) -print -quit)"
  [[ -z "$found" ]] || die "the image root $dir contains a shell: ${found#"$dir"}"
  for found in bin sbin usr/bin usr/sbin; do
    [[ ! -e "$dir/$found" ]] || die "the image root $dir has a /$found directory; programs do not belong in the base"
  done
}

# Prints the base root's path, assembling it first when no root with the key
# of the binaries' packages exists. Older roots are removed.
ensure_base() {
  local packages pinned key base tmp debs list
  # Captured first, so a failure stops the script (a process substitution's
  # status would be lost).
  list="$(base_packages "$@")"
  mapfile -t packages <<<"$list"
  list="$(pinned_packages "${packages[@]}")"
  mapfile -t pinned <<<"$list"
  key="$(base_key "${pinned[@]}")"
  base="$IMAGES_DIR/base-$key"
  if [[ ! -d "$base" ]]; then
    log "assembling the base root from ${pinned[*]}"
    list="$(download_debs "${pinned[@]}")"
    mapfile -t debs <<<"$list"
    tmp="$base.tmp.$$"
    rm -rf "$tmp"
    assemble_base "$tmp" "${debs[@]}"
    check_no_programs "$tmp"
    printf '%s\n' "${pinned[@]}" >"$IMAGES_DIR/base-$key.packages"
    mv "$tmp" "$base"
    find "$IMAGES_DIR" -maxdepth 1 -name 'base-*' ! -name "base-$key" ! -name "base-$key.packages" \
      -exec rm -rf {} +
    log "base root $base: $(human_size "$(tree_bytes "$base")")"
  fi
  printf '%s\n' "$base"
}

# --- staging and building ----------------------------------------------------

# Writes image NAME's root into DIR: the base plus the binary, or for the
# pause image catatonit alone (it is static).
stage_root() {
  local name="$1" dir="$2" base="${3:-}"
  mkdir -p "$dir"
  if [[ "$name" == "$PAUSE_NAME" ]]; then
    install -m 0755 "$(catatonit_binary)" "$dir/catatonit"
  else
    cp -a "$base/." "$dir/"
    install -m 0755 "$(binary_path "$name")" "$dir/usr/local/bin/$name"
  fi
}

catatonit_binary() {
  local path
  path="$(dpkg -L catatonit | grep -E '/bin/catatonit$' | head -n 1)"
  [[ -n "$path" && -x "$path" ]] || die "the catatonit package has no bin/catatonit"
  printf '%s\n' "$path"
}

# Runs the image's binary in its staged root as user 65532: it must find all
# of its shared libraries there.
smoke_check() {
  local name="$1" dir="$2" program
  case "$name" in
    "$PAUSE_NAME") program=(/catatonit -V) ;;
    *) program=("/usr/local/bin/$name" --version) ;;
  esac
  if ! chroot --userspec="$NONROOT_ID:$NONROOT_ID" "$dir" "${program[@]}" >>"$IMAGES_LOG" 2>&1; then
    tail -n 5 "$IMAGES_LOG" >&2
    die "${program[*]} does not run in the staged root of $name ($dir) as user $NONROOT_ID; see $IMAGES_LOG"
  fi
}

# The pause image's Dockerfile: catatonit as PID 1 reaping zombies (-P: pause
# mode, it only waits for signals).
pause_dockerfile() {
  cat <<'EOF'
FROM scratch
ARG VERSION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.source="https://github.com/openSUSE/catatonit" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.title="commerce-pause" \
      org.opencontainers.image.description="Debian's catatonit as the pod sandbox (pause) process" \
      org.opencontainers.image.licenses="GPL-3.0-or-later"
COPY . /
USER 65532:65532
ENTRYPOINT ["/catatonit", "-P"]
EOF
}

# vfs rather than overlay: a build is one COPY of a few tens of MB, so vfs's
# full copies cost nothing, and it mounts nothing (no overlay mounts left
# behind, works inside a container as well).
buildah_cmd() {
  buildah --root "$CACHE/buildah/storage" --runroot "$STATE/buildah/run" --storage-driver vfs "$@"
}

# The archives are the product; buildah's storage is a scratch area this
# script alone uses (under the images lock), emptied so it keeps no second
# copy of every image, nor the Dockerfile stages' intermediate images.
empty_storage() {
  buildah_cmd rm --all >>"$IMAGES_LOG" 2>&1 || true
  buildah_cmd rmi --all --force >>"$IMAGES_LOG" 2>&1 || true
}

# Build arguments (the labels) of image NAME, one `KEY=VALUE` a line. The
# revision and build time come last: they are left out of the input hash.
build_args() {
  case "$1" in
    "$PAUSE_NAME") printf 'VERSION=%s\n' "$(catatonit_version)" ;;
    *)
      printf 'BINARY=%s\n' "$1"
      printf 'VERSION=%s\n' "$(workspace_version)"
      printf 'SOURCE=%s\n' "$(workspace_field repository)"
      printf 'REVISION=%s\n' "$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
      ;;
  esac
  printf 'CREATED=%s\n' "$(date -u +%FT%TZ)"
}

# What an archive is made of: its reference, the staged root's files (the
# binary and the base), the Dockerfile and the labels except revision and
# build time, and the build recipe. Equal hashes mean an equal image.
inputs_hash() {
  local name="$1" dir="$2" dockerfile="$3"
  {
    image_ref "$name"
    (cd "$dir" && find . -printf '%p %y %m %U:%G %l\n' | LC_ALL=C sort)
    (cd "$dir" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    sha256sum <"$dockerfile"
    build_args "$name" | grep -Ev '^(REVISION|CREATED)='
    declare -f build_image buildah_cmd empty_storage
  } | sha256sum | cut -d' ' -f1
}

# Builds image NAME from its staged root DIR and writes its archive, unless
# the archive of identical inputs exists.
build_image() {
  local name="$1" dir="$2" dockerfile="$3" ref archive hash tmp args=() arg
  ref="$(image_ref "$name")"
  archive="$(image_archive "$name")"
  hash="$(inputs_hash "$name" "$dir" "$dockerfile")"
  if [[ -s "$archive" && "$(cat "$archive.inputs" 2>/dev/null)" == "$hash" ]]; then
    log "$ref is current ($archive)"
    return 0
  fi
  while IFS= read -r arg; do args+=(--build-arg "$arg"); done < <(build_args "$name")
  log "building $ref"
  mkdir -p "$CACHE/buildah/storage" "$STATE/buildah/run"
  empty_storage
  # --squash: one layer (the staged root), without the empty layers buildah
  # otherwise commits for the Dockerfile's label-only stages. No history: it
  # would name /bin/sh, which the image does not have.
  buildah_cmd build --squash --omit-history --identity-label=false --pull=false \
    --format oci -f "$dockerfile" "${args[@]}" -t "$ref" "$dir" \
    >>"$IMAGES_LOG" 2>&1 || { tail -n 20 "$IMAGES_LOG" >&2; die "buildah build of $ref failed; see $IMAGES_LOG"; }
  tmp="$archive.tmp.$$"
  rm -f "$tmp"
  # docker-archive keeps the tag in manifest.json's RepoTags, which
  # `ctr images import` turns into the image's name.
  buildah_cmd push "$ref" "docker-archive:$tmp:$ref" >>"$IMAGES_LOG" 2>&1 \
    || { rm -f "$tmp"; tail -n 20 "$IMAGES_LOG" >&2; die "buildah push of $ref to $tmp failed; see $IMAGES_LOG"; }
  mv "$tmp" "$archive"
  printf '%s\n' "$hash" >"$archive.inputs"
  empty_storage
  log "wrote $archive"
}

# Stages, smoke-checks and builds image NAME.
make_image() {
  local name="$1" base="$2" dir dockerfile
  dir="$STAGE_DIR/$name"
  rm -rf "$dir"
  stage_root "$name" "$dir" "$base"
  smoke_check "$name" "$dir"
  if [[ "$name" == "$PAUSE_NAME" ]]; then
    dockerfile="$STAGE_DIR/$name.Dockerfile"
    pause_dockerfile >"$dockerfile"
  else
    check_no_programs_but "$dir" "usr/local/bin/$name"
    dockerfile="$DOCKERFILE"
  fi
  build_image "$name" "$dir" "$dockerfile"
}

# check_no_programs for a staged root: its one binary is the exception.
check_no_programs_but() {
  local dir="$1" binary="$2" other
  check_no_programs "$dir"
  other="$(find "$dir/usr/local/bin" -mindepth 1 ! -path "$dir/$binary" -print -quit)"
  [[ -z "$other" ]] || die "the staged root $dir holds more than its binary: ${other#"$dir"}"
}

# Sum of the file sizes under DIR (what the image unpacks to).
tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
human_size() { numfmt --to=iec-i --suffix=B --format='%.1f' "$1"; }

print_sizes() {
  local name archive
  printf '%-48s %10s %10s  %s\n' IMAGE ARCHIVE UNPACKED FILE
  while read -r name; do
    archive="$(image_archive "$name")"
    printf '%-48s %10s %10s  %s\n' "$(image_ref "$name")" \
      "$(human_size "$(stat -c %s "$archive")")" "$(human_size "$(tree_bytes "$STAGE_DIR/$name")")" "$archive"
  done < <(all_images)
}

# --- verbs --------------------------------------------------------------------

do_build() {
  [[ $(id -u) -eq 0 ]] || die "images.sh build runs as root (apt-get, buildah's storage, chroot for the smoke check)"
  ensure_state_dirs
  check_chart_version
  ensure_tools build
  mkdir -p "$IMAGES_DIR" "$STAGE_DIR"
  printf '\n==== %s images.sh build\n' "$(date -u +%FT%TZ)" >>"$IMAGES_LOG"
  build_binaries "${BINARIES[@]}"
  local binaries=() name base
  for name in "${BINARIES[@]}"; do binaries+=("$(binary_path "$name")"); done
  base="$(ensure_base "${binaries[@]}")"
  while read -r name; do make_image "$name" "$base"; done < <(all_images)
  print_sizes >&2
}

do_stage() {
  local name="${1:-}" dir="${2:-}" base
  [[ -n "$name" && -n "$dir" ]] || usage
  [[ "$name" == "$PAUSE_NAME" ]] || is_binary "$name" \
    || die "unknown image '$name'; one of: $(all_images | tr '\n' ' ')"
  if [[ -e "$dir" && -n "$(ls -A "$dir")" ]]; then
    die "$dir is not empty; stage into a new or empty directory"
  fi
  ensure_state_dirs
  mkdir -p "$IMAGES_DIR"
  printf '\n==== %s images.sh stage %s %s\n' "$(date -u +%FT%TZ)" "$name" "$dir" >>"$IMAGES_LOG"
  if [[ "$name" == "$PAUSE_NAME" ]]; then
    ensure_tools build
  else
    check_chart_version
    ensure_tools
    # Both, as `build` does: cargo unifies dependency features over the
    # packages of one invocation, so building one alone would compile (and
    # leave in the target dir) a different binary than the image's.
    build_binaries "${BINARIES[@]}"
    base="$(ensure_base "$(binary_path "$name")")"
  fi
  stage_root "$name" "$dir" "${base:-}"
  log "staged $name in $dir: $(human_size "$(tree_bytes "$dir")")"
}

do_list() {
  local name
  while read -r name; do
    printf '%s %s\n' "$(image_ref "$name")" "$(image_archive "$name")"
  done < <(all_images)
}

do_status() {
  local name archive state
  while read -r name; do
    archive="$(image_archive "$name")"
    if [[ -s "$archive" ]]; then
      state="built ($(human_size "$(stat -c %s "$archive")"), $(date -u -r "$archive" +%FT%TZ))"
    else
      state="missing: run 'make images'"
    fi
    printf '%-48s %s  %s\n' "$(image_ref "$name")" "$archive" "$state"
  done < <(all_images)
}

usage() {
  printf 'usage: %s build | stage NAME DIR | list | status\n' "$(basename "$0")" >&2
  exit 2
}

case "${1:-}" in
  build) with_lock images do_build ;;
  stage) shift; with_lock images do_stage "$@" ;;
  list) do_list ;;
  status) do_status ;;
  *) usage ;;
esac
