package k8s

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Users the API server knows, by name.
const (
	AdminUser = "admin"        // in system:masters
	AgentUser = "podnic-agent" // no rights until a test binds a role
)

// ServiceCIDRs is the --service-cluster-ip-range of the API server.
const ServiceCIDRs = "10.96.0.0/16,fd00:96::/108"

// EnvBinDir names the environment variable that points at prebuilt binaries
// (kube-apiserver, kubectl, etcd, ...), skipping scripts/k8s-binaries.sh.
const EnvBinDir = "PODNIC_K8S_BIN"

const (
	readyTimeout = 60 * time.Second // etcd, then the API server's /readyz
	stopTimeout  = 10 * time.Second // from SIGTERM to SIGKILL
	cmdTimeout   = 60 * time.Second // one kubectl or HTTP call
	logTail      = 64 << 10         // bytes of each log shown on failure
)

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	BinDir string // the directory holding kube-apiserver, kubectl, etcd, ...
	Server string // https://127.0.0.1:<port>
	Dir    string // temporary directory: data, certificates, logs, kubeconfigs

	t           testing.TB
	tokens      map[string]string // user -> bearer token
	kubeconfigs map[string]string // user -> kubeconfig path
	client      *http.Client
}

// process is a child started by Start and stopped at cleanup.
type process struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // exit status, valid after done
}

// Start starts etcd and kube-apiserver and waits until the API server is
// ready. Both stop, and their files go, when the test ends; their logs are
// shown if it failed.
func Start(t testing.TB) *Cluster {
	t.Helper()
	bin := binDir(t)
	for _, b := range []string{"etcd", "kube-apiserver", "kubectl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			t.Fatalf("k8s binaries in %s: %v", bin, err)
		}
	}

	c := &Cluster{
		BinDir:      bin,
		Dir:         t.TempDir(),
		t:           t,
		tokens:      map[string]string{AdminUser: randomToken(t), AgentUser: randomToken(t)},
		kubeconfigs: map[string]string{},
	}
	etcdClient, etcdPeer, apiPort := freePort(t), freePort(t), freePort(t)
	c.Server = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	start := time.Now()

	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdClient)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(etcdPeer)
	etcd := c.startProcess("etcd",
		"--name=podnic-test",
		"--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL,
		"--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL,
		"--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=podnic-test="+peerURL,
		// Test data need not survive a power cut; fsync dominates
		// etcd's latency on a busy disk.
		"--unsafe-no-fsync",
	)
	c.waitFor(etcd, &http.Client{Timeout: time.Second}, etcdURL+"/health", nil)

	pki := filepath.Join(c.Dir, "pki")
	saKey, saPub := writeServiceAccountKeys(t, pki)
	tokenFile := filepath.Join(c.Dir, "tokens.csv")
	writeFile(t, tokenFile, fmt.Sprintf("%s,%s,%s-uid,\"system:masters\"\n%s,%s,%s-uid\n",
		c.tokens[AdminUser], AdminUser, AdminUser, c.tokens[AgentUser], AgentUser, AgentUser))

	apiserver := c.startProcess("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(apiPort),
		// With no --tls-cert-file the server makes a self-signed chain
		// for the advertise address in cert-dir; kubeconfigs trust it.
		"--cert-dir="+pki,
		"--token-auth-file="+tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-key-file="+saPub,
		"--service-account-signing-key-file="+saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range="+ServiceCIDRs,
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
	)
	// The serving certificate exists only once the server has started, so
	// poll /readyz without verifying it; everything after trusts it.
	insecure := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	c.waitFor(apiserver, insecure, c.Server+"/readyz", http.Header{
		"Authorization": {"Bearer " + c.tokens[AdminUser]},
	})

	ca := c.caFile()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(readFile(t, ca)) {
		t.Fatalf("no certificates in %s", ca)
	}
	c.client = &http.Client{
		Timeout:   cmdTimeout,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	for user, token := range c.tokens {
		path := filepath.Join(c.Dir, "kubeconfig-"+user)
		writeFile(t, path, kubeconfig(c.Server, ca, user, token))
		c.kubeconfigs[user] = path
	}
	t.Logf("etcd and kube-apiserver ready in %v at %s", time.Since(start).Round(time.Millisecond), c.Server)
	return c
}

// AdminKubeconfig returns the path of a kubeconfig for AdminUser.
func (c *Cluster) AdminKubeconfig() string { return c.Kubeconfig(AdminUser) }

// Kubeconfig returns the path of a kubeconfig for user, AdminUser or AgentUser.
func (c *Cluster) Kubeconfig(user string) string {
	path, ok := c.kubeconfigs[user]
	if !ok {
		c.t.Fatalf("no kubeconfig for user %q (have %q and %q)", user, AdminUser, AgentUser)
	}
	return path
}

// Token returns user's bearer token.
func (c *Cluster) Token(user string) string {
	token, ok := c.tokens[user]
	if !ok {
		c.t.Fatalf("no token for user %q (have %q and %q)", user, AdminUser, AgentUser)
	}
	return token
}

// Kubectl runs the built kubectl as user with stdin and returns its combined
// output; err is non-nil if it exits non-zero (as `auth can-i` does for "no").
func (c *Cluster) Kubectl(user, stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir, "kubectl"),
		append([]string{"--kubeconfig=" + c.Kubeconfig(user)}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		err = fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return string(out), err
}

// Apply applies the manifests in yaml as AdminUser and fails the test if
// kubectl does.
func (c *Cluster) Apply(t testing.TB, yaml string) {
	t.Helper()
	out, err := c.Kubectl(AdminUser, yaml, "apply", "-f", "-")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("kubectl apply: %s", strings.TrimSpace(out))
}

// Get sends GET path (such as "/api/v1/services?watch=1&timeoutSeconds=1")
// to the API server as user and returns the status code and the whole body.
func (c *Cluster) Get(user, path string) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodGet, c.Server+path, nil)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token(user))
	resp, err := c.client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("get %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, body, fmt.Errorf("read %s: %w", path, err)
	}
	return resp.StatusCode, body, nil
}

// caFile is the serving chain kube-apiserver wrote to its cert dir; it holds
// the leaf and the CA that signed it.
func (c *Cluster) caFile() string {
	return filepath.Join(c.Dir, "pki", "apiserver.crt")
}

// startProcess starts BinDir/name with args, its output going to
// Dir/name.log, and registers its stop with t.Cleanup.
func (c *Cluster) startProcess(name string, args ...string) *process {
	t := c.t
	t.Helper()
	p := &process{name: name, log: filepath.Join(c.Dir, name+".log"), done: make(chan struct{})}
	logFile, err := os.Create(p.log)
	if err != nil {
		t.Fatalf("create log of %s: %v", name, err)
	}
	p.cmd = exec.Command(filepath.Join(c.BinDir, name), args...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	// If the test binary dies without cleaning up (a timeout panic), the
	// kernel kills the children rather than leaving them to hold ports.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() { c.stopProcess(p) })
	return p
}

// stopProcess ends p with SIGTERM, then SIGKILL after stopTimeout, and shows
// its log if the test failed or p had died on its own.
func (c *Cluster) stopProcess(p *process) {
	t := c.t
	diedEarly := false
	select {
	case <-p.done:
		diedEarly = true
		if !t.Failed() {
			t.Errorf("%s (pid %d) exited before the test ended: %v", p.name, p.cmd.Process.Pid, p.err)
		}
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(stopTimeout):
			t.Logf("%s (pid %d) ignored SIGTERM for %v; killing it", p.name, p.cmd.Process.Pid, stopTimeout)
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if diedEarly || t.Failed() {
		t.Logf("--- %s log (%s), last %d KiB ---\n%s", p.name, p.log, logTail>>10, tail(p.log, logTail))
	}
}

// waitFor polls url until it answers 200, failing the test if p exits or
// readyTimeout passes first.
func (c *Cluster) waitFor(p *process, client *http.Client, url string, header http.Header) {
	t := c.t
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var last string
	for {
		select {
		case <-p.done:
			t.Fatalf("%s exited while starting: %v (its log follows at cleanup)", p.name, p.err)
		default:
		}
		last = probe(client, url, header)
		if last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v: %s: %s (its log follows at cleanup)", p.name, readyTimeout, url, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// probe returns "" if GET url answers 200, else what went wrong.
func probe(client *http.Client, url string, header http.Header) string {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	req.Header = header
	resp, err := client.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	return ""
}

// binDir returns the directory of the binaries: $PODNIC_K8S_BIN, or the last
// line printed by scripts/k8s-binaries.sh, which builds them if need be.
func binDir(t testing.TB) string {
	t.Helper()
	if dir := os.Getenv(EnvBinDir); dir != "" {
		return dir
	}
	script := findScript(t)
	t.Logf("%s is not set; running %s (reuses its cache, else builds etcd, kube-apiserver and kubectl: minutes when cold)", EnvBinDir, script)
	cmd := exec.Command(script, "kube-apiserver", "kubectl", "etcd")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatalf("k8s-binaries.sh: %v", err)
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", script, err)
	}
	// Relay progress as it comes: a cold build is long enough that a
	// silent test looks hung.
	var progress []string
	lines := bufio.NewScanner(stderr)
	for lines.Scan() {
		progress = append(progress, lines.Text())
		t.Log(lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s failed after %v (CI must be able to build these; set %s to use prebuilt binaries): %v\n%s",
			script, time.Since(start).Round(time.Second), EnvBinDir, err, strings.Join(progress, "\n"))
	}
	out := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return out[len(out)-1]
}

// findScript walks up from the working directory, which go test sets to the
// package's directory, to the repository root.
func findScript(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		script := filepath.Join(dir, "scripts", "k8s-binaries.sh")
		if _, err := os.Stat(script); err == nil {
			return script
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("scripts/k8s-binaries.sh not found above the working directory; set %s", EnvBinDir)
		}
		dir = parent
	}
}

// writeServiceAccountKeys writes the key pair that signs and verifies
// service-account tokens into dir and returns the two paths.
func writeServiceAccountKeys(t testing.TB, dir string) (keyFile, pubFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate service-account key: %v", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("marshal service-account key: %v", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatalf("marshal service-account public key: %v", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("create %s: %v", dir, err)
	}
	keyFile, pubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})))
	writeFile(t, pubFile, string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})))
	return keyFile, pubFile
}

// kubeconfig returns a kubeconfig for one user with a bearer token.
func kubeconfig(server, caFile, user, token string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: podnic-test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    token: %s
contexts:
- name: %s
  context:
    cluster: podnic-test
    user: %s
current-context: %s
`, server, caFile, user, token, user, user, user)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func randomToken(t testing.TB) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random token: %v", err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

// tail returns at most the last n bytes of the file at path.
func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err.Error()
	}
	if off := info.Size() - n; off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return err.Error()
		}
	}
	b, err := io.ReadAll(f)
	if err != nil && !errors.Is(err, io.EOF) {
		return err.Error()
	}
	return string(b)
}
