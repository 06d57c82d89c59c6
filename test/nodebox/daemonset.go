package nodebox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"sigs.k8s.io/yaml"
)

// AgentImage is the image of deploy/Dockerfile's layout that the box builds
// for the DaemonSet (Options.AgentDaemonSet).
const AgentImage = "podnic.test/podnic:v1"

// runPodnic is the folder that stands in for the node's /run/podnic for
// the DaemonSet's agent: its local API socket is there.
func (b *Box) runPodnic() string { return filepath.Join(b.Dir, "run-podnic") }

// deployAgent runs podnic-agent as a cluster admin would: the image of
// deploy/Dockerfile, deploy/podnic-agent-rbac.yaml, the API server's address
// in ConfigMap podnic-api-server, the pool's label on the node, and
// deploy/podnic.yaml with the box's values (agentManifest).
func (b *Box) deployAgent(ctx context.Context, repo string) error {
	img, err := dockerfileImage(filepath.Join(repo, "deploy", "Dockerfile"), b.Bin)
	if err != nil {
		return err
	}
	if err := b.importImage(ctx, AgentImage, img.files, img.entrypoint, img.env); err != nil {
		return err
	}
	rbac, err := os.ReadFile(filepath.Join(repo, "deploy", "podnic-agent-rbac.yaml"))
	if err != nil {
		return fmt.Errorf("reading the agent's RBAC: %w", err)
	}
	manifest, err := b.agentManifest(filepath.Join(repo, "deploy", "podnic.yaml"))
	if err != nil {
		return err
	}
	host, port, _ := strings.Cut(strings.TrimPrefix(APIServer, "https://"), ":")
	for _, step := range []struct {
		stdin string
		args  []string
	}{
		{string(rbac), []string{"apply", "-f", "-"}},
		{"", []string{"-n", "kube-system", "create", "configmap", "podnic-api-server",
			"--from-literal=KUBERNETES_SERVICE_HOST=" + host, "--from-literal=KUBERNETES_SERVICE_PORT=" + port}},
		{"", []string{"label", "node", NodeName, "node.podnic.io/exclusive-nic=true"}},
		{manifest, []string{"apply", "-f", "-"}},
	} {
		if out, err := b.Kubectl(ctx, step.stdin, step.args...); err != nil {
			return fmt.Errorf("deploying podnic-agent: kubectl %s: %w\n%s", strings.Join(step.args, " "), err, out)
		}
	}
	return nil
}

// agentManifest returns the manifest at path with what a cluster admin sets
// for this node pool, as JSON: the box's image (never pulled), its CNI
// config and Service CIDRs, and the box's folders for the host paths the
// agent writes (containerd here reads CNI files from the box's folders,
// and the machine's /opt/cni, /etc/cni and /run/podnic stay untouched).
// On a cgroup v1 machine the agent mounts cgroup v2 itself: no
// cgroup-root.
func (b *Box) agentManifest(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading the agent's manifest: %w", err)
	}
	var st unix.Statfs_t
	cgroup2 := unix.Statfs("/sys/fs/cgroup", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
	hostPaths := map[string]string{
		"/opt/cni/bin":   filepath.Join(b.Dir, "cni", "bin"),
		"/etc/cni/net.d": filepath.Join(b.Dir, "cni", "net.d"),
		"/run/podnic":    b.runPodnic(),
	}
	var items []any
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return "", fmt.Errorf("parsing %s: %w", path, err)
		}
		switch obj["kind"] {
		case "ConfigMap":
			d, _ := obj["data"].(map[string]any)
			agent, _ := d["agent.yaml"].(string)
			if agent == "" || d["10-podnic.conflist"] == nil {
				return "", fmt.Errorf("%s: ConfigMap %v has no agent.yaml or 10-podnic.conflist", path, obj["metadata"])
			}
			var lines []string
			for _, l := range strings.Split(agent, "\n") {
				switch {
				case strings.HasPrefix(l, "service-cidr:"):
					l = "service-cidr: " + ServiceV4 + "," + ServiceV6
				case strings.HasPrefix(l, "cgroup-root:") && !cgroup2:
					continue
				}
				lines = append(lines, l)
			}
			d["agent.yaml"] = strings.Join(lines, "\n")
			d["10-podnic.conflist"] = b.conflist("full")
		case "DaemonSet":
			spec, err := podSpec(obj)
			if err != nil {
				return "", fmt.Errorf("%s: %w", path, err)
			}
			for _, c := range spec["containers"].([]any) {
				c := c.(map[string]any)
				c["image"], c["imagePullPolicy"] = AgentImage, "Never"
			}
			for _, v := range spec["volumes"].([]any) {
				if hp, ok := v.(map[string]any)["hostPath"].(map[string]any); ok {
					if to, ok := hostPaths[hp["path"].(string)]; ok {
						hp["path"] = to
					}
				}
			}
		}
		items = append(items, obj)
	}
	out, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	return string(out), err
}

// podSpec returns a DaemonSet's pod spec, with containers and volumes.
func podSpec(ds map[string]any) (map[string]any, error) {
	spec, _ := ds["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	pod, _ := tmpl["spec"].(map[string]any)
	if _, ok := pod["containers"].([]any); !ok {
		return nil, errors.New("a DaemonSet without containers")
	}
	if _, ok := pod["volumes"].([]any); !ok {
		return nil, errors.New("a DaemonSet without volumes")
	}
	return pod, nil
}

// dockerImage is what dockerfileImage read.
type dockerImage struct {
	files      map[string]string // path in the image → file on this machine
	entrypoint []string
	env        []string // KEY=value
}

// dockerfileImage reads a Dockerfile "FROM scratch" of the one form
// deploy/Dockerfile uses (COPY of `make build`'s binaries, bin/..., into
// one folder; ENV; ENTRYPOINT) and returns the image's files (the binaries
// of those names in bin, which the box built), entrypoint and environment.
func dockerfileImage(path, bin string) (dockerImage, error) {
	img := dockerImage{files: map[string]string{}}
	data, err := os.ReadFile(path)
	if err != nil {
		return img, fmt.Errorf("reading the Dockerfile: %w", err)
	}
	from := ""
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch fields[0] {
		case "FROM":
			from = strings.Join(fields[1:], " ")
		case "COPY":
			if len(fields) < 3 || !strings.HasSuffix(fields[len(fields)-1], "/") {
				return img, fmt.Errorf("%s: %q: want COPY <files> <folder>/", path, line)
			}
			dst := strings.TrimPrefix(fields[len(fields)-1], "/")
			for _, src := range fields[1 : len(fields)-1] {
				if !strings.HasPrefix(src, "bin/") {
					return img, fmt.Errorf("%s: COPY %s: the box has only the binaries of bin/", path, src)
				}
				img.files[dst+filepath.Base(src)] = filepath.Join(bin, filepath.Base(src))
			}
		case "ENV":
			for _, kv := range fields[1:] {
				if !strings.Contains(kv, "=") {
					return img, fmt.Errorf("%s: ENV %s: want KEY=value", path, kv)
				}
				img.env = append(img.env, kv)
			}
		case "ENTRYPOINT":
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "ENTRYPOINT")), &img.entrypoint); err != nil {
				return img, fmt.Errorf("%s: ENTRYPOINT: %w", path, err)
			}
		default:
			return img, fmt.Errorf("%s: %s: the box builds only FROM, COPY, ENV and ENTRYPOINT", path, fields[0])
		}
	}
	if from != "scratch" || len(img.files) == 0 || len(img.entrypoint) == 0 {
		return img, fmt.Errorf("%s: want FROM scratch, COPY and ENTRYPOINT", path)
	}
	return img, nil
}
