{{- define "po.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "po.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "po.secretName" -}}
{{- default (printf "%s-secrets" (include "po.fullname" .)) .Values.secrets.name -}}
{{- end -}}

{{/* Labels shared by every object of the release. */}}
{{- define "po.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "po.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: proactive-outreach
{{- end -}}

{{/* Selector of the whole release (every service's pods). */}}
{{- define "po.releaseSelector" -}}
app.kubernetes.io/name: {{ include "po.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector of one component; call with (dict "root" $ "component" $name). */}}
{{- define "po.selectorLabels" -}}
{{ include "po.releaseSelector" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "po.componentFullname" -}}
{{- printf "%s-%s" (include "po.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* registry/repository@digest, or :tag (the chart's appVersion by default). */}}
{{- define "po.image" -}}
{{- $registry := default .Values.image.registry (.Values.global).imageRegistry -}}
{{- $repository := .Values.image.repository -}}
{{- if $registry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* A Kubernetes object name from a topic name (no underscores, lower case). */}}
{{- define "po.topicObjectName" -}}
{{- . | lower | replace "_" "-" | trunc 63 | trimSuffix "-" | trimSuffix "." -}}
{{- end -}}

{{/* A component's ServiceAccount; call with (dict "root" $ "component" $name). */}}
{{- define "po.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "po.componentFullname" . -}}
{{- else -}}
{{- default "default" .root.Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The workload kind of a service: a StatefulSet when its state is kept on a volume
     (services.<name>.persistence.enabled), else a Deployment. */}}
{{- define "po.workloadKind" -}}
{{- if (.persistence).enabled -}}StatefulSet{{- else -}}Deployment{{- end -}}
{{- end -}}

{{/* The Secret with a component's Kafka credentials: its KafkaUser's (same name) unless
     kafka.userSecrets names another. Call with (dict "root" $ "component" $name). */}}
{{- define "po.kafkaUserSecret" -}}
{{- $default := include "po.componentFullname" . -}}
{{- default $default (get (.root.Values.kafka.userSecrets | default dict) .component) -}}
{{- end -}}

{{/* The KAFKA_* settings (docs/configuration.md, "Kafka security") of a component that
     talks to Kafka, for its ConfigMap; the password is the only one from a Secret
     (po.kafkaEnv). Call with (dict "root" $ "component" $name). */}}
{{- define "po.kafkaConfig" -}}
{{- $kafka := .root.Values.kafka -}}
KAFKA_SECURITY_PROTOCOL: {{ $kafka.securityProtocol | quote }}
{{- if $kafka.caSecret }}
KAFKA_SSL_CAFILE: /etc/kafka/ca/ca.crt
{{- end }}
{{- if eq $kafka.authentication "scram-sha-512" }}
KAFKA_SASL_MECHANISM: SCRAM-SHA-512
KAFKA_SASL_USERNAME: {{ include "po.componentFullname" . | quote }}
{{- else if eq $kafka.authentication "tls" }}
KAFKA_SSL_CERTFILE: /etc/kafka/user/user.crt
KAFKA_SSL_KEYFILE: /etc/kafka/user/user.key
{{- end }}
{{- end -}}

{{/* A component's Kafka password, from its KafkaUser's Secret (SCRAM only). */}}
{{- define "po.kafkaEnv" -}}
{{- if eq .root.Values.kafka.authentication "scram-sha-512" -}}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "po.kafkaUserSecret" . }}
      key: password
{{- end -}}
{{- end -}}
