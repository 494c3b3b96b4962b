{{/* Name of every object of the release. */}}
{{- define "commerce-operator.fullname" -}}
{{- if contains "commerce-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-commerce-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator's pods. app.kubernetes.io/name must stay
     commerce-operator: the NetworkPolicies of managed Kafka and Postgres
     admit pods with this label. */}}
{{- define "commerce-operator.selectorLabels" -}}
app.kubernetes.io/name: commerce-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "commerce-operator.labels" -}}
{{ include "commerce-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image tag as a string: image.tag, else the chart's appVersion.
     `--set image.tag=1` makes the tag a number; a whole number in a values
     file arrives as a float (1 -> 1, not 1e+00). Quote tags like 1.10 in a
     values file: YAML reads them as the number 1.1. */}}
{{- define "commerce-operator.imageTag" -}}
{{- $tag := .Values.image.tag -}}
{{- if kindIs "invalid" $tag -}}
{{- $tag = "" -}}
{{- else if and (kindIs "float64" $tag) (eq $tag (floor $tag)) -}}
{{- $tag = int64 $tag -}}
{{- end -}}
{{- $tag = toString $tag -}}
{{- if eq $tag "" -}}
{{- .Chart.AppVersion -}}
{{- else -}}
{{- $tag -}}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches, as a list: watchNamespaces, plus
     watchNamespace (the 0.1 setting, still honoured); empty means all. */}}
{{- define "commerce-operator.watchNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces | default list -}}
{{- if .Values.watchNamespace -}}
{{- $namespaces = append $namespaces .Values.watchNamespace -}}
{{- end -}}
{{- $namespaces | uniq | toJson -}}
{{- end -}}

{{/* What the operator does in the namespaces it watches (a ClusterRole's
     rules when it watches all, a Role's in each namespace otherwise):
     - reads its custom resources, writes their status and (for
       deletionPolicy: Delete) their finalizers;
     - creates with server-side apply, watches and deletes the kinds a stack
       owns (watches are metadata-only, by label);
     - reads Secrets (generated values, the Postgres admin Secret) and, for
       deletionPolicy: Delete, patches the finalizers and one label of the
       admin Secret it references (held until the stack's cleanup has used
       it). The operator's own code lists Secrets only by label (its own
       Secrets, and the ones it holds) and reads others by the name a stack
       gives; RBAC cannot say "by label", so list and watch are granted on
       Secrets of these namespaces;
     - makes the PodMonitor a stack asks for (spec.monitoring), where the
       cluster serves the kind (not watched: the kind may not exist);
     - publishes Events. */}}
{{- define "commerce-operator.namespacedRules" -}}
- apiGroups: ["commerce-stack.dev"]
  resources: ["commercestacks", "ratelimitpolicies"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["commerce-stack.dev"]
  resources: ["commercestacks"]
  verbs: ["patch"]
- apiGroups: ["commerce-stack.dev"]
  resources: ["commercestacks/status", "ratelimitpolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["configmaps", "secrets", "services", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies", "ingresses"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
