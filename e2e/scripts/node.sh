#!/usr/bin/env bash
# A real Kubernetes node beside the control plane of k8s.sh: pods here are
# real runc containers.
#
#   node.sh install|up|down|status|import
#
# install  apt-installs runc, the CNI plugins, iptables and friends, and
#          builds containerd, crictl, CoreDNS, Traefik, kube-router and
#          metrics-server from
#          the Go modules under e2e/node/ (kubelet and kube-proxy come from
#          e2e/k8s/go.mod, built by k8s.sh). Each module's binaries are cached under
#          $COMMERCE_NODE_CACHE_DIR/<module>-<hash of its go.mod and go.sum>.
# up       creates the pod bridge and the firewall rules, starts containerd,
#          the kubelet, kube-proxy, CoreDNS, Traefik, kube-router,
#          metrics-server and the forwarders that
#          let pods reach the loopback infrastructure, registers the in-cluster
#          objects that point at it, imports the project's images and waits
#          until the node is Ready.
# down     stops all of that (pods first, through the CRI), then restores
#          what the node changed on the host: iptables chains, the bridge,
#          mounts, cgroups, ip_forward and the bridge netfilter setting.
# import   imports the images of images.sh into containerd (up does it too).
#
# What is where (see e2e/infra.env for the numbers):
#   - pods live on the bridge $COMMERCE_NODE_BRIDGE, $COMMERCE_POD_CIDR; its
#     gateway $COMMERCE_NODE_IP is the node's address, the kubelet's
#     listener and the pods' DNS server (CoreDNS, a host process);
#   - pods reach the API server, Postgres, Redis and Kafka through forwarders
#     (socat) bound to $COMMERCE_NODE_IP, behind in-cluster Services:
#     kubernetes.default, and postgres, redis and kafka in commerce-infra.
#     The servers themselves stay on loopback;
#   - Traefik, the Ingress controller, is a host process too; its web
#     entrypoint is 127.0.0.1:$COMMERCE_INGRESS_PORT;
#   - kube-router's firewall (a host process) enforces NetworkPolicies;
#   - metrics-server (a host process on $COMMERCE_NODE_IP) serves
#     metrics.k8s.io to the HorizontalPodAutoscalers, through the API
#     server's aggregator; it scrapes only this node's kubelet (the kwok
#     nodes' addresses are fake and must never be dialled);
#   - nothing leaves the machine: the pod network has no masquerading,
#     FORWARD drops everything between the pods and any other network,
#     CoreDNS answers only cluster names, the kubelet reads no resolv.conf,
#     and images are never pulled (containerd's registry hosts all point at
#     a closed loopback port).
COMPONENT=node
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE_SRC="$E2E_DIR/node"
K8S_BIN="$COMMERCE_K8S_BIN_DIR"
K8S_STATE="$STATE/k8s"
PKI="$K8S_STATE/pki"
NODE_STATE="$STATE/node"
CTRD_STATE="$STATE/containerd"
KUBELET_STATE="$STATE/kubelet"
CNI_CONF_DIR="$NODE_STATE/cni/net.d"
CNI_BIN_DIR=/usr/lib/cni
SOCK="$COMMERCE_CONTAINERD_SOCKET"
NODE="$COMMERCE_NODE_NAME"
BRIDGE="$COMMERCE_NODE_BRIDGE"
NODE_IP="$COMMERCE_NODE_IP"
POD_CIDR="$COMMERCE_POD_CIDR"
SVC_CIDR="$COMMERCE_SERVICE_CIDR"
# Our own iptables chains; everything the kubelet and kube-proxy add is
# named KUBE-*.
FW_FORWARD=COMMERCE-NODE-FORWARD
FW_OUTPUT=COMMERCE-NODE-OUTPUT

# The Go modules under e2e/node, and the binaries each one builds.
MODULES=(containerd crictl coredns traefik kube-router metrics-server)
declare -A MODULE_BINARIES=(
  [containerd]="containerd containerd-shim-runc-v2 ctr"
  [crictl]="crictl"
  [coredns]="coredns"
  [traefik]="traefik"
  [kube-router]="kube-router"
  [metrics-server]="metrics-server"
)
# CoreDNS and containerd must be static: the shim is exec'd inside mount
# namespaces, and nothing here needs cgo.
declare -A MODULE_CGO=([containerd]=0 [crictl]=0 [coredns]=0 [traefik]=0 [kube-router]=0 [metrics-server]=0)

# Markers that identify our processes in /proc/<pid>/cmdline (see lib.sh).
MARK_CTRD="--config=$CTRD_STATE/config.toml"
MARK_KUBELET="--config=$KUBELET_STATE/config.yaml"
MARK_PROXY="--config=$NODE_STATE/kube-proxy.yaml"
MARK_COREDNS="-conf=$NODE_STATE/Corefile"
MARK_TRAEFIK="--entryPoints.web.address=127.0.0.1:$COMMERCE_INGRESS_PORT"
MARK_ROUTER="--run-firewall=true"
MARK_METRICS="--secure-port=$COMMERCE_METRICS_SERVER_PORT"

# Loopback servers the pods reach through a forwarder on the node address:
# name, port on the node address, port on loopback.
FORWARDS=(
  "apiserver $COMMERCE_KUBE_APISERVER_PORT $COMMERCE_KUBE_APISERVER_PORT"
  "postgres $COMMERCE_POSTGRES_PORT $COMMERCE_POSTGRES_PORT"
  "redis $COMMERCE_REDIS_PORT $COMMERCE_REDIS_PORT"
  "kafka $COMMERCE_KAFKA_POD_PORT $COMMERCE_KAFKA_POD_PORT"
)

kubectl_() { "$K8S_BIN/kubectl" --kubeconfig "$COMMERCE_KUBECONFIG" --request-timeout=10s "$@"; }
ctr_() { "$(module_bin containerd)/ctr" --address "$SOCK" --namespace k8s.io "$@"; }
crictl_() { "$(module_bin crictl)/crictl" --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" --timeout 20s "$@"; }

# --- install ---------------------------------------------------------------

module_version() {
  (cd "$NODE_SRC/$1" && go list -m -f '{{.Version}}' "$2")
}

# Version stamps the upstream release builds set with -X, so that the
# binaries do not report "dev" (the kubelet checks containerd's version).
module_ldflags() {
  local flags="-s -w" v
  case "$1" in
    containerd)
      v="$(module_version containerd github.com/containerd/containerd/v2)"
      flags+=" -X github.com/containerd/containerd/v2/version.Version=$v -X github.com/containerd/containerd/v2/version.Revision=release"
      ;;
    crictl)
      v="$(module_version crictl sigs.k8s.io/cri-tools)"
      flags+=" -X sigs.k8s.io/cri-tools/pkg/version.Version=${v#v}"
      ;;
    kube-router)
      v="$(module_version kube-router github.com/cloudnativelabs/kube-router/v2)"
      flags+=" -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$v"
      ;;
    traefik)
      v="$(module_version traefik github.com/traefik/traefik/v3)"
      flags+=" -X github.com/traefik/traefik/v3/pkg/version.Version=$v -X github.com/traefik/traefik/v3/pkg/version.Codename=release"
      ;;
    metrics-server)
      # Its release build stamps client-go's version package.
      v="$(module_version metrics-server sigs.k8s.io/metrics-server)"
      flags+=" -X k8s.io/client-go/pkg/version.gitVersion=$v"
      ;;
  esac
  printf '%s\n' "$flags"
}

module_key() {
  { cat "$NODE_SRC/$1/go.mod" "$NODE_SRC/$1/go.sum"; printf 'CGO_ENABLED=%s\n' "${MODULE_CGO[$1]}"; } \
    | sha256sum | cut -c1-16
}

module_bin() {
  printf '%s/%s-%s/bin\n' "$COMMERCE_NODE_CACHE_DIR" "$1" "$(module_key "$1")"
}

build_module() {
  local m="$1" bin tmp log start b
  bin="$(module_bin "$m")"
  local missing=0
  for b in ${MODULE_BINARIES[$m]}; do
    [[ -x "$bin/$b" ]] || missing=1
  done
  ((missing)) || return 0
  log="$(log_file "node-build-$m")"
  tmp="$bin.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  start=$SECONDS
  log "building $m (${MODULE_BINARIES[$m]}) from e2e/node/$m/go.mod; log: $log"
  if ! (cd "$NODE_SRC/$m" && CGO_ENABLED="${MODULE_CGO[$m]}" go build -mod=readonly -trimpath \
    -ldflags "$(module_ldflags "$m")" -o "$tmp/" tool) >>"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$log" >&2
    die "go build of e2e/node/$m failed; see $log"
  fi
  for b in ${MODULE_BINARIES[$m]}; do
    [[ -x "$tmp/$b" ]] || die "the build of e2e/node/$m produced no $b"
  done
  rm -rf "$bin"
  mv "$tmp" "$bin"
  log "built $m in $((SECONDS - start))s into $bin"
}

do_install() {
  ensure_state_dirs
  local pkgs=() p
  for p in runc containernetworking-plugins iptables conntrack socat ipset; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("$p")
  done
  ((${#pkgs[@]} == 0)) || apt_install "${pkgs[@]}"
  command -v go >/dev/null || die "Go is needed to build the node's binaries"
  # kubelet and kube-proxy are part of the control plane's module graph.
  bash "$E2E_DIR/scripts/k8s.sh" install
  local m
  for m in "${MODULES[@]}"; do
    build_module "$m"
  done
}

# --- host network -----------------------------------------------------------

# Records a sysctl's value before the node first changes it, so that down
# puts back exactly what was there.
set_sysctl() {
  local key="$1" value="$2" file="/proc/sys/${1//.//}" saved="$NODE_STATE/sysctl.$1"
  [[ -e "$file" ]] || die "$file does not exist (kernel module missing?)"
  [[ -s "$saved" ]] || cat "$file" >"$saved"
  [[ "$(cat "$file")" == "$value" ]] || echo "$value" >"$file"
}

restore_sysctls() {
  local saved key
  for saved in "$NODE_STATE"/sysctl.*; do
    [[ -e "$saved" ]] || continue
    key="${saved##*/sysctl.}"
    cat "$saved" >"/proc/sys/${key//.//}" 2>/dev/null || log "could not restore $key"
    rm -f "$saved"
  done
}

setup_network() {
  mkdir -p "$NODE_STATE"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE ($NODE_IP on $POD_CIDR)"
    ip link add "$BRIDGE" type bridge
  fi
  local addresses
  addresses="$(ip -o -4 addr show dev "$BRIDGE")"
  grep -qF " $NODE_IP/" <<<"$addresses" || ip addr add "$NODE_IP/${POD_CIDR#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Pod-to-Service traffic between pods of one bridge must pass iptables
  # (kube-proxy's DNAT replies), and the node routes between pods and itself.
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] || modprobe br_netfilter 2>/dev/null || true
  set_sysctl net.bridge.bridge-nf-call-iptables 1
  set_sysctl net.ipv4.ip_forward 1
  setup_firewall
}

# FORWARD: the pod network talks to itself only. OUTPUT: a ClusterIP that
# kube-proxy did not translate (no endpoints yet, or kube-proxy stopped) is
# refused here instead of following the default route off the machine.
setup_firewall() {
  iptables -N "$FW_FORWARD" 2>/dev/null || iptables -F "$FW_FORWARD"
  iptables -A "$FW_FORWARD" -s "$POD_CIDR" ! -d "$POD_CIDR" -j DROP
  iptables -A "$FW_FORWARD" ! -s "$POD_CIDR" -d "$POD_CIDR" -j DROP
  iptables -C FORWARD -j "$FW_FORWARD" 2>/dev/null || iptables -I FORWARD 1 -j "$FW_FORWARD"
  iptables -N "$FW_OUTPUT" 2>/dev/null || iptables -F "$FW_OUTPUT"
  iptables -A "$FW_OUTPUT" -d "$SVC_CIDR" -j REJECT
  iptables -C OUTPUT -j "$FW_OUTPUT" 2>/dev/null || iptables -A OUTPUT -j "$FW_OUTPUT"
}

# Removes a chain and every jump to it from the built-in chains of TABLE.
drop_chain() {
  local cmd="$1" table="$2" chain="$3" rule
  "$cmd" -t "$table" -S "$chain" >/dev/null 2>&1 || return 0
  while read -r rule; do
    # The rule as -S prints it, quoted for a shell (kube-router's comments
    # hold spaces): eval splits it back into the words iptables wants.
    eval "\"\$cmd\" -t \"\$table\" ${rule/-A /-D }" 2>/dev/null || true
  done < <("$cmd" -t "$table" -S | grep -E -- "^-A [A-Z-]+ .*-j $chain( |$)" || true)
  "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
}

# The chains the kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY, ...) and
# kube-proxy (KUBE-SERVICES, ...) leave behind, and ours. KUBE-FIREWALL
# matters most: it drops packets to 127.0.0.0/8 whose source is not
# loopback, long after the node is gone.
cleanup_iptables() {
  local cmd table chain chains
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle raw; do
      chains="$("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^COMMERCE-NODE-/) {print $2}')"
      for chain in $chains; do drop_chain "$cmd" "$table" "$chain"; done
      for chain in $chains; do "$cmd" -t "$table" -X "$chain" 2>/dev/null || true; done
    done
  done
}

# kube-router's ipsets (KUBE-SRC-*, KUBE-DST-*, ...), free once the chains
# that used them are gone.
cleanup_ipsets() {
  command -v ipset >/dev/null || return 0
  local set
  for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' || true); do
    ipset destroy "$set" 2>/dev/null || log "could not destroy ipset $set"
  done
}

# --- configuration ------------------------------------------------------------

pause_image() {
  bash "$E2E_DIR/scripts/images.sh" list 2>/dev/null | awk '$1 ~ /commerce-pause:/ {print $1; exit}'
}

# Writes stdin to FILE unless FILE already holds exactly that: kube-proxy
# exits when its configuration file changes, even to the same content.
write_if_changed() {
  local file="$1" tmp="$1.tmp.$$"
  cat >"$tmp"
  if cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$file"
  fi
}

write_configs() {
  local pause
  pause="$(pause_image)"
  [[ -n "$pause" ]] || die "images.sh names no pause image"
  mkdir -p "$CTRD_STATE/root" "$CTRD_STATE/state" "$(dirname "$SOCK")" "$CTRD_STATE/certs.d/_default" \
    "$CNI_CONF_DIR" "$NODE_STATE/cni/ipam" "$KUBELET_STATE/root"
  # Every registry resolves to a closed loopback port: a missing image fails
  # at once ("connection refused") instead of being fetched from outside.
  write_if_changed "$CTRD_STATE/certs.d/_default/hosts.toml" <<EOF
server = "http://127.0.0.1:9"
[host."http://127.0.0.1:9"]
  capabilities = ["pull", "resolve"]
EOF
  write_if_changed "$CTRD_STATE/config.toml" <<EOF
# Written by e2e/scripts/node.sh on every start; edit the script, not this.
version = 3
root = "$CTRD_STATE/root"
state = "$CTRD_STATE/state"

[grpc]
  address = "$SOCK"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$CTRD_STATE/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE, so runc cannot lower a container's
  # oom_score_adj below ours (every pod failed with "can't get final
  # child's PID from pipe: EOF"); keep the kubelet's values at least ours.
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir, so down finds them all.
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$CNI_BIN_DIR"]
    conf_dir = "$CNI_CONF_DIR"
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    # A map entry given here replaces the default one whole: name the shim.
    runtime_type = "io.containerd.runc.v2"
    # The pause image is imported by node.sh, never pulled.
    disable_pause_image_pull = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = "$(command -v runc)"
    SystemdCgroup = false

[plugins.'io.containerd.transfer.v1.local']
  config_path = "$CTRD_STATE/certs.d"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
EOF
  # No default route in a pod: it reaches the pod network, the node and
  # the Service range, and gets "network unreachable" for anything else.
  write_if_changed "$CNI_CONF_DIR/10-commerce.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "commerce-pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "$SVC_CIDR", "gw": "$NODE_IP" }],
        "dataDir": "$NODE_STATE/cni/ipam"
      }
    }
  ]
}
EOF
  write_if_changed "$KUBELET_STATE/config.yaml" <<EOF
# Written by e2e/scripts/node.sh on every start; edit the script, not this.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $COMMERCE_KUBELET_HEALTHZ_PORT
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $PKI/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$SOCK
# This machine has cgroup v1 and no systemd as PID 1; kubelet >= 1.35
# refuses cgroup v1 unless told otherwise.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
# No resolv.conf of the host: a pod resolves cluster names only, at CoreDNS
# on the node address.
resolvConf: ""
clusterDNS:
  - $NODE_IP
clusterDomain: cluster.local
# Images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
# The node shares the host's disk with build caches. A percentage of a large
# disk (2% of 252 GiB is 5 GiB) put the node under disk pressure with
# gigabytes still free, and under disk pressure the kubelet deletes every
# image no running container uses: the imported images, which it is told
# never to pull, were gone before the tests' pods started. Evict only when
# the disk is really full.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 512Mi
  imagefs.available: 512Mi
maxPods: 110
# Mounted ConfigMaps (the gateway's rate-limit rules) are refreshed on the
# kubelet's pod sync: every 10 s here instead of the default minute, so that
# a RateLimitPolicy takes effect within seconds.
syncFrequency: 10s
EOF
  write_if_changed "$NODE_STATE/kube-proxy.yaml" <<EOF
# Written by e2e/scripts/node.sh on every start; edit the script, not this.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $K8S_STATE/kube-proxy.kubeconfig
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$COMMERCE_KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$COMMERCE_KUBE_PROXY_METRICS_PORT
# NodePorts on the node address only, never on 127.0.0.1 or the machine's
# real interfaces.
nodePortAddresses:
  - $NODE_IP/32
iptables:
  localhostNodePorts: false
# Leave the host's conntrack settings as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  # Cluster names from the API; every other name is NXDOMAIN, so no query
  # ever leaves the machine.
  write_if_changed "$NODE_STATE/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    health 127.0.0.1:$COMMERCE_COREDNS_HEALTH_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $K8S_STATE/node-addons.kubeconfig commerce-stack
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
}
.:53 {
    bind $NODE_IP
    errors
    template ANY ANY {
        rcode NXDOMAIN
    }
}
EOF
}

# An EndpointSlice that sends Service SERVICE of NAMESPACE to PORT on the
# node address: host_endpoints NAME NAMESPACE SERVICE PORT_NAME PORT
host_endpoints() {
  cat <<EOF
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: $1
  namespace: $2
  labels:
    kubernetes.io/service-name: $3
    endpointslice.kubernetes.io/managed-by: node.commerce-stack.dev
addressType: IPv4
endpoints:
  - addresses: ["$NODE_IP"]
    conditions: {ready: true}
ports:
  - name: $4
    port: $5
    protocol: TCP
EOF
}

# In-cluster objects that connect pods to what runs on the host: the
# kubernetes Service's endpoints (the API server runs with
# --endpoint-reconciler-type=none and binds loopback), the infrastructure
# Services, and the Ingress class of Traefik.
cluster_objects() {
  host_endpoints kubernetes default kubernetes https "$COMMERCE_KUBE_APISERVER_PORT"
  cat <<EOF
---
apiVersion: v1
kind: Namespace
metadata:
  name: commerce-infra
  labels:
    app.kubernetes.io/part-of: commerce-stack-e2e
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: traefik
spec:
  controller: traefik.io/ingress-controller
EOF
  metrics_api_objects
  local entry name port
  for entry in "postgres $COMMERCE_POSTGRES_PORT" "redis $COMMERCE_REDIS_PORT" "kafka $COMMERCE_KAFKA_POD_PORT"; do
    read -r name port <<<"$entry"
    cat <<EOF
---
apiVersion: v1
kind: Service
metadata:
  name: $name
  namespace: commerce-infra
spec:
  ports:
    - name: tcp
      port: $port
      targetPort: $port
      protocol: TCP
EOF
    host_endpoints "$name-host" commerce-infra "$name" tcp "$port"
  done
}

# metrics.k8s.io, served by the metrics-server host process: an APIService
# whose Service has one endpoint, the node address. The API server dials
# that endpoint itself (--enable-aggregator-routing) and checks the serving
# certificate against the cluster CA that k8s.sh signed it with.
metrics_api_objects() {
  cat <<EOF
---
apiVersion: v1
kind: Service
metadata:
  name: metrics-server
  namespace: kube-system
spec:
  ports:
    - name: https
      port: 443
      targetPort: $COMMERCE_METRICS_SERVER_PORT
      protocol: TCP
EOF
  host_endpoints metrics-server-host kube-system metrics-server https "$COMMERCE_METRICS_SERVER_PORT"
  cat <<EOF
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1beta1.metrics.k8s.io
spec:
  group: metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  service:
    name: metrics-server
    namespace: kube-system
    port: 443
  caBundle: $(base64 -w0 "$PKI/ca.crt")
EOF
}

# --- processes ---------------------------------------------------------------

containerd_ready() { "$(module_bin containerd)/ctr" --address "$SOCK" version >/dev/null 2>&1; }
kubelet_healthy() { [[ "$(curl -fsS --max-time 2 "http://127.0.0.1:$COMMERCE_KUBELET_HEALTHZ_PORT/healthz")" == ok ]]; }
proxy_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$COMMERCE_KUBE_PROXY_HEALTHZ_PORT/healthz" >/dev/null; }
coredns_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$COMMERCE_COREDNS_HEALTH_PORT/health" >/dev/null; }
# kube-router has no loopback-only health listener (its port binds every
# address, so it is off); its chain in FORWARD shows the firewall is on.
router_ready() { iptables -S KUBE-ROUTER-FORWARD >/dev/null 2>&1; }
traefik_healthy() { curl -fsS --max-time 2 "http://127.0.0.1:$COMMERCE_TRAEFIK_PING_PORT/ping" >/dev/null; }
# Ready once it has scraped the real node's kubelet: the node's metrics are
# served through the aggregated API (which also proves the APIService and
# its certificate work). Not its /readyz: metrics-server 0.9 is ready only
# once it also holds pod metrics, and a fresh node runs no pod yet, so on a
# new machine it never was.
metrics_ready() {
  kubectl_ get --raw "/apis/metrics.k8s.io/v1beta1/nodes/$NODE" >/dev/null 2>&1
}
node_ready() {
  [[ "$(kubectl_ get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
forward_marker() { printf 'TCP-LISTEN:%s,bind=%s,' "$1" "$NODE_IP"; }

start_if_absent() {
  local name="$1" marker="$2"
  shift 2
  running_pid "$name" "$marker" >/dev/null && return 0
  log "starting $name"
  start_detached "$name" "$@"
}

start_containerd() {
  # The shim and runc are found on PATH.
  start_if_absent containerd "$MARK_CTRD" \
    env PATH="$(module_bin containerd):$PATH" "$(module_bin containerd)/containerd" "$MARK_CTRD"
  wait_ready containerd "$MARK_CTRD" 60 "its socket $SOCK" containerd_ready
}

start_kubelet() {
  start_if_absent kubelet "$MARK_KUBELET" \
    "$K8S_BIN/kubelet" "$MARK_KUBELET" \
    --kubeconfig="$K8S_STATE/kubelet.kubeconfig" \
    --root-dir="$KUBELET_STATE/root" \
    --cert-dir="$KUBELET_STATE/pki" \
    --hostname-override="$NODE" \
    --node-ip="$NODE_IP" \
    --node-labels=commerce-stack.dev/node=real
  wait_ready kubelet "$MARK_KUBELET" 60 "/healthz on 127.0.0.1:$COMMERCE_KUBELET_HEALTHZ_PORT" kubelet_healthy
}

start_forwarders() {
  local entry name listen target
  for entry in "${FORWARDS[@]}"; do
    read -r name listen target <<<"$entry"
    start_if_absent "forward-$name" "$(forward_marker "$listen")" \
      socat "$(forward_marker "$listen")reuseaddr,fork" "TCP:127.0.0.1:$target"
  done
}

start_addons() {
  start_if_absent kube-proxy "$MARK_PROXY" "$K8S_BIN/kube-proxy" "$MARK_PROXY"
  start_if_absent coredns "$MARK_COREDNS" "$(module_bin coredns)/coredns" "$MARK_COREDNS"
  # Traefik finds the API through KUBECONFIG; it never checks for new
  # versions or reports usage (both would leave the machine).
  start_if_absent traefik "$MARK_TRAEFIK" \
    env KUBECONFIG="$K8S_STATE/node-addons.kubeconfig" "$(module_bin traefik)/traefik" \
    "$MARK_TRAEFIK" \
    --entryPoints.traefik.address="127.0.0.1:$COMMERCE_TRAEFIK_PING_PORT" \
    --ping=true --ping.entryPoint=traefik \
    --providers.kubernetesingress=true \
    --providers.kubernetesingress.ingressendpoint.ip=127.0.0.1 \
    --global.checkNewVersion=false --global.sendAnonymousUsage=false \
    --log.level=INFO
  # NetworkPolicy enforcement for the test cluster: kube-router with only its
  # firewall (no routing, no service proxy, no CNI). v2.1.0 has reported
  # security issues: test clusters only.
  start_if_absent kube-router "$MARK_ROUTER" \
    "$(module_bin kube-router)/kube-router" "$MARK_ROUTER" \
    --run-router=false --run-service-proxy=false --enable-cni=false \
    --health-port=0 --metrics-port=0 \
    --kubeconfig="$K8S_STATE/node-addons.kubeconfig" \
    --hostname-override="$NODE"
  wait_ready kube-proxy "$MARK_PROXY" 60 "/healthz on 127.0.0.1:$COMMERCE_KUBE_PROXY_HEALTHZ_PORT" proxy_healthy
  wait_ready coredns "$MARK_COREDNS" 60 "/health on 127.0.0.1:$COMMERCE_COREDNS_HEALTH_PORT" coredns_healthy
  wait_ready traefik "$MARK_TRAEFIK" 60 "/ping on 127.0.0.1:$COMMERCE_TRAEFIK_PING_PORT" traefik_healthy
  wait_ready kube-router "$MARK_ROUTER" 60 "its KUBE-ROUTER-FORWARD chain" router_ready
}

# metrics-server for the HorizontalPodAutoscalers. It scrapes the kubelet
# every 15 s (the kubelet's serving certificate is checked against the
# cluster CA), and only the real node: kwok's nodes carry addresses that
# would route off the machine.
start_metrics_server() {
  start_if_absent metrics-server "$MARK_METRICS" \
    "$(module_bin metrics-server)/metrics-server" "$MARK_METRICS" \
    --bind-address="$NODE_IP" \
    --tls-cert-file="$PKI/metrics-server.crt" --tls-private-key-file="$PKI/metrics-server.key" \
    --kubeconfig="$K8S_STATE/node-addons.kubeconfig" \
    --authentication-kubeconfig="$K8S_STATE/node-addons.kubeconfig" \
    --authorization-kubeconfig="$K8S_STATE/node-addons.kubeconfig" \
    --node-selector=commerce-stack.dev/node=real \
    --kubelet-preferred-address-types=InternalIP \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --metric-resolution=15s \
    --profiling=false
  # Its first scrape comes one resolution after the start; on a cold machine
  # with both cores busy (a workspace build beside it) it took over 90 s, as
  # the kubelet's first summary of freshly started pods comes late. Ready
  # returns at once when it is; the wait only bounds a real failure.
  wait_ready metrics-server "$MARK_METRICS" 240 "metrics of node $NODE" metrics_ready
}

# Whether containerd holds REF. (Not `ctr ... | grep -q`: grep stops at the
# first match, ctr dies of SIGPIPE, and pipefail fails the test.)
image_present() {
  local refs
  refs="$(ctr_ images ls -q 2>/dev/null)" || return 1
  grep -qxF "$1" <<<"$refs"
}

# Imports every image archive images.sh has built whose content containerd
# does not hold yet (an archive is re-imported when it changes).
do_import() {
  containerd_ready || die "containerd is not running; run node.sh up"
  local ref archive sum stamp
  mkdir -p "$NODE_STATE/imported"
  while read -r ref archive; do
    [[ -s "$archive" ]] || continue
    sum="$(sha256sum "$archive" | cut -c1-64)"
    stamp="$NODE_STATE/imported/$(printf '%s' "$ref" | tr '/:' '__')"
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$sum" ]] && image_present "$ref"; then
      continue
    fi
    log "importing $ref from $archive"
    ctr_ images import "$archive" >>"$(log_file node)" 2>&1 \
      || die "ctr images import $archive failed; see $(log_file node)"
    image_present "$ref" || die "importing $archive did not create $ref"
    printf '%s\n' "$sum" >"$stamp"
  done < <(bash "$E2E_DIR/scripts/images.sh" list)
}

all_running() {
  running_pid containerd "$MARK_CTRD" >/dev/null \
    && running_pid kubelet "$MARK_KUBELET" >/dev/null \
    && running_pid kube-proxy "$MARK_PROXY" >/dev/null \
    && running_pid coredns "$MARK_COREDNS" >/dev/null \
    && running_pid traefik "$MARK_TRAEFIK" >/dev/null \
    && running_pid kube-router "$MARK_ROUTER" >/dev/null \
    && running_pid metrics-server "$MARK_METRICS" >/dev/null
}

do_up() {
  do_install
  # The control plane must be up (and started with this node's certificates).
  bash "$E2E_DIR/scripts/k8s.sh" up
  [[ -s "$K8S_STATE/kubelet.kubeconfig" ]] || die "k8s.sh wrote no kubelet kubeconfig; run 'k8s.sh down' then 'k8s.sh up'"
  local start=$SECONDS
  if all_running && node_ready; then
    start_forwarders
    do_import
    log "already up: node $NODE on $NODE_IP"
    return 0
  fi
  setup_network
  write_configs
  start_forwarders
  start_containerd
  do_import
  start_kubelet
  kubectl_ apply --server-side --field-manager=commerce-node -f - >>"$(log_file node)" 2>&1 < <(cluster_objects) \
    || die "could not apply the node's cluster objects; see $(log_file node)"
  start_addons
  wait_ready kubelet "$MARK_KUBELET" 120 "node $NODE Ready" node_ready
  # It scrapes a Ready node's kubelet.
  start_metrics_server
  log "up in $((SECONDS - start))s: node $NODE on $NODE_IP, Ingress on 127.0.0.1:$COMMERCE_INGRESS_PORT"
}

# Unmounts everything mounted under DIR, deepest first.
unmount_under() {
  local dir="$1" target
  while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || log "could not unmount $target"
  done < <(awk -v d="$dir/" 'index($2, d) == 1 || $2 == substr(d, 1, length(d) - 1) {print $2}' /proc/self/mounts \
    | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-)
}

# Removes the cgroups the kubelet created (kubepods and below), deepest first.
cleanup_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [[ -d "$d" ]] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || log "cgroup $d is not empty"
  done
}

do_down() {
  # metrics.k8s.io is served only while the node runs. Left registered, an
  # unavailable aggregated API stops every namespace deletion of a control
  # plane that runs without the node (its discovery fails); up applies it
  # again. Skipped quietly when the control plane is already down.
  kubectl_ delete apiservice v1beta1.metrics.k8s.io --ignore-not-found \
    >>"$(log_file node)" 2>&1 || true
  # Pods first: the kubelet would restart them, so it stops before the CRI
  # removes them (which also runs the CNI teardown and frees the netns).
  stop_recorded traefik "$MARK_TRAEFIK" 20
  stop_recorded metrics-server "$MARK_METRICS" 20
  stop_recorded kube-router "$MARK_ROUTER" 20
  stop_recorded coredns "$MARK_COREDNS" 20
  stop_recorded kubelet "$MARK_KUBELET" 30
  if running_pid containerd "$MARK_CTRD" >/dev/null; then
    crictl_ rmp --all --force >>"$(log_file node)" 2>&1 || log "crictl rmp failed; see $(log_file node)"
  fi
  if running_pid kube-proxy "$MARK_PROXY" >/dev/null; then
    stop_recorded kube-proxy "$MARK_PROXY" 20
  fi
  if [[ -x "$K8S_BIN/kube-proxy" && -s "$NODE_STATE/kube-proxy.yaml" ]]; then
    "$K8S_BIN/kube-proxy" --config="$NODE_STATE/kube-proxy.yaml" --cleanup >>"$(log_file node)" 2>&1 || true
  fi
  stop_recorded containerd "$MARK_CTRD" 30
  local entry name listen target
  for entry in "${FORWARDS[@]}"; do
    read -r name listen target <<<"$entry"
    stop_recorded "forward-$name" "$(forward_marker "$listen")" 10
  done
  unmount_under "$KUBELET_STATE"
  unmount_under "$CTRD_STATE"
  cleanup_cgroups
  cleanup_iptables
  cleanup_ipsets
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
  fi
  restore_sysctls
  rm -rf "$NODE_STATE/cni/ipam"
  log "down"
}

do_status() {
  local up=() down=() state name marker i
  local names=(containerd kubelet kube-proxy coredns traefik kube-router metrics-server)
  local markers=("$MARK_CTRD" "$MARK_KUBELET" "$MARK_PROXY" "$MARK_COREDNS" "$MARK_TRAEFIK" "$MARK_ROUTER" "$MARK_METRICS")
  for i in "${!names[@]}"; do
    name="${names[$i]}"
    marker="${markers[$i]}"
    if running_pid "$name" "$marker" >/dev/null; then up+=("$name"); else down+=("$name"); fi
  done
  if ((${#up[@]} == 0)); then
    state="down"
  elif ((${#down[@]} == 0)) && node_ready; then
    state="up (node $NODE Ready, Ingress 127.0.0.1:$COMMERCE_INGRESS_PORT)"
  else
    state="degraded (running: ${up[*]:-none}; stopped: ${down[*]:-none})"
  fi
  status_line node "$COMMERCE_K8S_VERSION" "$NODE_IP" "$state"
}

case "${1:-}" in
  import) with_lock "$COMPONENT" do_import ;;
  *) main_dispatch "$@" ;;
esac
