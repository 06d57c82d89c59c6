{{/* Labels of every object of the release. */}}
{{- define "podnic.labels" -}}
app.kubernetes.io/name: podnic-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
