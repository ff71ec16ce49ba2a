{{- define "semroute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "semroute.fullname" -}}
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

{{/* Selector labels of one component: include with (dict "root" $ "component" "router"). */}}
{{- define "semroute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "semroute.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "semroute.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "semroute.selectorLabels" . }}
app.kubernetes.io/part-of: semroute
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{- define "semroute.image" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/* Where the router finds Redis: the chart's own, a Secret, or an external URL. */}}
{{- define "semroute.redisEnv" -}}
- name: ROUTER_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis:%d" (include "semroute.fullname" .) (int .Values.redis.port) | quote }}
{{- else if .Values.redis.existingSecret }}
  valueFrom:
    secretKeyRef: {name: {{ .Values.redis.existingSecret }}, key: {{ .Values.redis.existingSecretKey }}}
{{- else if .Values.redis.externalUrl }}
  value: {{ .Values.redis.externalUrl | quote }}
{{- else }}
{{- fail "redis.enabled=false needs redis.externalUrl or redis.existingSecret (the routers share decisions, keys and limits through Redis)" }}
{{- end }}
{{- end }}

{{- define "semroute.keysEnabled" -}}
{{- if or .Values.keys.existingSecret .Values.keys.keysFile }}true{{ end }}
{{- end }}

{{/* router.yaml: .Values.config, plus auth.keys_file (and mode: keys) when a keys Secret is set. */}}
{{- define "semroute.routerConfig" -}}
{{- $cfg := mergeOverwrite (.Files.Get "files/router.yaml" | fromYaml) (deepCopy .Values.config) }}
{{- if include "semroute.keysEnabled" . }}
{{- $auth := merge (deepCopy (default (dict) $cfg.auth)) (dict "mode" "keys" "keys_file" "/etc/router-svc/keys/keys.yaml") }}
{{- $_ := set $cfg "auth" $auth }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
