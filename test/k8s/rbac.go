package k8s

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AgentRBAC returns the ClusterRole podnic ships for podnic-agent
// (deploy/podnic-agent-rbac.yaml under repo) bound to user, so tests run
// the agent with exactly the rules users deploy.
func AgentRBAC(repo, user string) (string, error) {
	path := filepath.Join(repo, "deploy", "podnic-agent-rbac.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading podnic-agent's RBAC: %w", err)
	}
	for _, doc := range strings.Split(string(b), "\n---\n") {
		if strings.Contains(doc, "\nkind: ClusterRole\n") {
			return doc + fmt.Sprintf(`
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: podnic-agent-test}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: podnic-agent}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: %s}]
`, user), nil
		}
	}
	return "", fmt.Errorf("reading podnic-agent's RBAC: no ClusterRole in %s", path)
}
