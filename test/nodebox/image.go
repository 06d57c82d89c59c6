package nodebox

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// imageFile is one file of an image: its content comes from a file on this
// machine, or it is a symlink.
type imageFile struct {
	from    string // path of the content
	link    string // symlink target, if a symlink
	mode    int64
	content []byte
}

// writeImages writes the pause and workload images as OCI image layout
// tarballs for `ctr images import`.
func (b *Box) writeImages() error {
	pause := map[string]imageFile{
		"pause": {from: filepath.Join(b.Bin, "podnic-pause"), mode: 0o755},
	}
	echo := map[string]imageFile{
		"podnic-echo": {from: filepath.Join(b.Bin, "podnic-echo"), mode: 0o755},
		"podnic-get":  {from: filepath.Join(b.Bin, "podnic-get"), mode: 0o755},
		"bin/busybox": {from: "/bin/busybox", mode: 0o755},
		"etc/passwd":  {content: []byte("root:x:0:0:root:/:/bin/sh\n"), mode: 0o644},
	}
	for _, tool := range []string{"sh", "sleep", "cat", "ip", "ls", "ps", "echo", "hostname"} {
		echo["bin/"+tool] = imageFile{link: "busybox"}
	}
	if err := writeImage(filepath.Join(b.Dir, "images", "pause.tar"), PauseImage, pause, []string{"/pause"}, imageEnv); err != nil {
		return err
	}
	return writeImage(filepath.Join(b.Dir, "images", "echo.tar"), EchoImage, echo, []string{"/podnic-echo"}, imageEnv)
}

// imageEnv is the environment of the box's own images.
var imageEnv = []string{"PATH=/bin:/"}

// writeImage writes an OCI image layout, as a tar, holding one image named
// name with one uncompressed layer of files, entrypoint and env.
func writeImage(path, name string, files map[string]imageFile, entrypoint, env []string) error {
	var layer bytes.Buffer
	lw := tar.NewWriter(&layer)
	dirs := map[string]bool{}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	epoch := time.Unix(0, 0)
	for _, n := range names {
		for d := filepath.Dir(n); d != "."; d = filepath.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: epoch}); err != nil {
					return err
				}
			}
		}
		f := files[n]
		if f.link != "" {
			if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: n, Linkname: f.link, Mode: 0o777, ModTime: epoch}); err != nil {
				return err
			}
			continue
		}
		data := f.content
		if f.from != "" {
			var err error
			if data, err = os.ReadFile(f.from); err != nil {
				return err
			}
		}
		if err := lw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: f.mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		if _, err := lw.Write(data); err != nil {
			return err
		}
	}
	if err := lw.Close(); err != nil {
		return err
	}

	blobs := map[string][]byte{}
	add := func(data []byte) (string, int) {
		sum := sha256.Sum256(data)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[hex.EncodeToString(sum[:])] = data
		return d, len(data)
	}
	layerDigest, layerSize := add(layer.Bytes())
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"Env":        env,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return err
	}
	configDigest, configSize := add(config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": configSize},
		"layers":        []any{map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layerDigest, "size": layerSize}},
	})
	if err != nil {
		return err
	}
	manifestDigest, manifestSize := add(manifest)
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []any{map[string]any{
			"mediaType": "application/vnd.oci.image.manifest.v1+json",
			"digest":    manifestDigest,
			"size":      manifestSize,
			"platform":  map[string]string{"architecture": runtime.GOARCH, "os": "linux"},
			"annotations": map[string]string{
				"io.containerd.image.name":          name,
				"org.opencontainers.image.ref.name": name,
			},
		}},
	})
	if err != nil {
		return err
	}

	out, err := os.Create(path)
	if err != nil {
		return err
	}
	defer out.Close()
	tw := tar.NewWriter(out)
	write := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := write("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := write("index.json", index); err != nil {
		return err
	}
	hexes := make([]string, 0, len(blobs))
	for h := range blobs {
		hexes = append(hexes, h)
	}
	sort.Strings(hexes)
	for _, h := range hexes {
		if err := write("blobs/sha256/"+h, blobs[h]); err != nil {
			return fmt.Errorf("writing image %s: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return out.Close()
}

// ImportImage builds an image called name holding files (path in the
// image → file on this machine, mode 0755) with entrypoint, and imports it
// into the box's containerd for pods with imagePullPolicy: Never.
func (b *Box) ImportImage(ctx context.Context, name string, files map[string]string, entrypoint []string) error {
	return b.importImage(ctx, name, files, entrypoint, imageEnv)
}

func (b *Box) importImage(ctx context.Context, name string, files map[string]string, entrypoint, env []string) error {
	content := map[string]imageFile{}
	for in, from := range files {
		content[in] = imageFile{from: from, mode: 0o755}
	}
	path := filepath.Join(b.Dir, "images", strings.NewReplacer("/", "_", ":", "_").Replace(name)+".tar")
	if err := writeImage(path, name, content, entrypoint, env); err != nil {
		return fmt.Errorf("building image %s: %w", name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", "--address", b.containerdSocket(), "-n", "k8s.io", "images", "import", path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("importing %s: %w\n%s", name, err, out)
	}
	return nil
}
