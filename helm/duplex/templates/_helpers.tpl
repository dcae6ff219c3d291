{{/*
The services the chart runs. Each is started by its thin entry point (`python -m <module>`, see
services/<package>/__main__.py) and configured only through the environment variables its
pydantic-settings class reads (services/<package>/settings.py, services/common/settings.py).
  args:       what follows `python -m <module>` (the admin CLI's `serve`).
  kafka:      reads KAFKA_* (KafkaSettings; the admin API for dead letters); the governor does not.
  salesforce: calls Salesforce, so it needs the tenants' secrets (env vars named by their secretRefs).
  vault:      reads or writes tenants' secrets in the vault, so it needs VAULT_KEYS (VaultSettings).
  governorTargetEnv: the setting holding the governor's host:port.
  consumes:   the topics (the topic table's keys) its consumer group <kafka.topicPrefix><name> reads
              (services/admin/consumer_lag.py's CONSUMER_GROUPS): those are autoscaled on lag.
*/}}
{{- define "duplex.catalogue" -}}
cdcIngest:
  name: cdc-ingest
  consumes: []
  module: services.cdc_ingest
  args: []
  kafka: true
  salesforce: true
  vault: true
  governorTargetEnv: CDC_INGEST_GOVERNOR_TARGET
mapping:
  name: mapping
  consumes: [app_changes, crm_changes]
  module: services.mapping
  args: []
  kafka: true
  salesforce: false
  vault: false
  governorTargetEnv: ""
conflictResolver:
  name: conflict-resolver
  consumes: [mapped_changes, write_outcomes]
  module: services.conflict_resolver
  args: []
  kafka: true
  salesforce: false
  vault: false
  governorTargetEnv: ""
writer:
  name: writer
  consumes: [crm_writes]
  module: services.writer
  args: []
  kafka: true
  salesforce: true
  vault: true
  governorTargetEnv: WRITER_GOVERNOR_TARGET
rateLimitGovernor:
  name: rate-limit-governor
  consumes: []
  module: services.rate_limit_governor
  args: []
  kafka: false
  salesforce: false
  vault: false
  governorTargetEnv: ""
admin:
  name: admin
  consumes: []
  module: services.admin
  args: [serve]
  kafka: true
  salesforce: true
  vault: true
  governorTargetEnv: ""
{{- end -}}

{{- define "duplex.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Leaves room for the longest suffix, "-rate-limit-governor" (20 characters). */}}
{{- define "duplex.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 42 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "duplex.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "duplex.labels" -}}
helm.sh/chart: {{ include "duplex.chart" . }}
app.kubernetes.io/name: {{ include "duplex.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: duplex
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "writer"). */}}
{{- define "duplex.selectorLabels" -}}
app.kubernetes.io/name: {{ include "duplex.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "duplex.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "duplex.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image of one service: the global image, overridden field by field by the service's own. */}}
{{- define "duplex.image" -}}
{{- $own := .values.image | default dict -}}
{{- $repository := $own.repository | default .root.Values.image.repository -}}
{{- $tag := $own.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository (toString $tag) -}}
{{- end -}}

{{- define "duplex.pullPolicy" -}}
{{- $own := .values.image | default dict -}}
{{- $own.pullPolicy | default .root.Values.image.pullPolicy -}}
{{- end -}}

{{/* Secret holding POSTGRES_DSN: the existing one, or the one the chart creates. */}}
{{- define "duplex.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "duplex.fullname" .) -}}
{{- end -}}

{{/*
Secret holding VAULT_KEYS: the existing one, the one the chart creates from secrets.vault.keys, or
empty when neither is given (the services then get no VAULT_KEYS).
*/}}
{{- define "duplex.vaultSecretName" -}}
{{- $vault := .Values.secrets.vault -}}
{{- if and $vault.existingSecret $vault.keys -}}
{{- fail "set secrets.vault.existingSecret or secrets.vault.keys, not both" -}}
{{- end -}}
{{- if $vault.existingSecret -}}
{{- $vault.existingSecret -}}
{{- else if $vault.keys -}}
{{- printf "%s-vault" (include "duplex.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The admin API's Service (ClusterIP). */}}
{{- define "duplex.adminServiceName" -}}
{{- printf "%s-admin" (include "duplex.fullname" .) -}}
{{- end -}}

{{/*
Where browsers reach the admin API (DUPLEX_ADMIN_PUBLIC_URL): admin.publicUrl without a trailing /,
else https://<admin.ingress.host> when the Ingress is enabled, else empty (the API then uses
http://127.0.0.1:<port>). The Salesforce callback is <this>/api/v1/oauth/callback.
*/}}
{{- define "duplex.adminPublicUrl" -}}
{{- $admin := .Values.admin -}}
{{- if $admin.publicUrl -}}
{{- trimSuffix "/" $admin.publicUrl -}}
{{- else if and $admin.ingress.enabled $admin.ingress.host -}}
{{- printf "https://%s" $admin.ingress.host -}}
{{- end -}}
{{- end -}}

{{/* The governor's in-cluster address (host:port) every client of it is given. */}}
{{- define "duplex.governorServiceName" -}}
{{- printf "%s-rate-limit-governor" (include "duplex.fullname" .) -}}
{{- end -}}

{{- define "duplex.governorTarget" -}}
{{- if .Values.governorTarget -}}
{{- .Values.governorTarget -}}
{{- else if .Values.rateLimitGovernor.enabled -}}
{{- printf "%s.%s.svc.%s:%d" (include "duplex.governorServiceName" .) .Release.Namespace .Values.clusterDomain (int .Values.rateLimitGovernor.port) -}}
{{- else -}}
{{- fail "rateLimitGovernor.enabled is false: set governorTarget to the host:port of a governor running elsewhere" -}}
{{- end -}}
{{- end -}}

{{/* Env var name the services look up for {secretRef: {name: N, key: K}} (services/common/salesforce.py
secret_env_name): under DUPLEX_SECRET_, the only prefix the services read tenants' secrets from by default. */}}
{{- define "duplex.secretRefEnv" -}}
{{- printf "DUPLEX_SECRET_%s_%s" .name .key | upper | replace "-" "_" | replace "." "_" -}}
{{- end -}}

{{/*
Kafka security (kafka.securityProtocol, kafka.sasl, kafka.tls), for every pod that reads KAFKA_*:
the services whose catalogue entry has kafka: true and the topics hook Job. Call each with the root
context. The non-secret settings go into the ConfigMap (the Job's inline env), the SASL credentials
come from kafka.sasl.existingSecret as secretKeyRef env entries, and the TLS files are the keys of
kafka.tls.caSecret / clientSecret mounted read-only (the root file system is read-only).
*/}}
{{- define "duplex.kafkaTlsDir" -}}/etc/duplex/kafka-tls{{- end -}}

{{/* Fails on values the services would refuse at start-up (KafkaSettings), naming the values to change. */}}
{{- define "duplex.kafkaSecurityCheck" -}}
{{- $kafka := .Values.kafka -}}
{{- $protocol := $kafka.securityProtocol -}}
{{- $oauth := $kafka.sasl.oauth -}}
{{- if and (hasPrefix "SASL_" $protocol) (eq $kafka.sasl.mechanism "OAUTHBEARER") -}}
{{- if eq (empty $oauth.tokenUrl) (empty $oauth.serviceAccountTokenAudience) -}}
{{- fail "kafka.sasl.mechanism OAUTHBEARER needs one of kafka.sasl.oauth.tokenUrl (with kafka.sasl.existingSecret holding the OAuth client) and kafka.sasl.oauth.serviceAccountTokenAudience" -}}
{{- end -}}
{{- if and $oauth.tokenUrl (not $kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.sasl.oauth.tokenUrl needs kafka.sasl.existingSecret: a Secret holding the OAuth client's id (key %s) and secret (key %s)" $kafka.sasl.usernameKey $kafka.sasl.passwordKey) -}}
{{- end -}}
{{- else if and (hasPrefix "SASL_" $protocol) (not $kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.existingSecret: a Secret holding the SASL username (key %s) and password (key %s)" $protocol $kafka.sasl.usernameKey $kafka.sasl.passwordKey) -}}
{{- end -}}
{{- if and (or $kafka.tls.caSecret $kafka.tls.clientSecret) (not (hasSuffix "SSL" $protocol)) -}}
{{- fail (printf "kafka.tls.caSecret and kafka.tls.clientSecret need kafka.securityProtocol SSL or SASL_SSL, not %s" $protocol) -}}
{{- end -}}
{{- if and $kafka.tls.clientSecret (eq $kafka.tls.certKey $kafka.tls.keyKey) -}}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey name the same key: the certificate and the key are two files" -}}
{{- end -}}
{{- end -}}

{{/* KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_MECHANISM and the KAFKA_SSL_* file paths, as a YAML map. */}}
{{- define "duplex.kafkaSecurityConfig" -}}
{{- include "duplex.kafkaSecurityCheck" . -}}
{{- $kafka := .Values.kafka -}}
{{- $dir := include "duplex.kafkaTlsDir" . -}}
{{- $data := dict "KAFKA_SECURITY_PROTOCOL" $kafka.securityProtocol "KAFKA_SASL_MECHANISM" $kafka.sasl.mechanism -}}
{{- with $kafka.tls.caSecret -}}
{{- $_ := set $data "KAFKA_SSL_CA_FILE" (printf "%s/ca/%s" $dir $kafka.tls.caKey) -}}
{{- end -}}
{{- with $kafka.tls.clientSecret -}}
{{- $_ := set $data "KAFKA_SSL_CERT_FILE" (printf "%s/client/%s" $dir $kafka.tls.certKey) -}}
{{- $_ := set $data "KAFKA_SSL_KEY_FILE" (printf "%s/client/%s" $dir $kafka.tls.keyKey) -}}
{{- end -}}
{{- if include "duplex.kafkaOAuth" . -}}
{{- $oauth := $kafka.sasl.oauth -}}
{{- if $oauth.tokenUrl -}}
{{- $_ := set $data "KAFKA_SASL_OAUTH_TOKEN_URL" $oauth.tokenUrl -}}
{{- with $oauth.scope -}}
{{- $_ := set $data "KAFKA_SASL_OAUTH_SCOPE" . -}}
{{- end -}}
{{- else -}}
{{- $_ := set $data "KAFKA_SASL_OAUTH_TOKEN_FILE" (include "duplex.kafkaTokenFile" .) -}}
{{- end -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* "yes" when the services sign in to Kafka with OAUTHBEARER, else empty. */}}
{{- define "duplex.kafkaOAuth" -}}
{{- if and (hasPrefix "SASL_" .Values.kafka.securityProtocol) (eq .Values.kafka.sasl.mechanism "OAUTHBEARER") -}}yes{{- end -}}
{{- end -}}

{{/* Where the projected ServiceAccount token (kafka.sasl.oauth.serviceAccountTokenAudience) is read from. */}}
{{- define "duplex.kafkaTokenFile" -}}/var/run/secrets/duplex/kafka/token{{- end -}}

{{/* The SASL credentials' env entries (a YAML list) from kafka.sasl.existingSecret: KAFKA_SASL_USERNAME /
KAFKA_SASL_PASSWORD, or the OAuth client's KAFKA_SASL_OAUTH_CLIENT_ID / _SECRET; empty unless the
protocol is SASL_* (and for a ServiceAccount token). */}}
{{- define "duplex.kafkaSaslEnv" -}}
{{- include "duplex.kafkaSecurityCheck" . -}}
{{- $kafka := .Values.kafka -}}
{{- if and (hasPrefix "SASL_" $kafka.securityProtocol) $kafka.sasl.existingSecret -}}
{{- $names := list "KAFKA_SASL_USERNAME" "KAFKA_SASL_PASSWORD" -}}
{{- if include "duplex.kafkaOAuth" . -}}
{{- $names = list "KAFKA_SASL_OAUTH_CLIENT_ID" "KAFKA_SASL_OAUTH_CLIENT_SECRET" -}}
{{- end -}}
{{- if or (not (include "duplex.kafkaOAuth" .)) $kafka.sasl.oauth.tokenUrl -}}
{{- $username := dict "name" (index $names 0) "valueFrom" (dict "secretKeyRef" (dict "name" $kafka.sasl.existingSecret "key" $kafka.sasl.usernameKey)) -}}
{{- $password := dict "name" (index $names 1) "valueFrom" (dict "secretKeyRef" (dict "name" $kafka.sasl.existingSecret "key" $kafka.sasl.passwordKey)) -}}
{{- toYaml (list $username $password) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod volumes of the TLS Secrets (only the keys the settings point at) and of a projected Kafka token (a YAML list); empty without any. */}}
{{- define "duplex.kafkaVolumes" -}}
{{- include "duplex.kafkaSecurityCheck" . -}}
{{- $tls := .Values.kafka.tls -}}
{{- $volumes := list -}}
{{- if $tls.caSecret -}}
{{- $volumes = append $volumes (dict "name" "kafka-tls-ca" "secret" (dict "secretName" $tls.caSecret "items" (list (dict "key" $tls.caKey "path" $tls.caKey)))) -}}
{{- end -}}
{{- if $tls.clientSecret -}}
{{- $items := list (dict "key" $tls.certKey "path" $tls.certKey) (dict "key" $tls.keyKey "path" $tls.keyKey) -}}
{{- $volumes = append $volumes (dict "name" "kafka-tls-client" "secret" (dict "secretName" $tls.clientSecret "items" $items)) -}}
{{- end -}}
{{- $oauth := .Values.kafka.sasl.oauth -}}
{{- if and (include "duplex.kafkaOAuth" .) $oauth.serviceAccountTokenAudience -}}
{{- $token := dict "audience" $oauth.serviceAccountTokenAudience "expirationSeconds" (int $oauth.serviceAccountTokenExpirationSeconds) "path" "token" -}}
{{- $volumes = append $volumes (dict "name" "kafka-token" "projected" (dict "sources" (list (dict "serviceAccountToken" $token)))) -}}
{{- end -}}
{{- with $volumes -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/* The container's read-only mounts of those volumes (a YAML list); empty without any. */}}
{{- define "duplex.kafkaVolumeMounts" -}}
{{- $tls := .Values.kafka.tls -}}
{{- $dir := include "duplex.kafkaTlsDir" . -}}
{{- $mounts := list -}}
{{- if $tls.caSecret -}}
{{- $mounts = append $mounts (dict "name" "kafka-tls-ca" "mountPath" (printf "%s/ca" $dir) "readOnly" true) -}}
{{- end -}}
{{- if $tls.clientSecret -}}
{{- $mounts = append $mounts (dict "name" "kafka-tls-client" "mountPath" (printf "%s/client" $dir) "readOnly" true) -}}
{{- end -}}
{{- if and (include "duplex.kafkaOAuth" .) .Values.kafka.sasl.oauth.serviceAccountTokenAudience -}}
{{- $mounts = append $mounts (dict "name" "kafka-token" "mountPath" (dir (include "duplex.kafkaTokenFile" .)) "readOnly" true) -}}
{{- end -}}
{{- with $mounts -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/*
The governor's gRPC secured (rateLimitGovernor.tls, rateLimitGovernor.token; GovernorLinkSettings,
GOVERNOR_LINK_*), for the governor (the server) and the services that call it (the clients: those
whose catalogue entry has a governorTargetEnv). Call each with
(dict "root" $ "key" <values key> "meta" <catalogue entry>). As for Kafka: the file paths go into
the ConfigMap, the token comes from token.existingSecret as a secretKeyRef env entry, and the TLS
files are the keys of tls.secret (the governor's certificate and key, on the governor only) and
tls.caSecret (the CA, on the clients only) mounted read-only. The client parts apply whether this
release runs the governor or governorTarget names one elsewhere.
*/}}
{{- define "duplex.governorTlsDir" -}}/etc/duplex/governor-tls{{- end -}}

{{/* "server" for the governor, "client" for a service that calls it, empty for the others. */}}
{{- define "duplex.governorLinkRole" -}}
{{- if eq .key "rateLimitGovernor" -}}
server
{{- else if .meta.governorTargetEnv -}}
client
{{- end -}}
{{- end -}}

{{/* Fails on TLS values one end would refuse or could not use, naming the values to change. */}}
{{- define "duplex.governorLinkCheck" -}}
{{- $governor := .Values.rateLimitGovernor -}}
{{- $tls := $governor.tls -}}
{{- if and $tls.secret (not $tls.caSecret) -}}
{{- fail "rateLimitGovernor.tls.secret needs rateLimitGovernor.tls.caSecret: a Secret holding the CA that signed the governor's certificate (it may be the same Secret when it carries ca.crt, e.g. cert-manager's), without which cdc-ingest and the writer could not verify the governor" -}}
{{- end -}}
{{- if and $tls.caSecret (not $tls.secret) $governor.enabled -}}
{{- fail "rateLimitGovernor.tls.caSecret needs rateLimitGovernor.tls.secret: without the governor's certificate and key it serves plaintext, and cdc-ingest and the writer would speak TLS to it" -}}
{{- end -}}
{{- if and $tls.secret (eq $tls.certKey $tls.keyKey) -}}
{{- fail "rateLimitGovernor.tls.certKey and rateLimitGovernor.tls.keyKey name the same key: the certificate and the key are two files" -}}
{{- end -}}
{{- end -}}

{{/* The GOVERNOR_LINK_TLS_* file paths of one service, as a YAML map (empty: {}). */}}
{{- define "duplex.governorLinkConfig" -}}
{{- include "duplex.governorLinkCheck" .root -}}
{{- $tls := .root.Values.rateLimitGovernor.tls -}}
{{- $dir := include "duplex.governorTlsDir" .root -}}
{{- $role := include "duplex.governorLinkRole" . -}}
{{- $data := dict -}}
{{- if and (eq $role "server") $tls.secret -}}
{{- $_ := set $data "GOVERNOR_LINK_TLS_CERT_FILE" (printf "%s/server/%s" $dir $tls.certKey) -}}
{{- $_ := set $data "GOVERNOR_LINK_TLS_KEY_FILE" (printf "%s/server/%s" $dir $tls.keyKey) -}}
{{- end -}}
{{- if and (eq $role "client") $tls.caSecret -}}
{{- $_ := set $data "GOVERNOR_LINK_TLS_CA_FILE" (printf "%s/ca/%s" $dir $tls.caKey) -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* The GOVERNOR_LINK_TOKEN env entry (a YAML list) of the governor and its clients; empty without token.existingSecret. */}}
{{- define "duplex.governorTokenEnv" -}}
{{- $token := .root.Values.rateLimitGovernor.token -}}
{{- if and $token.existingSecret (include "duplex.governorLinkRole" .) -}}
{{- toYaml (list (dict "name" "GOVERNOR_LINK_TOKEN" "valueFrom" (dict "secretKeyRef" (dict "name" $token.existingSecret "key" $token.key)))) -}}
{{- end -}}
{{- end -}}

{{/* The pod volume of the one TLS Secret the service reads (a YAML list), only the keys the settings
point at: the clients never get the governor's key, even from a Secret that holds both. */}}
{{- define "duplex.governorTlsVolumes" -}}
{{- include "duplex.governorLinkCheck" .root -}}
{{- $tls := .root.Values.rateLimitGovernor.tls -}}
{{- $role := include "duplex.governorLinkRole" . -}}
{{- if and (eq $role "server") $tls.secret -}}
{{- $items := list (dict "key" $tls.certKey "path" $tls.certKey) (dict "key" $tls.keyKey "path" $tls.keyKey) -}}
{{- toYaml (list (dict "name" "governor-tls" "secret" (dict "secretName" $tls.secret "items" $items))) -}}
{{- else if and (eq $role "client") $tls.caSecret -}}
{{- $items := list (dict "key" $tls.caKey "path" $tls.caKey) -}}
{{- toYaml (list (dict "name" "governor-tls-ca" "secret" (dict "secretName" $tls.caSecret "items" $items))) -}}
{{- end -}}
{{- end -}}

{{/* The container's read-only mount of that volume (a YAML list); empty without one. */}}
{{- define "duplex.governorTlsVolumeMounts" -}}
{{- $tls := .root.Values.rateLimitGovernor.tls -}}
{{- $dir := include "duplex.governorTlsDir" .root -}}
{{- $role := include "duplex.governorLinkRole" . -}}
{{- if and (eq $role "server") $tls.secret -}}
{{- toYaml (list (dict "name" "governor-tls" "mountPath" (printf "%s/server" $dir) "readOnly" true)) -}}
{{- else if and (eq $role "client") $tls.caSecret -}}
{{- toYaml (list (dict "name" "governor-tls-ca" "mountPath" (printf "%s/ca" $dir) "readOnly" true)) -}}
{{- end -}}
{{- end -}}

{{/*
The non-secret settings of one service (its ConfigMap's data); call with
(dict "root" $ "key" "writer" "meta" <catalogue entry> "values" <its values>).
Names are exactly the env names the settings classes read; values.<service>.config is merged last.
*/}}
{{- define "duplex.configData" -}}
{{- $root := .root -}}
{{- $data := dict -}}
{{- if .meta.kafka -}}
{{- $_ := set $data "KAFKA_BOOTSTRAP_SERVERS" $root.Values.kafka.bootstrapServers -}}
{{- $_ := set $data "KAFKA_TOPIC_PREFIX" $root.Values.kafka.topicPrefix -}}
{{- $_ := set $data "KAFKA_CLIENT_ID" $root.Values.kafka.clientId -}}
{{- $_ := set $data "KAFKA_MAX_REQUEST_SIZE" (toString (int $root.Values.kafka.maxRequestSize)) -}}
{{- range $name, $value := include "duplex.kafkaSecurityConfig" $root | fromYaml -}}
{{- $_ := set $data $name $value -}}
{{- end -}}
{{- end -}}
{{- if eq .key "admin" -}}
{{/* AdminSettings sizes its pool itself (at least one connection): DUPLEX_ADMIN_POOL_MAX_SIZE only. */}}
{{- $_ := set $data "DUPLEX_ADMIN_POOL_MAX_SIZE" (toString $root.Values.postgres.poolMaxSize) -}}
{{- else -}}
{{- $_ := set $data "POSTGRES_POOL_MIN_SIZE" (toString $root.Values.postgres.poolMinSize) -}}
{{- $_ := set $data "POSTGRES_POOL_MAX_SIZE" (toString $root.Values.postgres.poolMaxSize) -}}
{{- end -}}
{{- $_ := set $data "TELEMETRY_LOG_LEVEL" $root.Values.telemetry.logLevel -}}
{{- $_ := set $data "TELEMETRY_LOG_JSON" (toString $root.Values.telemetry.logJson) -}}
{{- $_ := set $data "TELEMETRY_METRICS_PORT" (toString (int $root.Values.telemetry.metricsPort)) -}}
{{- if $root.Values.telemetry.otlpEndpoint -}}
{{- $_ := set $data "TELEMETRY_OTLP_ENDPOINT" $root.Values.telemetry.otlpEndpoint -}}
{{- end -}}
{{- if and .meta.salesforce $root.Values.salesforcePolicy.extraHosts -}}
{{- $_ := set $data "DUPLEX_SALESFORCE_HOSTS" (join "," $root.Values.salesforcePolicy.extraHosts) -}}
{{- end -}}
{{- if .meta.governorTargetEnv -}}
{{- $_ := set $data .meta.governorTargetEnv (include "duplex.governorTarget" $root) -}}
{{- end -}}
{{- range $name, $value := include "duplex.governorLinkConfig" . | fromYaml -}}
{{- $_ := set $data $name $value -}}
{{- end -}}
{{- if eq .key "cdcIngest" -}}
{{- $_ := set $data "CDC_INGEST_PUBSUB_TARGET" .values.pubsubTarget -}}
{{- if .values.tenants -}}
{{- $_ := set $data "CDC_INGEST_TENANTS" (toJson .values.tenants) -}}
{{- end -}}
{{- if .values.polledObjects -}}
{{- $_ := set $data "CDC_INGEST_POLLED_OBJECTS" (toJson .values.polledObjects) -}}
{{- end -}}
{{- end -}}
{{- if eq .key "rateLimitGovernor" -}}
{{- $_ := set $data "GOVERNOR_HOST" "0.0.0.0" -}}
{{- $_ := set $data "GOVERNOR_PORT" (toString (int .values.port)) -}}
{{- end -}}
{{- if eq .key "admin" -}}
{{- $_ := set $data "DUPLEX_ADMIN_HOST" "0.0.0.0" -}}
{{- $_ := set $data "DUPLEX_ADMIN_PORT" (toString (int .values.port)) -}}
{{- with include "duplex.adminPublicUrl" $root -}}
{{- $_ := set $data "DUPLEX_ADMIN_PUBLIC_URL" . -}}
{{- end -}}
{{- with .values.salesforce.caFile -}}
{{- $_ := set $data "DUPLEX_ADMIN_SALESFORCE_CA_FILE" . -}}
{{- end -}}
{{- with .values.salesforce.timeoutSeconds -}}
{{- $_ := set $data "DUPLEX_ADMIN_SALESFORCE_TIMEOUT_SECONDS" (toString .) -}}
{{- end -}}
{{- $_ := set $data "DUPLEX_ADMIN_CONSUMER_LAG_ENABLED" (toString .values.consumerLag.enabled) -}}
{{- $_ := set $data "DUPLEX_ADMIN_CONSUMER_LAG_INTERVAL_SECONDS" (toString .values.consumerLag.intervalSeconds) -}}
{{- $oidc := .values.oidc -}}
{{- if or $oidc.issuer $oidc.audience $oidc.jwksUrl -}}
{{- if not (and $oidc.issuer $oidc.audience $oidc.jwksUrl) -}}
{{- fail "admin.oidc needs all of issuer, audience and jwksUrl (or none)" -}}
{{- end -}}
{{- $_ := set $data "DUPLEX_ADMIN_OIDC_ISSUER" $oidc.issuer -}}
{{- $_ := set $data "DUPLEX_ADMIN_OIDC_AUDIENCE" $oidc.audience -}}
{{- $_ := set $data "DUPLEX_ADMIN_OIDC_JWKS_URL" $oidc.jwksUrl -}}
{{- with $oidc.rolesClaim -}}
{{- $_ := set $data "DUPLEX_ADMIN_OIDC_ROLES_CLAIM" . -}}
{{- end -}}
{{- with $oidc.tenantsClaim -}}
{{- $_ := set $data "DUPLEX_ADMIN_OIDC_TENANTS_CLAIM" . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $name, $value := .values.config -}}
{{- $_ := set $data $name (toString $value) -}}
{{- end -}}
{{- toYaml $data -}}
{{- end -}}

{{/* Pod-level scheduling and security shared by Deployments and hook Jobs; call with (dict "root" $ "values" <values>). */}}
{{- define "duplex.podScheduling" -}}
{{- $nodeSelector := .values.nodeSelector | default .root.Values.defaults.nodeSelector -}}
{{- $tolerations := .values.tolerations | default .root.Values.defaults.tolerations -}}
{{- $affinity := .values.affinity | default .root.Values.defaults.affinity -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The topic table (files/topics.yaml, a copy of deploy/kafka/topics.yaml that tests keep equal) with
topics.partitions, topics.retentionMs and topics.overrides applied as `duplex topics apply`
applies them (services.common.topics.sized): a YAML map of the table's key to
{name (physical, prefixed), partitions, retentionMs, cleanupPolicy, deadLetter}.
*/}}
{{- define "duplex.topicTable" -}}
{{- $table := (.Files.Get "files/topics.yaml" | fromYaml).topics -}}
{{- $topics := .Values.topics -}}
{{- $overrides := $topics.overrides | default dict -}}
{{- $deadLetters := dict -}}
{{- range $key, $spec := $table -}}
{{- with $spec.dlq -}}
{{- $_ := set $deadLetters . true -}}
{{- end -}}
{{- end -}}
{{- range $key, $_ := $overrides -}}
{{- if not (hasKey $table $key) -}}
{{- fail (printf "topics.overrides.%s: no such topic in the topic table (%s)" $key (keys $table | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- $out := dict -}}
{{- range $key, $spec := $table -}}
{{- $deadLetter := hasKey $deadLetters $key -}}
{{- $partitions := int $spec.partitions -}}
{{- $retention := int64 $spec.retention_ms -}}
{{- if and (not $deadLetter) (not (kindIs "invalid" $topics.partitions)) -}}
{{- $partitions = int $topics.partitions -}}
{{- end -}}
{{- if and (not $deadLetter) (eq $spec.cleanup_policy "delete") (not (kindIs "invalid" $topics.retentionMs)) -}}
{{- $retention = int64 $topics.retentionMs -}}
{{- end -}}
{{- with index $overrides $key -}}
{{- if hasKey . "partitions" -}}
{{- $partitions = int .partitions -}}
{{- end -}}
{{- if hasKey . "retentionMs" -}}
{{- $retention = int64 .retentionMs -}}
{{- end -}}
{{- end -}}
{{- $name := printf "%s%s" $.Values.kafka.topicPrefix $spec.name -}}
{{- $_ := set $out $key (dict "name" $name "partitions" $partitions "retentionMs" $retention "cleanupPolicy" $spec.cleanup_policy "deadLetter" $deadLetter) -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Which autoscaler owns the consumers' replicas: "keda", "hpa" or "" (neither). Fails when both are enabled.
*/}}
{{- define "duplex.autoscaler" -}}
{{- $scaling := .Values.autoscaling | default dict -}}
{{- $keda := and $scaling.keda $scaling.keda.enabled -}}
{{- $hpa := and $scaling.hpa $scaling.hpa.enabled -}}
{{- if and $keda $hpa -}}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are both set: enable one (KEDA scales on lag, the HPA on CPU)" -}}
{{- end -}}
{{- if $keda -}}keda{{- else if $hpa -}}hpa{{- end -}}
{{- end -}}

{{/*
A consumer's replica bounds when autoscaled, as YAML {min, max, partitions}; call with
(dict "root" $ "key" <values key> "meta" <catalogue entry> "values" <its values>). Fails when
maxReplicas exceeds the partitions of the service's largest topic, or is below minReplicas.
*/}}
{{- define "duplex.replicaBounds" -}}
{{- $table := include "duplex.topicTable" .root | fromYaml -}}
{{- $partitions := 0 -}}
{{- range .meta.consumes -}}
{{- $partitions = max $partitions (int (index $table .).partitions) -}}
{{- end -}}
{{- $bounds := .values.autoscaling | default dict -}}
{{- $min := int ($bounds.minReplicas | default 1) -}}
{{- $max := int ($bounds.maxReplicas | default $partitions) -}}
{{- if gt $max (int $partitions) -}}
{{- fail (printf "%s.autoscaling.maxReplicas is %d, above the %d partitions of its topics (%s): replicas beyond them would get no partition; lower it or raise topics.partitions" .key $max (int $partitions) (join ", " .meta.consumes)) -}}
{{- end -}}
{{- if lt $max $min -}}
{{- fail (printf "%s.autoscaling.maxReplicas (%d) is below its minReplicas (%d)" .key $max $min) -}}
{{- end -}}
{{- toYaml (dict "min" $min "max" $max "partitions" (int $partitions)) -}}
{{- end -}}

{{/* Whether the service's replicas belong to an autoscaler ("true" or ""); call as for duplex.replicaBounds. */}}
{{- define "duplex.autoscaled" -}}
{{- if and .meta.consumes (include "duplex.autoscaler" .root) -}}true{{- end -}}
{{- end -}}

{{/* Name of the metrics Service a ServiceMonitor scrapes; call with (dict "root" $ "meta" <catalogue entry>). */}}
{{- define "duplex.metricsServiceName" -}}
{{- printf "%s-%s-metrics" (include "duplex.fullname" .root) .meta.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* KEDA's Kafka scaler's name for kafka.sasl.mechanism; fails on one it does not speak. */}}
{{- define "duplex.kedaSaslMode" -}}
{{- $modes := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" -}}
{{- $mechanism := .Values.kafka.sasl.mechanism -}}
{{- if not (hasKey $modes $mechanism) -}}
{{- fail (printf "autoscaling.keda cannot sign in to Kafka with kafka.sasl.mechanism %s (KEDA's Kafka scaler takes %s): use autoscaling.hpa" $mechanism (keys $modes | sortAlpha | join ", ")) -}}
{{- end -}}
{{- index $modes $mechanism -}}
{{- end -}}
