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
