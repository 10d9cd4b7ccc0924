# tgskip.sh — source it; `tg_skip WHAT REASON` records a skip (a third state:
# scripts/test.sh counts the lines of $TG_SKIP_LOG, see tests/lib/tgskip.py).
tg_skip() {
    echo "SKIPPED $1: $2" >&2
    if [ -n "${TG_SKIP_LOG:-}" ]; then echo "$1: $2" >> "$TG_SKIP_LOG"; fi
}
