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
)

// AgentImage is the image of deploy/Dockerfile's layout that the box builds
// for the DaemonSet (Options.AgentDaemonSet).
const AgentImage = "podnic.test/podnic:v1"

// runPodnic is the folder that stands in for the node's /run/podnic for
// the DaemonSet's agent: its local API socket is there.
func (b *Box) runPodnic() string { return filepath.Join(b.Dir, "run-podnic") }

// deployAgent runs podnic-agent as a cluster admin would: the image of
// deploy/Dockerfile, the API server's address in ConfigMap
// podnic-api-server, the pool's label on the node, and `helm install` of
// the chart deploy/helm/podnic with the box's values (chartValues). The
// chart's defaults are deploy/'s plain manifests (test/deploy checks it).
func (b *Box) deployAgent(ctx context.Context, repo, helm string) error {
	img, err := dockerfileImage(filepath.Join(repo, "deploy", "Dockerfile"), b.Bin)
	if err != nil {
		return err
	}
	if err := b.importImage(ctx, AgentImage, img.files, img.entrypoint, img.env); err != nil {
		return err
	}
	values, err := b.chartValues()
	if err != nil {
		return err
	}
	vf := filepath.Join(b.Dir, "podnic-values.json")
	if err := os.WriteFile(vf, values, 0o600); err != nil {
		return err
	}
	b.helm = helm
	host, port, _ := strings.Cut(strings.TrimPrefix(APIServer, "https://"), ":")
	for _, args := range [][]string{
		{"-n", "kube-system", "create", "configmap", "podnic-api-server",
			"--from-literal=KUBERNETES_SERVICE_HOST=" + host, "--from-literal=KUBERNETES_SERVICE_PORT=" + port},
		{"label", "node", NodeName, "node.podnic.io/exclusive-nic=true"},
	} {
		if out, err := b.Kubectl(ctx, "", args...); err != nil {
			return fmt.Errorf("deploying podnic-agent: %w\n%s", err, out)
		}
	}
	if out, err := b.Helm(ctx, "install", "podnic", ChartDir(repo), "--namespace", "kube-system", "--values", vf); err != nil {
		return fmt.Errorf("deploying podnic-agent: %w\n%s", err, out)
	}
	return nil
}

// ChartDir is podnic's Helm chart in the repository at repo.
func ChartDir(repo string) string { return filepath.Join(repo, "deploy", "helm", "podnic") }

// Helm runs helm against the box's API server as admin, with its cache,
// config and data in the box's folder (Options.AgentDaemonSet only).
func (b *Box) Helm(ctx context.Context, args ...string) (string, error) {
	if b.helm == "" {
		return "", errors.New("the box has no helm (Options.Helm)")
	}
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := b.nsenter(ctx, false, append([]string{b.helm, "--kubeconfig", b.Kubeconfig()}, args...)...)
	home := filepath.Join(b.Dir, "helm")
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home+"/cache", "HELM_CONFIG_HOME="+home+"/config", "HELM_DATA_HOME="+home+"/data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("helm %s: %w", strings.Join(args, " "), err)
	}
	return string(out), nil
}

// chartValues are what a cluster admin sets for this node pool: the box's
// image (never pulled), Service CIDRs and CNI plugin config, and the box's
// folders for the host paths the agent writes (containerd here reads CNI
// files from the box's folders, and the machine's /opt/cni, /etc/cni and
// /run/podnic stay untouched). On a cgroup v1 machine the agent mounts
// cgroup v2 itself: no cgroupRoot.
func (b *Box) chartValues() ([]byte, error) {
	var conf struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(b.conflist("full")), &conf); err != nil {
		return nil, fmt.Errorf("the box's CNI config: %w", err)
	}
	if len(conf.Plugins) != 1 {
		return nil, fmt.Errorf("the box's CNI config has %d plugins, want 1", len(conf.Plugins))
	}
	plugin := conf.Plugins[0]
	delete(plugin, "type")
	delete(plugin, "serviceCIDRs")
	var st unix.Statfs_t
	cgroupRoot := "/host/sys/fs/cgroup"
	if unix.Statfs("/sys/fs/cgroup", &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		cgroupRoot = ""
	}
	return json.Marshal(map[string]any{
		"image":        map[string]any{"repository": strings.Split(AgentImage, ":")[0], "tag": strings.Split(AgentImage, ":")[1], "pullPolicy": "Never"},
		"serviceCIDRs": []string{ServiceV4, ServiceV6},
		"cgroupRoot":   cgroupRoot,
		"agentRunDir":  b.runPodnic(),
		"cni": map[string]any{
			"binDir": filepath.Join(b.Dir, "cni", "bin"), "confDir": filepath.Join(b.Dir, "cni", "net.d"),
			"plugin": plugin,
		},
	})
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
