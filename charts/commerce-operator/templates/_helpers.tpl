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
