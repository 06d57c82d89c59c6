//go:build tools

// Package crictl only pins sigs.k8s.io/cri-tools for scripts/setup-nodebox.sh.
package crictl

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
