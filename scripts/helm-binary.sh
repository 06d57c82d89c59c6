#!/usr/bin/env bash
# helm-binary.sh builds helm (helm.sh/helm/v4, the version test/helm/build
# requires) for rendering and installing deploy/helm/podnic in tests,
# cached by that module's go.sum (scripts/tool-binary.sh; a cold build took
# about 2 minutes). The binary's path is the last line on stdout.
exec "$(dirname "${BASH_SOURCE[0]}")/tool-binary.sh" helm test/helm/build helm.sh/helm/v4/cmd/helm
