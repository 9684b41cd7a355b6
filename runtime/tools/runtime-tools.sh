#!/usr/bin/env bash
# The OCI runtime-tools validation suite (github.com/opencontainers/runtime-tools,
# validation/*.t) against one or more runtimes, side by side. Not part of CI: it needs
# the suite's sources and takes minutes. As root:
#
#   runtime/tools/runtime-tools.sh build SRC TAPGO   # once: SRC = runtime-tools checkout
#                                                    # (commit 0105384, the one Debian
#                                                    # packages), TAPGO = mndrix/tap-go
#   runtime/tools/runtime-tools.sh run RUNTIME...    # e.g. target/release/hull-runtime runc
#
# Building is offline: Go and every Go dependency come from Debian (golang-go,
# golang-github-opencontainers-runtime-tools-dev and what it pulls in,
# golang-github-google-uuid-dev) in GOPATH mode; only tap-go (one file) is not packaged.
# A test file passes when it exits 0 with no "not ok" line; its TAP counts are summed.
set -u
W=${RT_TOOLS_WORK:-/var/tmp/hull-runtime-tools}
G=$W/gopath
T=$G/src/github.com/opencontainers/runtime-tools
export GOPATH=$G:/usr/share/gocode GO111MODULE=off CGO_ENABLED=0

case "${1:-}" in
build)
    src=$2 tapgo=$3
    mkdir -p "$G/src/github.com/opencontainers" "$G/src/github.com/mndrix"
    rm -rf "$T" "$G/src/github.com/mndrix/tap-go"
    cp -a "$src" "$T" && cp -a "$tapgo" "$G/src/github.com/mndrix/tap-go" || exit 1
    cd "$T" || exit 1
    go build -tags "netgo osusergo" -ldflags "-extldflags -static" -o runtimetest ./cmd/runtimetest || exit 1
    for f in $(find ./validation/ -name '*.go' | grep -v util); do
        go build -o "${f%.go}.t" "$f" || echo "BUILD FAIL $f"
    done
    ;;
run)
    shift
    cd "$T" || { echo "build first: $0 build SRC TAPGO" >&2; exit 1; }
    tests=$(find ./validation/ -name '*.t' | sort)
    for rt in "$@"; do
        bin=$(command -v "$rt" || echo "$rt")
        name=$(basename "$bin")
        files=0 passed=0 ok=0 notok=0 failed=()
        log=$W/$name.log
        : >"$log"
        for t in $tests; do
            files=$((files + 1))
            out=$(RUNTIME=$bin timeout 120 "$t" 2>&1)
            rc=$?
            printf '### %s (exit %s)\n%s\n' "$t" "$rc" "$out" >>"$log"
            o=$(grep -c '^ok' <<<"$out")
            n=$(grep -c '^not ok' <<<"$out")
            ok=$((ok + o)) notok=$((notok + n))
            if [ "$rc" = 0 ] && [ "$n" = 0 ]; then
                passed=$((passed + 1))
            else
                failed+=("$(basename "$(dirname "$t")")")
            fi
        done
        echo "$name: $passed/$files test files pass; TAP assertions ok $ok, not ok $notok (log $log)"
        echo "  failing: ${failed[*]:-none}"
    done
    ;;
*)
    sed -n '2,16p' "$0"
    exit 2
    ;;
esac
