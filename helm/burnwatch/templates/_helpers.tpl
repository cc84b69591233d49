{{/* Chart name, cut to the 63 characters a label allows. */}}
{{- define "burnwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "burnwatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "burnwatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "burnwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "burnwatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "burnwatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: node-agent
{{- end }}

{{- define "burnwatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "burnwatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "burnwatch.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The agent's burnwatch.yaml: .Values.config with the settings the pod spec
depends on forced: the HTTP listener (probes and scrapes use `port`; the
address is the pod's IP through BURNWATCH_LISTEN unless listenOn is all),
the state directory (the hostPath mount), and api.auth / api.tls pointing at
the mounted Secrets when api.*.existingSecret are set.
*/}}
{{- define "burnwatch.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $exporters := get $config "exporters" | default dict }}
{{- $prom := get $exporters "prometheus" | default dict }}
{{- $_ := set $prom "listen" (printf "0.0.0.0:%d" (int .Values.port)) }}
{{- $_ = set $exporters "prometheus" $prom }}
{{- $_ = set $config "exporters" $exporters }}
{{- if or .Values.api.auth.existingSecret .Values.api.tls.existingSecret }}
{{- $api := get $config "api" | default dict }}
{{- if .Values.api.auth.existingSecret }}
{{- $_ = set $api "auth" (dict "bearer_token_file" (printf "/run/secrets/burnwatch/api-auth/%s" .Values.api.auth.key)) }}
{{- end }}
{{- if .Values.api.tls.existingSecret }}
{{- $_ = set $api "tls" (dict "cert_file" "/run/secrets/burnwatch/api-tls/tls.crt" "key_file" "/run/secrets/burnwatch/api-tls/tls.key") }}
{{- end }}
{{- $_ = set $config "api" $api }}
{{- end }}
{{- $state := get $config "state" | default dict }}
{{- $_ = set $state "dir" "/var/lib/burnwatch" }}
{{- $_ = set $config "state" $state }}
{{- toYaml $config }}
{{- end }}

{{/* http or https: the API's scheme (api.tls). */}}
{{- define "burnwatch.scheme" -}}
{{- if .Values.api.tls.existingSecret }}https{{ else }}http{{ end }}
{{- end }}
