#!/usr/bin/env bash
# Runs critest (the CRI validation suite of cri-tools v1.26) against `hull cri` or
# against Debian's containerd (the peer), both pulling critest's images from a local
# docker-registry filled with offline stand-ins (critest/images.py). Not part of CI: it
# needs Go (to build critest) and takes several minutes.
#
#   usage: agent/tools/critest.sh hull|containerd [critest flags...]
#   env:   CRITEST     critest binary (default /var/tmp/critest; built if missing from
#                      CRI_TOOLS_GIT, a git dir of kubernetes-sigs/cri-tools)
#          HULL        the hull binary (default $CARGO_TARGET_DIR/release/hull)
#          W           scratch dir (default /var/tmp/hull-critest-<runtime>)
#          REG_PORT    the registry's port on 127.0.0.1 (default 5071)
# Prints critest's summary last ("Ran N of M Specs ... P Passed | F Failed ...").
set -euo pipefail
rt=${1:?usage: critest.sh hull|containerd [critest flags...]}; shift
here=$(dirname "$(readlink -f "$0")")
CRITEST=${CRITEST:-/var/tmp/critest}
HULL=${HULL:-${CARGO_TARGET_DIR:-$here/../../target}/release/hull}
W=${W:-/var/tmp/hull-critest-$rt}
REG_PORT=${REG_PORT:-5071}
REG=127.0.0.1:$REG_PORT

# critest's images keep their upstream names (registry.k8s.io/..., gcr.io/...): both
# runtimes get the local registry as those hosts' mirror. (critest 1.26's
# -registry-prefix drops the tags and leaves some specs' names unprefixed.)
MIRRORED="registry.k8s.io gcr.io"
# Specs no offline registry can serve: the image pinned by an upstream digest.
SKIP='image with digest|digest reference'

pids=()
sock=$W/$rt.sock
cleanup() {
  # Pods critest left (failed BeforeEach) go through the runtime, so mounts, netns and
  # veths go with them; then the runtime and the registry stop by PID.
  if [ -S "$sock" ]; then
    crictl --runtime-endpoint "unix://$sock" --timeout 60s rmp -fa >/dev/null 2>&1 || true
  fi
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done; done
  # containerd's shims outlive it; ours name our socket in their command line.
  for d in /proc/[0-9]*; do
    if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -q "containerd-shim.*-address $W/containerd.sock"; then
      kill -TERM "${d#/proc/}" 2>/dev/null || true
    fi
  done
}
trap cleanup EXIT

if [ ! -x "$CRITEST" ]; then
  src=${CRI_TOOLS_GIT:?critest missing: set CRI_TOOLS_GIT to a cri-tools git dir (fetch github:kubernetes-sigs/cri-tools)}
  tmp=$(mktemp -d); git clone -q "$src" "$tmp/cri-tools"; git -C "$tmp/cri-tools" checkout -q v1.26.1
  (cd "$tmp/cri-tools" && PATH=/usr/lib/go-1.19/bin:$PATH GOFLAGS=-mod=vendor GOPROXY=off \
     go test -c -o "$CRITEST" ./cmd/critest)
  rm -rf "$tmp"
fi

if grep -q " $W/" /proc/self/mountinfo; then
  echo "mounts of an earlier run are still under $W: remove its pods first" >&2; exit 1
fi
rm -rf "$W"; mkdir -p "$W/bin"
for b in webserver nonewprivs pause; do gcc -static -O2 -o "$W/bin/$b" "$here/critest/$b.c"; done
python3 "$here/critest/images.py" "$W/images" "$W/bin" > "$W/images.list"

mkdir -p "$W/registry"
cat > "$W/registry.yml" <<Y
version: 0.1
storage: {filesystem: {rootdirectory: $W/registry}}
http: {addr: $REG}
log: {level: error}
Y
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.2; done
while read -r layout tag path; do
  skopeo copy -q --dest-tls-verify=false "oci:$layout:$tag" "docker://$REG/$path" >/dev/null
done < "$W/images.list"

case $rt in
hull)
  mkdir -p "$W/hull/net.d"
  cat > "$W/hull/net.d/10-critest.conflist" <<J
{"cniVersion": "1.0.0", "name": "critest", "plugins": [{"type": "hull-bridge", "bridge": "hullcrt0",
 "isGateway": true, "ipMasq": true, "hairpinMode": true, "capabilities": {"portMappings": true},
 "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.71.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}],
          "dataDir": "$W/hull/ipam"}}]}
J
  mirrors=(); for h in $MIRRORED; do mirrors+=(--registry-mirror "$h=http://$REG"); done
  "$HULL" cri --data-dir "$W/hull" --socket "$sock" --cni-conf-dir "$W/hull/net.d" "${mirrors[@]}" \
    >"$W/hull.log" 2>&1 & pids+=($!)
  ;;
containerd)
  mkdir -p "$W/containerd/net.d"
  cat > "$W/containerd/net.d/10-critest.conflist" <<J
{"cniVersion": "1.0.0", "name": "critest", "plugins": [
 {"type": "bridge", "bridge": "ctrcrt0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
  "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.72.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}],
           "dataDir": "$W/containerd/ipam"}},
 {"type": "portmap", "capabilities": {"portMappings": true}}]}
J
  cat > "$W/containerd/config.toml" <<T
version = 2
root = "$W/containerd/root"
state = "$W/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$sock.debug"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$REG/hull-bench/pause:1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/containerd/net.d"
$(for h in $REG $MIRRORED; do printf '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."%s"]\n    endpoint = ["http://%s"]\n' "$h" "$REG"; done)
[plugins."io.containerd.internal.v1.opt"]
  path = "$W/containerd/opt"
T
  containerd --config "$W/containerd/config.toml" >"$W/containerd.log" 2>&1 & pids+=($!)
  ;;
*) echo "unknown runtime $rt (hull or containerd)" >&2; exit 2 ;;
esac
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.2; done
[ -S "$sock" ] || { echo "$rt did not open $sock" >&2; tail -5 "$W/$rt.log" >&2; exit 1; }

set +e
"$CRITEST" -runtime-endpoint "unix://$sock" -image-endpoint "unix://$sock" \
  -ginkgo.skip "$SKIP" -ginkgo.noColor -ginkgo.succinct "$@" \
  >"$W/critest.out" 2>&1
rc=$?
set -e
grep -E '^\[Fail\]|^•? ?\[FAIL\]' "$W/critest.out" | sort | uniq || true
grep -E '^Ran [0-9]+ of|Passed \|' "$W/critest.out" || tail -5 "$W/critest.out"
exit $rc
