{{/*
Labels Helm adds to every top-level object, next to the builders' own `app` label. Selectors and
pod templates keep the builders' labels only, so that they match what the cxg_on_k8s.render builders make.
*/}}
{{- define "cxg.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The operator image; it also holds the user-data helper of the viewer pods. */}}
{{- define "cxg.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
The operator's settings after the chart's own values are applied: namespace from .Values.namespace,
an empty userdata_image replaced by the operator image.
*/}}
{{- define "cxg.settings" -}}
{{- if hasKey .Values.settings "namespace" }}
{{- fail "set the namespace with .Values.namespace, not .Values.settings.namespace" }}
{{- end }}
{{- $s := deepCopy .Values.settings }}
{{- $_ := set $s "namespace" .Values.namespace }}
{{- if not $s.userdata_image }}
{{- $_ := set $s "userdata_image" (include "cxg.image" .) }}
{{- end }}
{{- toYaml $s }}
{{- end }}

{{/*
A setting as an environment string. Helm reads numbers from values files as floats, which print as
1e+06 past six digits; whole numbers are printed as integers so that the operator parses them.
null is printed as the empty string.
*/}}
{{- define "cxg.envValue" -}}
{{- if kindIs "invalid" . -}}
{{- /* null (e.g. peering_priority): empty, which the operator reads as "unset" */ -}}
{{- else if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- int64 . -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end }}

{{/* The namespace part of settings.metrics_service ("namespace/name"); empty when unset. */}}
{{/* The ingress-nginx metrics Service's namespace with activity ingress-nginx; empty when the
operator reads activity from each viewer's sign-in sidecar. */}}
{{- define "cxg.metricsNamespace" -}}
{{- if eq .Values.settings.activity "ingress-nginx" -}}
{{- splitList "/" .Values.settings.metrics_service | first -}}
{{- end -}}
{{- end }}

{{/* <url_scheme>://<host_name>, as Settings.base_url. */}}
{{- define "cxg.baseUrl" -}}
{{ .Values.settings.url_scheme }}://{{ .Values.settings.host_name }}
{{- end }}

{{/* The container securityContext every cxg-on-k8s container gets (manifests._container_security). */}}
{{- define "cxg.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
