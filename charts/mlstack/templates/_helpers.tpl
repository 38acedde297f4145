{{/*
Names, labels, images, credentials and the hardening: every template uses these, none re-spells them.
*/}}

{{- define "mlstack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mlstack.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's resource name: mlstack.component (dict "root" $ "component" "tracking") */}}
{{- define "mlstack.component" -}}
{{- printf "%s-%s" (include "mlstack.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A model folder's name as a DNS label: linear_model -> linear-model */}}
{{- define "mlstack.modelSlug" -}}
{{- . | replace "_" "-" | lower }}
{{- end }}

{{- define "mlstack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlstack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mlstack.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "mlstack.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mlstack
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* Hook annotations: mlstack.hook (dict "weight" "-20") */}}
{{- define "mlstack.hook" -}}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation
{{- end }}

{{/* Images: never `latest` (the schema refuses it); an empty tag means appVersion. */}}
{{- define "mlstack.platformImage" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "mlstack.trainerImage" -}}
{{- printf "%s:%s" .model.image.repository (default .root.Chart.AppVersion .model.image.tag) }}
{{- end }}

{{/* Tracking: its Service, the URL clients use, and the Host headers the server accepts. */}}
{{- define "mlstack.trackingService" -}}
{{- include "mlstack.component" (dict "root" . "component" "tracking") }}
{{- end }}

{{- define "mlstack.trackingUrl" -}}
{{- printf "http://%s:%v" (include "mlstack.trackingService" .) .Values.tracking.service.port }}
{{- end }}

{{/*
--allowed-hosts replaces MLflow's defaults and matches host:port (fnmatch), so every name a client
can use is listed bare and with `:*`: the Service's short, namespaced and cluster-domain names,
localhost (kubectl port-forward), the ingress hosts, extras; pod IPs only when asked for.
*/}}
{{- define "mlstack.allowedHosts" -}}
{{- $svc := include "mlstack.trackingService" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) "localhost" "127.0.0.1" }}
{{- if .Values.ingress.enabled }}
{{- $names = concat $names .Values.ingress.hosts }}
{{- end }}
{{- $names = concat $names .Values.tracking.extraAllowedHosts }}
{{- $hosts := list }}
{{- range $names }}
{{- $hosts = append $hosts . }}
{{- if not (contains ":" .) }}
{{- $hosts = append $hosts (printf "%s:*" .) }}
{{- end }}
{{- end }}
{{- if or .Values.tracking.allowPrivateAddresses .Values.monitoring.tracking }}
{{- $hosts = concat $hosts (list "10.*" "192.168.*") }}
{{- range $i := untilStep 16 32 1 }}
{{- $hosts = append $hosts (printf "172.%d.*" $i) }}
{{- end }}
{{- end }}
{{- uniq $hosts | join "," }}
{{- end }}

{{/* The Host header of the tracking probes: the Service name, which --allowed-hosts lists. */}}
{{- define "mlstack.trackingProbeHost" -}}
{{- printf "%s:%v" (include "mlstack.trackingService" .) .Values.tracking.service.port }}
{{- end }}

{{/* Stores */}}
{{- define "mlstack.postgresHost" -}}
{{- if .Values.postgresql.bundled.enabled }}
{{- include "mlstack.component" (dict "root" . "component" "postgresql") }}
{{- else }}
{{- required "postgresql.host: set the external PostgreSQL host, or postgresql.bundled.enabled=true" .Values.postgresql.host }}
{{- end }}
{{- end }}

{{- define "mlstack.postgresSecret" -}}
{{- if .Values.postgresql.bundled.enabled }}
{{- default (include "mlstack.component" (dict "root" . "component" "postgresql")) .Values.postgresql.bundled.existingSecret }}
{{- else }}
{{- required "postgresql.existingSecret: name the Secret holding the external PostgreSQL login (keys postgresql.secretKeys), or set postgresql.bundled.enabled=true" .Values.postgresql.existingSecret }}
{{- end }}
{{- end }}

{{- define "mlstack.s3Endpoint" -}}
{{- if .Values.s3.bundled.enabled }}
{{- printf "http://%s:9000" (include "mlstack.component" (dict "root" . "component" "s3")) }}
{{- else }}
{{- .Values.s3.endpoint }}
{{- end }}
{{- end }}

{{- define "mlstack.s3Secret" -}}
{{- if .Values.s3.bundled.enabled }}
{{- default (include "mlstack.component" (dict "root" . "component" "s3")) .Values.s3.bundled.existingSecret }}
{{- else }}
{{- required "s3.existingSecret: name the Secret holding the S3 keys (keys s3.secretKeys), or set s3.bundled.enabled=true" .Values.s3.existingSecret }}
{{- end }}
{{- end }}

{{- define "mlstack.authSecret" -}}
{{- default (include "mlstack.component" (dict "root" . "component" "auth")) .Values.auth.existingSecret }}
{{- end }}

{{- define "mlstack.clientSecret" -}}
{{- default (include "mlstack.component" (dict "root" . "component" "client")) .Values.auth.clientExistingSecret }}
{{- end }}

{{/* The Secret with serving's bearer tokens: the named one, or the one the chart generates. */}}
{{- define "mlstack.servingTokensSecret" -}}
{{- .Values.serving.auth.existingSecret | default (include "mlstack.component" (dict "root" . "component" "serving-tokens")) }}
{{- end }}

{{/* A random value kept across upgrades: mlstack.keptSecret (dict "root" $ "name" N "key" K "length" L) */}}
{{- define "mlstack.keptSecret" -}}
{{- $old := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $old (index ($old.data | default dict) .key) }}
{{- index $old.data .key }}
{{- else }}
{{- randAlphaNum (int .length) | b64enc }}
{{- end }}
{{- end }}

{{/* Environment blocks: which pod gets which credential is decided here and nowhere else. */}}
{{- define "mlstack.databaseEnv" -}}
- name: POSTGRES_HOST
  value: {{ include "mlstack.postgresHost" . | quote }}
- name: POSTGRES_PORT
  value: {{ .Values.postgresql.port | quote }}
- name: POSTGRES_DB
  value: {{ .Values.postgresql.database | quote }}
- name: POSTGRES_USER
  valueFrom:
    secretKeyRef:
      name: {{ include "mlstack.postgresSecret" . }}
      key: {{ .Values.postgresql.secretKeys.username }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mlstack.postgresSecret" . }}
      key: {{ .Values.postgresql.secretKeys.password }}
{{- end }}

{{- define "mlstack.s3Env" -}}
{{- with include "mlstack.s3Endpoint" . }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "mlstack.s3Secret" . }}
      key: {{ .Values.s3.secretKeys.accessKeyId }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mlstack.s3Secret" . }}
      key: {{ .Values.s3.secretKeys.secretAccessKey }}
{{- end }}

{{/* What every tracking client gets: the Service URL, telemetry off, and in auth mode its login. */}}
{{- define "mlstack.clientEnv" -}}
- name: MLFLOW_TRACKING_URI
  value: {{ include "mlstack.trackingUrl" . | quote }}
{{- include "mlstack.telemetryEnv" . }}
{{- if .Values.auth.enabled }}
- name: MLFLOW_TRACKING_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ include "mlstack.clientSecret" . }}
      key: username
- name: MLFLOW_TRACKING_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mlstack.clientSecret" . }}
      key: password
{{- end }}
{{- end }}

{{- define "mlstack.telemetryEnv" }}
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: DO_NOT_TRACK
  value: "true"
{{- end }}

{{/* Hardening: the pod and container blocks of values, and /tmp as an emptyDir. */}}
{{- define "mlstack.podSpecCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{- define "mlstack.containerSecurity" -}}
securityContext:
  {{- toYaml .Values.containerSecurityContext | nindent 2 }}
{{- end }}

{{- define "mlstack.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "mlstack.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* NetworkPolicy pieces: a component's pods as a peer, and DNS egress. */}}
{{- define "mlstack.peer" -}}
- podSelector:
    matchLabels:
      {{- include "mlstack.selectorLabels" . | nindent 6 }}
{{- end }}
{{- define "mlstack.dnsEgress" -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
{{- end }}
