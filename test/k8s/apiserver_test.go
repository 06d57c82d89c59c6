package k8s

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Address plan: Service ClusterIPs come from the API server's ranges,
// 10.96.0.0/16 and fd00:96::/108; endpoints use TEST-NET-1 (RFC 5737)
// 192.0.2.0/24 and the documentation prefix 2001:db8::/32 (RFC 3849).

const echoService = `
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: default
spec:
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports:
  - name: http
    port: 80
    targetPort: 8080
    protocol: TCP
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v4
  namespace: default
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: [192.0.2.10]
  conditions: {ready: true, serving: true, terminating: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v6
  namespace: default
  labels:
    kubernetes.io/service-name: echo
addressType: IPv6
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses: ["2001:db8::10"]
  conditions: {ready: true, serving: true, terminating: false}
`

// agentRBAC grants podnic-agent what it needs to replace kube-proxy, and
// nothing more.
const agentRBAC = `
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: podnic-agent
rules:
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [nodes]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: podnic-agent
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: podnic-agent
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: podnic-agent
`

func TestAgentMayOnlyListAndWatchServicesAndEndpointSlices(t *testing.T) {
	c := Start(t)
	c.Apply(t, echoService)

	var svc struct {
		Spec struct {
			ClusterIPs []string `json:"clusterIPs"`
		} `json:"spec"`
	}
	getJSON(t, c, AdminUser, "/api/v1/namespaces/default/services/echo", &svc)
	if len(svc.Spec.ClusterIPs) != 2 || !strings.HasPrefix(svc.Spec.ClusterIPs[0], "10.96.") ||
		!strings.HasPrefix(svc.Spec.ClusterIPs[1], "fd00:96::") {
		t.Fatalf("echo clusterIPs = %q, want one from 10.96.0.0/16 and one from fd00:96::/108", svc.Spec.ClusterIPs)
	}
	t.Logf("echo clusterIPs %v", svc.Spec.ClusterIPs)

	// Before the binding the agent may not even list.
	if code, body, err := c.Get(AgentUser, "/api/v1/services"); err != nil || code != http.StatusForbidden {
		t.Fatalf("agent lists services before the binding: %d %v %s", code, err, body)
	}

	c.Apply(t, agentRBAC)
	// The RBAC authorizer reads roles from an informer: wait until it
	// has seen the binding.
	waitAllowed(t, c, "/apis/discovery.k8s.io/v1/endpointslices")

	for _, tc := range []struct {
		verb, resource string
		want           bool
	}{
		{"list", "services", true},
		{"watch", "services", true},
		{"list", "endpointslices.discovery.k8s.io", true},
		{"watch", "endpointslices.discovery.k8s.io", true},
		{"get", "nodes", true},
		{"get", "services", false},
		{"create", "services", false},
		{"update", "endpointslices.discovery.k8s.io", false},
		{"list", "nodes", false},
		{"list", "secrets", false},
		{"get", "secrets", false},
		{"list", "pods", false},
	} {
		out, err := c.Kubectl(AgentUser, "", "auth", "can-i", tc.verb, tc.resource, "--all-namespaces")
		// The answer is the last line; warnings (such as "not namespace
		// scoped" for nodes) come before it.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		answer := lines[len(lines)-1]
		if (answer == "yes") != tc.want || (err == nil) != tc.want {
			t.Errorf("agent can-i %s %s = %q (%v), want allowed=%v", tc.verb, tc.resource, out, err, tc.want)
		}
	}

	// The same over the wire, as the agent's informers will ask.
	for _, tc := range []struct {
		path     string
		wantCode int
		wantBody string
	}{
		{"/api/v1/services", http.StatusOK, `"name":"echo"`},
		{"/apis/discovery.k8s.io/v1/endpointslices", http.StatusOK, `"name":"echo-v6"`},
		{"/api/v1/services?watch=1&timeoutSeconds=1", http.StatusOK, `"type":"ADDED"`},
		{"/apis/discovery.k8s.io/v1/endpointslices?watch=1&timeoutSeconds=1", http.StatusOK, `"2001:db8::10"`},
		{"/api/v1/nodes/podnic-test-node", http.StatusNotFound, ""}, // allowed; there is no node
		{"/api/v1/secrets", http.StatusForbidden, ""},
		{"/api/v1/namespaces/default/services/echo", http.StatusForbidden, ""},
		{"/api/v1/nodes", http.StatusForbidden, ""},
	} {
		code, body, err := c.Get(AgentUser, tc.path)
		if err != nil {
			t.Errorf("agent GET %s: %v", tc.path, err)
			continue
		}
		if code != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
			t.Errorf("agent GET %s = %d %.300s, want %d with %s", tc.path, code, body, tc.wantCode, tc.wantBody)
		}
	}
}

func getJSON(t *testing.T, c *Cluster, user, path string, v any) {
	t.Helper()
	code, body, err := c.Get(user, path)
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET %s as %s: %d %v %s", path, user, code, err, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
}

// waitAllowed polls path as the agent until it stops answering 403.
func waitAllowed(t *testing.T, c *Cluster, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body, err := c.Get(AgentUser, path)
		if err == nil && code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent still not allowed GET %s after 10s: %d %v %s", path, code, err, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
