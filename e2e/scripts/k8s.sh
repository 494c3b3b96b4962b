#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for the operator's tests:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok (one
# fake Node whose Pods become Running without a kubelet).
#
#   k8s.sh install|up|down|status
#
# install  builds every binary from the pinned module set in e2e/k8s/go.mod
#          into $COMMERCE_K8S_BIN_DIR (rebuilt only when one is missing or
#          go.mod, go.sum or the link flags change; ~8 min cold on 2 cores).
# up       starts whatever is not running and waits until the API server is
#          ready and the fake Node is Ready. Certificates, etcd data and the
#          admin kubeconfig ($COMMERCE_KUBECONFIG) are kept across down/up.
COMPONENT=k8s
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

K8S_SRC="$E2E_DIR/k8s"
BIN="$COMMERCE_K8S_BIN_DIR"
K8S_STATE="$STATE/k8s"
PKI="$K8S_STATE/pki"
ETCD_DATA="$STATE/etcd/data"
ETCD_URL="http://127.0.0.1:$COMMERCE_ETCD_PORT"
API_URL="$COMMERCE_KUBE_APISERVER_URL"
NODE_NAME=kwok-node-0
# Everything `tool` in go.mod builds, under the names we run them by.
BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm)

# Markers that identify our processes in /proc/<pid>/cmdline (see lib.sh).
MARK_ETCD="--data-dir=$ETCD_DATA"
MARK_APISERVER="--cert-dir=$STATE/kube-apiserver/certs"
MARK_CM="--kubeconfig=$K8S_STATE/controller-manager.kubeconfig"
MARK_SCHED="--kubeconfig=$K8S_STATE/scheduler.kubeconfig"
MARK_KWOK="--kubeconfig=$K8S_STATE/kwok.kubeconfig"

module_version() {
  (cd "$K8S_SRC" && go list -m -f '{{.Version}}' "$1")
}

# Version stamps the upstream release builds put in with -X; without them
# kubectl and the API server report v0.0.0-master, which breaks version
# checks in helm charts and clients.
link_flags() {
  local k8s="$COMMERCE_K8S_VERSION" minor helm pkg flags="-s -w"
  minor="${k8s#v1.}"
  minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  helm="$(module_version helm.sh/helm/v4)"
  flags+=" -X helm.sh/helm/v4/internal/version.version=$helm -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  printf '%s\n' "$flags"
}

# Identifies one build: the pinned module set and the version stamps. (A
# newer Go on the machine is no reason to rebuild 8 minutes' worth.)
build_key() {
  {
    cat "$K8S_SRC/go.mod" "$K8S_SRC/go.sum"
    link_flags
  } | sha256sum | cut -c1-16
}

binaries_present() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$BIN/$b" ]] || return 1
  done
}

do_install() {
  ensure_state_dirs
  command -v go >/dev/null || die "Go is needed to build the control plane (go.mod asks for $(awk '/^go /{print $2}' "$K8S_SRC/go.mod"))"
  local pinned
  pinned="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3} $1 == "k8s.io/kubernetes" {print $2}' "$K8S_SRC/go.mod" | head -n 1)"
  [[ "$pinned" == "$COMMERCE_K8S_VERSION" ]] \
    || die "e2e/k8s/go.mod pins k8s.io/kubernetes $pinned but COMMERCE_K8S_VERSION is $COMMERCE_K8S_VERSION (e2e/infra.env); make them agree"
  local key
  key="$(build_key)"
  if binaries_present && [[ "$(cat "$BIN/.build-key" 2>/dev/null)" == "$key" ]]; then
    return 0
  fi
  local log tmp start
  log="$(log_file k8s-build)"
  tmp="$(dirname "$BIN")/bin.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  start=$SECONDS
  log "building ${BINARIES[*]} from e2e/k8s/go.mod (build key $key; ~8 min on 2 cores when nothing is cached; log: $log)"
  # -mod=readonly: go.mod/go.sum as committed must be complete.
  if ! (cd "$K8S_SRC" && go build -mod=readonly -ldflags "$(link_flags)" -o "$tmp/" tool) >>"$log" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$log" >&2
    die "go build failed; see $log"
  fi
  # go names a binary after its package path, which for go.etcd.io/etcd/server/v3 is "server".
  mv "$tmp/server" "$tmp/etcd"
  mkdir -p "$BIN"
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x "$tmp/$b" ]] || die "the build produced no $b (is it missing from the tool block of e2e/k8s/go.mod?)"
    # rename(2): a running process keeps its old binary.
    mv -f "$tmp/$b" "$BIN/$b"
  done
  rm -rf "$tmp"
  printf '%s\n' "$key" >"$BIN/.build-key"
  log "built in $((SECONDS - start))s into $BIN"
}

# --- certificates and kubeconfigs ------------------------------------------

# A CA: new_ca NAME CN
new_ca() {
  local name="$1" cn="$2"
  [[ -s "$PKI/$name.crt" ]] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$PKI/$name.key" -subj "/CN=$cn" -days 3650 -sha256 \
    -out "$PKI/$name.crt" -config <(
      cat <<'EOF'
[req]
distinguished_name = dn
[dn]
[ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
EOF
    ) -extensions ext
}

# A leaf certificate signed by CA: new_cert NAME CA SUBJECT EKU [SANS]
new_cert() {
  local name="$1" ca="$2" subj="$3" eku="$4" sans="${5:-}"
  [[ -s "$PKI/$name.crt" ]] && return 0
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr"
  {
    echo "basicConstraints = critical,CA:FALSE"
    echo "keyUsage = critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage = $eku"
    echo "authorityKeyIdentifier = keyid"
    [[ -n "$sans" ]] && echo "subjectAltName = $sans"
  } >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/$ca.crt" -CAkey "$PKI/$ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -sha256 \
    -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# A kubeconfig with embedded credentials: write_kubeconfig FILE CERT_NAME USER
write_kubeconfig() {
  local file="$1" cert="$2" user="$3" tmp
  tmp="$file.tmp.$$"
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: commerce-stack
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 "$PKI/$cert.key")
contexts:
- name: commerce-stack
  context:
    cluster: commerce-stack
    user: $user
current-context: commerce-stack
EOF
  )
  mv -f "$tmp" "$file"
}

ensure_pki() {
  command -v openssl >/dev/null || apt_install openssl
  mkdir -p "$K8S_STATE" "$STATE/kube-apiserver/certs"
  install -d -m 0700 "$PKI"
  new_ca ca commerce-stack-ca
  new_cert apiserver ca "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  new_cert admin ca "/O=system:masters/CN=commerce-admin" clientAuth
  new_cert controller-manager ca "/CN=system:kube-controller-manager" clientAuth
  new_cert scheduler ca "/CN=system:kube-scheduler" clientAuth
  # kwok stands in for every kubelet: it updates Node and Pod status, leases
  # and events across the cluster.
  new_cert kwok ca "/O=system:masters/CN=kwok-controller" clientAuth
  # The real node (node.sh): the API server's client identity towards the
  # kubelet (logs, exec), the kubelet itself (Node authorizer), kube-proxy
  # (bound to system:node-proxier by default), and one identity for the
  # node's add-ons, CoreDNS, the Ingress controller, kube-router and
  # metrics-server (test infrastructure, so they share an admin certificate
  # instead of RBAC of their own). metrics-server's serving certificate is
  # what the aggregator checks against the APIService's caBundle (this CA).
  new_cert apiserver-kubelet-client ca "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  new_cert kubelet ca "/O=system:nodes/CN=system:node:$COMMERCE_NODE_NAME" clientAuth
  new_cert kubelet-serving ca "/CN=$COMMERCE_NODE_NAME" serverAuth "IP:$COMMERCE_NODE_IP,DNS:$COMMERCE_NODE_NAME"
  new_cert metrics-server ca "/CN=metrics-server" serverAuth "DNS:metrics-server.kube-system.svc,IP:$COMMERCE_NODE_IP"
  new_cert kube-proxy ca "/CN=system:kube-proxy" clientAuth
  new_cert node-addons ca "/O=system:masters/CN=commerce-node-addons" clientAuth
  if [[ ! -s "$PKI/sa.key" ]]; then
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  new_ca front-proxy-ca front-proxy-ca
  new_cert front-proxy-client front-proxy-ca "/CN=front-proxy-client" clientAuth
  write_kubeconfig "$COMMERCE_KUBECONFIG" admin commerce-admin
  write_kubeconfig "$K8S_STATE/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
  write_kubeconfig "$K8S_STATE/scheduler.kubeconfig" scheduler system:kube-scheduler
  write_kubeconfig "$K8S_STATE/kwok.kubeconfig" kwok kwok-controller
  write_kubeconfig "$K8S_STATE/kubelet.kubeconfig" kubelet "system:node:$COMMERCE_NODE_NAME"
  write_kubeconfig "$K8S_STATE/kube-proxy.kubeconfig" kube-proxy system:kube-proxy
  write_kubeconfig "$K8S_STATE/node-addons.kubeconfig" node-addons commerce-node-addons
  write_admission_config
}

# Two kinds of node share this control plane: kwok's fake node for the fast
# API-level tests, and the real node of node.sh. PodNodeSelector keeps them
# apart without touching any workload: a namespace without the annotation
# scheduler.alpha.kubernetes.io/node-selector gets the cluster default, the
# fake node; the real-pod tests annotate their namespaces with
# commerce-stack.dev/node=real. (Taints would need tolerations in every pod
# the operator renders.)
write_admission_config() {
  cat >"$K8S_STATE/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: PodNodeSelector
    configuration:
      podNodeSelectorPluginConfig:
        clusterDefaultNodeSelector: commerce-stack.dev/node=kwok
EOF
}

# --- processes --------------------------------------------------------------

etcd_healthy() {
  curl -fsS --max-time 2 "$ETCD_URL/health" | grep -q '"health":"true"'
}

apiserver_ready() {
  "$BIN/kubectl" --kubeconfig "$COMMERCE_KUBECONFIG" --request-timeout=3s get --raw /readyz >/dev/null
}

# /healthz of the controller manager and the scheduler is open to anonymous
# requests; their serving certificates are self-signed, hence -k.
secure_healthy() {
  [[ "$(curl -ksS --max-time 2 "https://127.0.0.1:$1/healthz")" == ok ]]
}

kwok_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$COMMERCE_KWOK_PORT/healthz" >/dev/null
}

node_ready() {
  [[ "$("$BIN/kubectl" --kubeconfig "$COMMERCE_KUBECONFIG" --request-timeout=3s get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# Starts NAME unless our process for it already runs: ensure_proc NAME MARKER PORT CMD...
ensure_proc() {
  local name="$1" marker="$2" port="$3" pid
  shift 3
  if pid="$(running_pid "$name" "$marker")"; then
    return 0
  fi
  require_port_free "$port" "$name"
  log "starting $name"
  start_detached "$name" "$@"
}

start_etcd() {
  mkdir -p "$STATE/etcd"
  install -d -m 0700 "$ETCD_DATA"
  ensure_proc etcd "$MARK_ETCD" "$COMMERCE_ETCD_PORT" \
    "$BIN/etcd" --name=commerce "$MARK_ETCD" \
    --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
    --listen-peer-urls="http://127.0.0.1:$COMMERCE_ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$COMMERCE_ETCD_PEER_PORT" \
    --initial-cluster="commerce=http://127.0.0.1:$COMMERCE_ETCD_PEER_PORT" \
    --log-level=warn \
    --quota-backend-bytes=2147483648
  wait_ready etcd "$MARK_ETCD" 60 "/health on $ETCD_URL" etcd_healthy
}

start_apiserver() {
  ensure_proc kube-apiserver "$MARK_APISERVER" "$COMMERCE_KUBE_APISERVER_PORT" \
    "$BIN/kube-apiserver" "$MARK_APISERVER" \
    --etcd-servers="$ETCD_URL" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$COMMERCE_KUBE_APISERVER_PORT" \
    --endpoint-reconciler-type=none \
    --authorization-mode=Node,RBAC \
    --enable-admission-plugins=PodNodeSelector \
    --admission-control-config-file="$K8S_STATE/admission.yaml" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-cluster-ip-range=10.96.0.0/16 \
    --allow-privileged=true \
    --client-ca-file="$PKI/ca.crt" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true \
    --profiling=false
  wait_ready kube-apiserver "$MARK_APISERVER" 120 "/readyz on $API_URL" apiserver_ready
}

start_controller_manager() {
  local kc="$K8S_STATE/controller-manager.kubeconfig"
  ensure_proc kube-controller-manager "$MARK_CM" "$COMMERCE_KUBE_CONTROLLER_MANAGER_PORT" \
    "$BIN/kube-controller-manager" "$MARK_CM" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$COMMERCE_KUBE_CONTROLLER_MANAGER_PORT" \
    --cert-dir="$STATE/kube-controller-manager/certs" \
    --cluster-name=commerce-stack \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --leader-elect=false \
    --profiling=false
}

start_scheduler() {
  local kc="$K8S_STATE/scheduler.kubeconfig"
  ensure_proc kube-scheduler "$MARK_SCHED" "$COMMERCE_KUBE_SCHEDULER_PORT" \
    "$BIN/kube-scheduler" "$MARK_SCHED" \
    --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
    --bind-address=127.0.0.1 --secure-port="$COMMERCE_KUBE_SCHEDULER_PORT" \
    --cert-dir="$STATE/kube-scheduler/certs" \
    --leader-elect=false \
    --profiling=false
}

start_kwok() {
  ensure_proc kwok "$MARK_KWOK" "$COMMERCE_KWOK_PORT" \
    "$BIN/kwok" "$MARK_KWOK" \
    --config="$K8S_SRC/kwok-stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --node-ip=127.0.0.1 --node-port="$COMMERCE_KWOK_PORT" \
    --server-address="127.0.0.1:$COMMERCE_KWOK_PORT" \
    --cidr=10.244.0.0/16 \
    --node-lease-duration-seconds=40
}

# Succeeds when every control-plane process we started is still running.
all_running() {
  running_pid etcd "$MARK_ETCD" >/dev/null \
    && running_pid kube-apiserver "$MARK_APISERVER" >/dev/null \
    && running_pid kube-controller-manager "$MARK_CM" >/dev/null \
    && running_pid kube-scheduler "$MARK_SCHED" >/dev/null \
    && running_pid kwok "$MARK_KWOK" >/dev/null
}

do_up() {
  do_install
  if all_running && apiserver_ready 2>/dev/null && node_ready 2>/dev/null; then
    log "already up on $API_URL"
    return 0
  fi
  ensure_pki
  start_etcd
  start_apiserver
  start_controller_manager
  start_scheduler
  start_kwok
  wait_ready kube-controller-manager "$MARK_CM" 60 "/healthz on 127.0.0.1:$COMMERCE_KUBE_CONTROLLER_MANAGER_PORT" \
    secure_healthy "$COMMERCE_KUBE_CONTROLLER_MANAGER_PORT"
  wait_ready kube-scheduler "$MARK_SCHED" 60 "/healthz on 127.0.0.1:$COMMERCE_KUBE_SCHEDULER_PORT" \
    secure_healthy "$COMMERCE_KUBE_SCHEDULER_PORT"
  wait_ready kwok "$MARK_KWOK" 60 "/healthz on 127.0.0.1:$COMMERCE_KWOK_PORT" kwok_healthy
  "$BIN/kubectl" --kubeconfig "$COMMERCE_KUBECONFIG" apply --server-side --field-manager=commerce-e2e \
    -f "$K8S_SRC/node.yaml" >>"$(log_file k8s)" 2>&1 \
    || die "could not create the fake node; see $(log_file k8s)"
  wait_ready kwok "$MARK_KWOK" 60 "node $NODE_NAME Ready" node_ready
  log "up: $API_URL (KUBECONFIG=$COMMERCE_KUBECONFIG)"
}

do_down() {
  # Reverse start order: the clients first, etcd last.
  stop_recorded kwok "$MARK_KWOK" 20
  stop_recorded kube-scheduler "$MARK_SCHED" 20
  stop_recorded kube-controller-manager "$MARK_CM" 20
  stop_recorded kube-apiserver "$MARK_APISERVER" 30
  stop_recorded etcd "$MARK_ETCD" 30
  log "down"
}

do_status() {
  local up=() down=() state name marker i
  local names=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)
  local markers=("$MARK_ETCD" "$MARK_APISERVER" "$MARK_CM" "$MARK_SCHED" "$MARK_KWOK")
  for i in "${!names[@]}"; do
    name="${names[$i]}"
    marker="${markers[$i]}"
    if running_pid "$name" "$marker" >/dev/null; then up+=("$name"); else down+=("$name"); fi
  done
  if ((${#up[@]} == 0)); then
    state="down"
  elif ((${#down[@]} == 0)) && [[ -x "$BIN/kubectl" ]] && apiserver_ready 2>/dev/null; then
    state="up (${#up[@]} processes)"
  else
    state="degraded (running: ${up[*]:-none}; stopped: ${down[*]:-none})"
  fi
  status_line k8s "$COMMERCE_K8S_VERSION" "127.0.0.1:$COMMERCE_KUBE_APISERVER_PORT" "$state"
}

main_dispatch "$@"
