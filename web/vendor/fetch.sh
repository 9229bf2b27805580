#!/usr/bin/env bash
# Re-fetches the web client's vendored libraries from the npm registry by the exact versions in
# vendor.lock, checks each tarball against its recorded sha512 integrity, and then checks the
# files here against what the tarballs hold (and against SHA256SUMS).
#   bash web/vendor/fetch.sh           verify only: exit 1 if any vendored file differs
#   bash web/vendor/fetch.sh --write   replace the vendored files and rewrite SHA256SUMS
# Needs curl, tar, openssl, sha256sum. REGISTRY overrides https://registry.npmjs.org.
set -euo pipefail
cd "$(dirname "$0")"
registry="${REGISTRY:-https://registry.npmjs.org}"
write=0
[ "${1:-}" = "--write" ] && write=1
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
status=0
while read -r pkg version integrity inner name; do
  case "$pkg" in ''|'#'*) continue ;; esac
  tarball="$tmp/$pkg-$version.tgz"
  if [ ! -f "$tarball" ]; then
    curl -fsSL --retry 2 -o "$tarball" "$registry/$pkg/-/${pkg##*/}-$version.tgz"
    got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
    if [ "$got" != "$integrity" ]; then
      echo "INTEGRITY MISMATCH: $pkg@$version: expected $integrity, got $got" >&2
      exit 1
    fi
    mkdir -p "$tmp/$pkg-$version"
    tar xzf "$tarball" -C "$tmp/$pkg-$version"
  fi
  fetched="$tmp/$pkg-$version/package/$inner"
  if [ "$write" = 1 ]; then
    cp "$fetched" "$name"
    echo "wrote $name from $pkg@$version/$inner"
  elif ! cmp -s "$fetched" "$name"; then
    echo "DIFFERS: $name is not $pkg@$version/$inner" >&2
    status=1
  else
    echo "ok $name = $pkg@$version/$inner"
  fi
done < vendor.lock
if [ "$write" = 1 ]; then
  sha256sum $(awk '!/^#/ && NF { print $5 }' vendor.lock) > SHA256SUMS
fi
sha256sum --quiet -c SHA256SUMS
exit "$status"
