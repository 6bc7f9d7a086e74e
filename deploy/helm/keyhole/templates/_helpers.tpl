{{/* Names. */}}
{{- define "keyhole.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyhole.fullname" -}}
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

{{- define "keyhole.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keyhole.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyhole.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyhole.labels" -}}
helm.sh/chart: {{ include "keyhole.chart" . }}
{{ include "keyhole.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The runner's own ServiceAccount (in the release namespace). */}}
{{- define "keyhole.runnerServiceAccount" -}}
{{- printf "%s-runner" (include "keyhole.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The user name the apiserver gives the runner's ServiceAccount: the admission policy matches on it. */}}
{{- define "keyhole.runnerUsername" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "keyhole.runnerServiceAccount" .) -}}
{{- end -}}

{{- define "keyhole.tokenSecretName" -}}
{{- default (printf "%s-token" (include "keyhole.fullname" .)) .Values.runner.token.secretName -}}
{{- end -}}

{{/* Cluster-scoped names must not clash between releases of the same name in other namespaces. */}}
{{- define "keyhole.clusterName" -}}
{{- printf "%s-%s" (include "keyhole.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/*
The names the runner gives a job's pod and its per-job Secret: kh-<job id>-<6 of [a-z0-9]>
(runner/src/pod/mod.rs pod_name, POD_NAME_PATTERN), as an RE2 regular expression for CEL
`matches`. The admission policies reserve these names in the jobs namespace: the runner may
create pods and Secrets of no other name, and nobody else Secrets of such a name, so that a
pod's "own" Secret is always one the runner made for it.
*/}}
{{- define "keyhole.jobNamePattern" -}}
^kh-[0-9]+-[a-z0-9]{6}$
{{- end -}}

{{/* Names of job pods' own image pull Secrets: the pod's name and "-registry" (the runner's
PULL_SECRET_NAME_PATTERN, kept equal by a deploy test). */}}
{{- define "keyhole.pullSecretNamePattern" -}}
^kh-[0-9]+-[a-z0-9]{6}-registry$
{{- end -}}

{{/* Labels every runner-made job pod and Secret carries (the runner's contract). */}}
{{- define "keyhole.jobLabels" -}}
app.kubernetes.io/managed-by: keyhole-runner
keyhole.dev/runner: {{ .Values.runner.name | quote }}
{{- end -}}

{{/*
Tenants grouped by job ServiceAccount, as JSON {"<sa>": ["<secret>", ...]}: several projects may
share one account, which then gets the union of their Secrets. Fails when a tenant reuses the
default job ServiceAccount, which must stay without permissions.
*/}}
{{- define "keyhole.tenantAccounts" -}}
{{- $bySA := dict -}}
{{- range $i, $t := .Values.tenants -}}
{{- if eq $t.serviceAccount $.Values.jobs.serviceAccount.name -}}
{{- fail (printf "tenants[%d].serviceAccount is %q, the default job ServiceAccount (jobs.serviceAccount.name), which must have no permissions: give the tenant an account of its own" $i $t.serviceAccount) -}}
{{- end -}}
{{- $cur := get $bySA $t.serviceAccount | default list -}}
{{- $_ := set $bySA $t.serviceAccount (concat $cur ($t.secrets | default list) | uniq | sortAlpha) -}}
{{- end -}}
{{- toJson $bySA -}}
{{- end -}}

{{/* ServiceAccounts job pods may run as, as a JSON list (sorted, unique). */}}
{{- define "keyhole.allowedServiceAccounts" -}}
{{- $all := list .Values.jobs.serviceAccount.name -}}
{{- range .Values.tenants -}}
{{- $all = append $all .serviceAccount -}}
{{- end -}}
{{- $all = concat $all .Values.jobs.extraAllowedServiceAccounts -}}
{{- toJson ($all | uniq | sortAlpha) -}}
{{- end -}}

{{/* A value as TOML: strings, booleans, numbers (integers stay integers), lists, tables (inline). */}}
{{- define "keyhole.toml" -}}
{{- if kindIs "string" . -}}
{{- toJson . -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- if eq (float64 .) (floor .) -}}{{- int64 . -}}{{- else -}}{{- . -}}{{- end -}}
{{- else if kindIs "slice" . -}}
[{{- range $i, $e := . -}}{{- if $i }}, {{ end -}}{{- include "keyhole.toml" $e -}}{{- end -}}]
{{- else if kindIs "map" . -}}
{{- $m := . -}}
{ {{- range $i, $k := keys $m | sortAlpha -}}{{- if $i }},{{ end }} {{ toJson $k }} = {{ include "keyhole.toml" (get $m $k) -}}{{- end }} }
{{- else -}}
{{- fail (printf "runner.kubernetes: a value of kind %s cannot be written to config.toml; use a string, number, boolean, list or map" (kindOf .)) -}}
{{- end -}}
{{- end -}}

{{/*
The Secret that holds the journal of running jobs (`journal_secret`; templates/journal.yaml).
*/}}
{{- define "keyhole.journalSecret" -}}
{{ include "keyhole.fullname" . }}-journal
{{- end -}}

{{/*
`shutdown_timeout`: the pod's termination grace period less 90 s, which the runner needs after
it to abort the remaining jobs and report them (it waits up to 60 s for that).
*/}}
{{- define "keyhole.shutdownTimeout" -}}
{{- max 0 (sub (int .Values.runner.terminationGracePeriodSeconds) 90) -}}
{{- end -}}

{{/*
The Vault role a tenant's jobs log in with: the runner uses `vault_role` (vault.role) when set,
else the job's ServiceAccount name. Call with (dict "root" $ "tenant" $t).
*/}}
{{- define "keyhole.tenantVaultRole" -}}
{{- default .tenant.serviceAccount .root.Values.vault.role -}}
{{- end -}}

{{/*
Fails when the tenants' Vault settings cannot work with the runner: a tenant naming a role the
runner will not use, one role for all jobs shared by several tenants (they would read each
other's paths), or two tenants writing the same role (the second would replace the first).
*/}}
{{- define "keyhole.checkTenantVault" -}}
{{- $roles := dict -}}
{{- range $i, $t := .Values.tenants -}}
{{- if $t.vault -}}
{{- $role := include "keyhole.tenantVaultRole" (dict "root" $ "tenant" $t) -}}
{{- if and $t.vault.role (ne $t.vault.role $role) -}}
{{- if $.Values.vault.role -}}
{{- fail (printf "tenants[%d].vault.role is %q, but vault.role makes every job log in to Vault with role %q: leave tenants[%d].vault.role out or make it %q" $i $t.vault.role $role $i $role) -}}
{{- else -}}
{{- fail (printf "tenants[%d].vault.role is %q, but the runner logs in to Vault with the role named like the job's ServiceAccount, %q: leave tenants[%d].vault.role out or make it %q (or set vault.role for all jobs)" $i $t.vault.role $role $i $role) -}}
{{- end -}}
{{- end -}}
{{- if hasKey $roles $role -}}
{{- if $.Values.vault.role -}}
{{- fail (printf "tenants[%d] and tenants[%d] both have vault settings, but vault.role %q gives every job the same Vault role, so each could read the other's paths: leave vault.role empty (each tenant then gets a role named like its ServiceAccount)" (get $roles $role) $i $role) -}}
{{- else -}}
{{- fail (printf "tenants[%d] and tenants[%d] both have vault settings for ServiceAccount %q (Vault role %q): the second would replace the first; put all the paths on one of them" (get $roles $role) $i $t.serviceAccount $role) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $roles $role $i -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The images scripts/build-images makes: <imageRegistry>/<name>:<imageTag or appVersion>, unless
a value names an image of its own.
*/}}
{{- define "keyhole.imageTag" -}}
{{- default .Chart.AppVersion .Values.imageTag -}}
{{- end }}

{{- define "keyhole.runnerImage" -}}
{{- $repository := default (printf "%s/runner" .Values.imageRegistry) .Values.image.repository -}}
{{- printf "%s:%s" $repository (default (include "keyhole.imageTag" .) .Values.image.tag) -}}
{{- end }}

{{- define "keyhole.brokerImage" -}}
{{- default (printf "%s/broker:%s" .Values.imageRegistry (include "keyhole.imageTag" .)) .Values.broker.image -}}
{{- end }}

{{- define "keyhole.checkoutImage" -}}
{{- default (printf "%s/checkout:%s" .Values.imageRegistry (include "keyhole.imageTag" .)) .Values.jobs.gitImage -}}
{{- end }}
