{{/*
Chart name, cut to 63 characters (the DNS label limit).
*/}}
{{- define "coredump-shipper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release-chart unless the release name already contains the chart name.
*/}}
{{- define "coredump-shipper.fullname" -}}
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

{{- define "coredump-shipper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "coredump-shipper.labels" -}}
helm.sh/chart: {{ include "coredump-shipper.chart" . }}
{{ include "coredump-shipper.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coredump-shipper
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "coredump-shipper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coredump-shipper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "coredump-shipper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "coredump-shipper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
"true" when the shipper may use the Kubernetes API (config.kubernetes is not off): the pod then gets a
service account token and the chart a ClusterRole for it.
*/}}
{{- define "coredump-shipper.kubernetesEnabled" -}}
{{- if ne (toString .Values.config.kubernetes) "off" }}true{{ end }}
{{- end }}

{{/*
Image reference from a {registry, repository, tag, digest} map; a digest wins over the tag.
Usage: include "coredump-shipper.image" (dict "image" .Values.image "root" .)
*/}}
{{- define "coredump-shipper.image" -}}
{{- $image := .image }}
{{- $repository := $image.repository }}
{{- if $image.registry }}
{{- $repository = printf "%s/%s" $image.registry $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion $image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Whether the cluster serves the Prometheus Operator's API (or the caller says so with --api-versions).
*/}}
{{- define "coredump-shipper.hasMonitoringAPI" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end }}
{{- end }}

{{/*
Label matchers that pick this release's coredump_shipper_* series in PromQL. The shipper labels every
series it exports with its node and namespace itself (COREDUMP_SHIPPER_NAMESPACE), so the rules match
whatever job and target labels the scrape gives: the Operator's monitors, annotation-based scraping
or a plain scrape config. Series without the prefix (up) are tied to a shipper target by job and
instance (see CoredumpShipperDown).
*/}}
{{- define "coredump-shipper.promSelector" -}}
namespace="{{ .Release.Namespace }}"
{{- end }}

{{/*
Consistency checks that a schema cannot express.
*/}}
{{- define "coredump-shipper.validate" -}}
{{- $timeout := include "coredump-shipper.shutdownSeconds" . | int }}
{{- if le (int .Values.terminationGracePeriodSeconds) $timeout }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above config.shutdownTimeout (%ds): the kubelet kills the pod before in-flight uploads can finish" (int .Values.terminationGracePeriodSeconds) $timeout) }}
{{- end }}
{{- /* Node setup chowns coreDirectory.path to the shipper and the shipper deletes what it ships there:
never a system directory (exactly), nor anything inside the ones the OS owns whole. */}}
{{- $core := clean .Values.coreDirectory.path }}
{{- $system := list "/" "/bin" "/boot" "/dev" "/etc" "/home" "/lib" "/lib32" "/lib64" "/media" "/mnt" "/opt" "/proc" "/root" "/run" "/sbin" "/srv" "/sys" "/tmp" "/usr" "/var" "/var/lib" "/var/log" "/var/run" "/var/tmp" "/var/cache" "/var/spool" "/var/lib/kubelet" "/var/lib/containerd" "/var/lib/docker" "/var/lib/containers" "/var/lib/etcd" "/var/log/pods" "/var/log/containers" }}
{{- $owned := list "/bin/" "/boot/" "/dev/" "/etc/" "/lib/" "/lib64/" "/proc/" "/sbin/" "/sys/" "/usr/" "/root/" }}
{{- $inOwned := false }}
{{- range $owned }}{{ if hasPrefix . (printf "%s/" $core) }}{{ $inOwned = true }}{{ end }}{{ end }}
{{- if or (has $core $system) $inOwned }}
{{- fail (printf "coreDirectory.path (%s) is a system directory: node setup would give it to the shipper's uid and the shipper deletes what it ships from it; use a directory of its own, e.g. /var/coredump" .Values.coreDirectory.path) }}
{{- end }}
{{- /* The directory is given to directoryUid and used by the pod's uid: they must be one uid. */}}
{{- $podUid := .Values.podSecurityContext.runAsUser }}
{{- with .Values.securityContext.runAsUser }}{{ $podUid = . }}{{ end }}
{{- if and .Values.nodeSetup.enabled (ne (toString .Values.nodeSetup.directoryUid) (toString $podUid)) }}
{{- fail (printf "nodeSetup.directoryUid (%v) must be the shipper's runAsUser (%v): node setup gives the core directory (mode 0700 in pipe mode) to that uid, and a shipper of another uid could not read or delete the cores" .Values.nodeSetup.directoryUid $podUid) }}
{{- end }}
{{- if and (eq .Values.capture.mode "pipe") (hasPrefix (printf "%s/" (clean .Values.coreDirectory.path)) (printf "%s/" (clean .Values.capture.receiverDirectory))) }}
{{- fail (printf "capture.receiverDirectory (%s) must not be inside coreDirectory.path (%s): the shipper's uid owns that directory and could replace what the kernel runs as root" .Values.capture.receiverDirectory .Values.coreDirectory.path) }}
{{- end }}
{{- if and .Values.nodeSetup.enabled (eq .Values.capture.mode "file") }}
{{- $pattern := .Values.nodeSetup.corePattern }}
{{- if hasPrefix "|" $pattern }}
{{- fail "nodeSetup.corePattern: pipe patterns run a helper on the host; the shipper needs a file pattern inside coreDirectory.path" }}
{{- end }}
{{- if ne (dir $pattern) (clean .Values.coreDirectory.path) }}
{{- fail (printf "nodeSetup.corePattern (%s) must write into coreDirectory.path (%s)" $pattern .Values.coreDirectory.path) }}
{{- end }}
{{- if and .Values.config.filenamePattern (ne (base $pattern) (toString .Values.config.filenamePattern)) }}
{{- fail (printf "config.filenamePattern (%s) must be the file name part of nodeSetup.corePattern (%s)" .Values.config.filenamePattern (base $pattern)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
config.shutdownTimeout in whole seconds: a number, or a duration string such as "20s" / "1m".
*/}}
{{- define "coredump-shipper.shutdownSeconds" -}}
{{- $v := toString (default "20" .Values.config.shutdownTimeout) }}
{{- if hasSuffix "ms" $v }}{{ div (trimSuffix "ms" $v | int) 1000 }}
{{- else if hasSuffix "s" $v }}{{ trimSuffix "s" $v | int }}
{{- else if hasSuffix "m" $v }}{{ mul (trimSuffix "m" $v | int) 60 }}
{{- else }}{{ $v | float64 | ceil | int }}
{{- end }}
{{- end }}

{{/*
The environment built from .Values.config: each key becomes COREDUMP_SHIPPER_<UPPER_SNAKE>, so a new
shipper flag needs no template change. Empty and null values are left out (the shipper's default).
*/}}
{{- define "coredump-shipper.configEnv" -}}
{{- range $key, $value := .Values.config }}
{{- if not (or (kindIs "invalid" $value) (eq (toString $value) "")) }}
{{- /* YAML numbers arrive as float64: print whole ones without an exponent (8388608, not 8.388608e+06). */}}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $value = int64 $value }}
{{- end }}
{{ printf "COREDUMP_SHIPPER_%s" ($key | snakecase | upper) }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}
COREDUMP_SHIPPER_WATCH_DIR: {{ .Values.coreDirectory.path | quote }}
{{- /* What node setup installs is what the shipper checks every minute (capture_configured). */}}
{{- if .Values.nodeSetup.enabled }}
COREDUMP_SHIPPER_CAPTURE_MODE: {{ .Values.capture.mode | quote }}
COREDUMP_SHIPPER_RECEIVER_PATH: {{ printf "%s/coredump-receive" (trimSuffix "/" .Values.capture.receiverDirectory) | quote }}
COREDUMP_SHIPPER_PIPE_LIMIT: {{ .Values.capture.pipeLimit | int | toString | quote }}
{{- end }}
{{- /* An IPv6 address needs brackets before the port. */}}
{{- $host := ternary (printf "[%s]" (trimAll "[]" .Values.listenAddress)) .Values.listenAddress (contains ":" .Values.listenAddress) }}
COREDUMP_SHIPPER_LISTEN: {{ printf "%s:%d" $host (int .Values.containerPort) | quote }}
{{- end }}

{{/*
A Prometheus duration for `seconds` x metrics.prometheusRule.timeScale, in the largest whole unit
(600 -> 10m; scaled by 0.01 -> 6s). Usage: include "coredump-shipper.ruleDuration" (list 600 .)
*/}}
{{- define "coredump-shipper.ruleDuration" -}}
{{- $root := index . 1 }}
{{- $ms := mulf (index . 0) $root.Values.metrics.prometheusRule.timeScale 1000 | floor | int64 }}
{{- if lt $ms 1 }}{{ $ms = 1 }}{{ end }}
{{- if eq (mod $ms 3600000) 0 }}{{ div $ms 3600000 }}h
{{- else if eq (mod $ms 60000) 0 }}{{ div $ms 60000 }}m
{{- else if eq (mod $ms 1000) 0 }}{{ div $ms 1000 }}s
{{- else }}{{ $ms }}ms
{{- end }}
{{- end }}

{{/*
`seconds` x metrics.prometheusRule.timeScale as a number, for thresholds compared with ages.
*/}}
{{- define "coredump-shipper.ruleSeconds" -}}
{{- mulf (index . 0) (index . 1).Values.metrics.prometheusRule.timeScale }}
{{- end }}
