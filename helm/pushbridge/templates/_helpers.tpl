{{- define "pushbridge.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pushbridge.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pushbridge.labels" -}}
app.kubernetes.io/name: {{ include "pushbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pushbridge.selector" -}}
app.kubernetes.io/name: {{ include "pushbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pushbridge.serviceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pushbridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Roles to deploy: [all] or [api, worker] */}}
{{- define "pushbridge.roles" -}}
{{- if .Values.roles.split -}}api worker{{- else -}}all{{- end -}}
{{- end -}}

{{/* Whether the chart runs its own Valkey: enabled, and no external store given */}}
{{- define "pushbridge.bundledStore" -}}
{{- if and .Values.valkey.enabled (not .Values.store.url) (not .Values.store.urlSecret.name) -}}true{{- end -}}
{{- end -}}

{{- define "pushbridge.storeUrl" -}}
{{- if .Values.store.url -}}{{ .Values.store.url }}
{{- else if include "pushbridge.bundledStore" . -}}redis://{{ include "pushbridge.fullname" . }}-valkey:6379/0
{{- end -}}
{{- end -}}

{{/* Tenants as configured, or the generated `default` tenant when there are none */}}
{{- define "pushbridge.tenants" -}}
{{- if .Values.tenants -}}
{{- toYaml .Values.tenants -}}
{{- else -}}
{{- $secret := printf "%s-default-tenant" (include "pushbridge.fullname" .) -}}
- name: default
  apiKeysSecret: {name: {{ $secret }}, key: api-keys}
  webhookSecretSecret: {name: {{ $secret }}, key: webhook-secret}
{{- end -}}
{{- end -}}

{{/* Environment variable names that carry secrets */}}
{{- define "pushbridge.tenantKeysEnv" -}}PB_TENANT_{{ . }}_API_KEYS{{- end -}}
{{- define "pushbridge.tenantSecretEnv" -}}PB_TENANT_{{ . }}_WEBHOOK_SECRET{{- end -}}
{{- define "pushbridge.tokenEnv" -}}PB_UPSTREAM_{{ . | upper | replace "-" "_" }}_TOKEN{{- end -}}

{{/* The bridge's config.yaml, built from values */}}
{{- define "pushbridge.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $store := dict "cluster" .Values.store.cluster "key_prefix" .Values.store.keyPrefix -}}
{{- with include "pushbridge.storeUrl" . }}{{ $_ := set $store "url" . }}{{ end -}}
{{- if .Values.store.partitions }}{{ $_ := set $store "partitions" .Values.store.partitions }}{{ end -}}
{{- if .Values.store.replicaAck }}{{ $_ := set $store "replica_ack" .Values.store.replicaAck }}{{ end -}}
{{- if .Values.store.replicaAckTimeoutMs }}{{ $_ := set $store "replica_ack_timeout_ms" .Values.store.replicaAckTimeoutMs }}{{ end -}}
{{- $_ := set $cfg "store" $store -}}
{{- $listen := default dict $cfg.listen -}}
{{- $_ := set $listen "host" "0.0.0.0" -}}
{{- $_ := set $listen "port" 8080 -}}
{{- if .Values.publicUrl }}{{ $_ := set $listen "public_url" .Values.publicUrl }}{{ end -}}
{{- $_ := set $cfg "listen" $listen -}}
{{- $tenants := list -}}
{{- range $i, $t := (include "pushbridge.tenants" . | fromYamlArray) -}}
{{- $tenant := dict "name" $t.name "webhook_secret_env" (include "pushbridge.tenantSecretEnv" $i) -}}
{{- if $t.apiKeysSecret }}{{ $_ := set $tenant "api_keys_env" (include "pushbridge.tenantKeysEnv" $i) }}{{ end -}}
{{- if $t.apiKeyHashes }}{{ $_ := set $tenant "api_key_hashes" $t.apiKeyHashes }}{{ end -}}
{{- if $t.limits }}{{ $_ := set $tenant "limits" $t.limits }}{{ end -}}
{{- $tenants = append $tenants $tenant -}}
{{- end -}}
{{- $_ := set $cfg "tenants" $tenants -}}
{{- $ups := dict -}}
{{- range $name, $u := .Values.upstreams -}}
{{- $up := dict "protocol" (default "octoai" $u.protocol) "url" $u.url -}}
{{- if $u.healthUrl }}{{ $_ := set $up "health_url" $u.healthUrl }}{{ end -}}
{{- if $u.tokenSecret }}{{ $_ := set $up "token_env" (include "pushbridge.tokenEnv" $name) }}{{ end -}}
{{- if $u.submitTimeoutS }}{{ $_ := set $up "submit_timeout_s" $u.submitTimeoutS }}{{ end -}}
{{- if $u.poll }}{{ $_ := set $up "poll" $u.poll }}{{ end -}}
{{- if $u.rateLimit }}{{ $_ := set $up "rate_limit" $u.rateLimit }}{{ end -}}
{{- $_ := set $ups $name $up -}}
{{- end -}}
{{- $_ := set $cfg "upstreams" $ups -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Processes per pod (`serve --workers`): values.workers, else the CPU limit rounded up, else 1 */}}
{{- define "pushbridge.workers" -}}
{{- if .Values.workers -}}
{{- .Values.workers -}}
{{- else -}}
{{- $cpu := toString (dig "limits" "cpu" "" .Values.resources) -}}
{{- if not $cpu -}}
1
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (ceil (divf (trimSuffix "m" $cpu | float64) 1000) | int) -}}
{{- else -}}
{{- max 1 (ceil ($cpu | float64) | int) -}}
{{- end -}}
{{- end -}}
{{- end -}}
