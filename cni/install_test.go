package cni

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const installConflist = `{"cniVersion": "1.0.0", "name": "eni-pool", "plugins": [
  {"type": "podnic", "devicePool": {"names": ["eth1", "eth2"]}, "serviceCIDRs": ["10.96.0.0/12"],
   "ipam": {"type": "podnic", "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}]]}}]}`

// installFixture is a node's CNI dirs and an image's files.
type installFixture struct {
	in               Installation
	binDir, confDir  string
	pluginData, conf []byte
}

func newInstallFixture(t *testing.T, confName, conf string) *installFixture {
	t.Helper()
	d := t.TempDir()
	f := &installFixture{binDir: filepath.Join(d, "bin"), confDir: filepath.Join(d, "net.d"),
		pluginData: []byte("#!/bin/true podnic\n"), conf: []byte(conf)}
	for _, dir := range []string{f.binDir, f.confDir, filepath.Join(d, "image")} {
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	f.in = Installation{Plugin: filepath.Join(d, "image", "podnic"), BinDir: f.binDir,
		Config: filepath.Join(d, "image", confName), ConfDir: f.confDir}
	if err := os.WriteFile(f.in.Plugin, f.pluginData, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.in.Config, f.conf, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// files lists both dirs, temporary files included.
func (f *installFixture) files(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{f.binDir, f.confDir} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			out = append(out, filepath.Join(filepath.Base(dir), e.Name()))
		}
	}
	return out
}

func TestInstallNodeWritesThePluginAndConfigOnce(t *testing.T) {
	f := newInstallFixture(t, "10-podnic.conflist", installConflist)
	changed, err := InstallNode(f.in)
	if err != nil {
		t.Fatal(err)
	}
	plugin, conf := filepath.Join(f.binDir, "podnic"), filepath.Join(f.confDir, "10-podnic.conflist")
	if !slices.Equal(changed, []string{plugin, conf}) {
		t.Errorf("changed %v, want the plugin and the config", changed)
	}
	if got := f.files(t); !slices.Equal(got, []string{"bin/podnic", "net.d/10-podnic.conflist"}) {
		t.Errorf("dirs hold %v", got)
	}
	for path, want := range map[string]os.FileMode{plugin: 0o755, conf: 0o644} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	if data, _ := os.ReadFile(conf); string(data) != installConflist {
		t.Errorf("installed config differs: %s", data)
	}

	// The same files again: nothing written (the runtime reloads on any
	// write to its config dir).
	if changed, err = InstallNode(f.in); err != nil || len(changed) != 0 {
		t.Errorf("second install: changed %v, err %v; want nothing", changed, err)
	}
	// A new config: only it.
	newConf := strings.Replace(installConflist, "eth2", "eth3", 1)
	if err := os.WriteFile(f.in.Config, []byte(newConf), 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err = InstallNode(f.in); err != nil || !slices.Equal(changed, []string{conf}) {
		t.Errorf("changed config: changed %v, err %v; want only %s", changed, err, conf)
	}
	if data, _ := os.ReadFile(conf); string(data) != newConf {
		t.Errorf("installed config is not the new one: %s", data)
	}
}

func TestInstallNodeAcceptsAChainedConfig(t *testing.T) {
	f := newInstallFixture(t, "10-chained.conflist", `{"cniVersion": "1.1.0", "name": "vf-pool", "plugins": [
	  {"type": "sriov", "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.2.0.0/24"}]]}},
	  {"type": "podnic"}]}`)
	if _, err := InstallNode(f.in); err != nil {
		t.Fatal(err)
	}
}

func TestInstallNodeRefusesABadConfigAndChangesNothing(t *testing.T) {
	for _, c := range []struct{ name, file, conf, want string }{
		{"not JSON", "10-podnic.conflist", `{"name": "x", "plugins": [`, "unexpected end of JSON"},
		{"no plugins", "10-podnic.conflist", `{"cniVersion": "1.0.0", "name": "x", "plugins": []}`, "no plugins"},
		{"no podnic plugin", "10-podnic.conflist", `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}]}`, `no plugin of type "podnic"`},
		{"bad servicePath", "10-podnic.conflist", strings.Replace(installConflist, `"serviceCIDRs"`, `"servicePath": "fast", "serviceCIDRs"`, 1), "servicePath"},
		{"no ipam", "10-podnic.conflist", `{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "podnic", "deviceName": "eth1"}]}`, "ipam is missing"},
		{"single plugin .conf", "10-podnic.conf", `{"cniVersion": "0.4.0", "name": "eni", "type": "podnic", "deviceName": "eth1", "ipam": {"type": "podnic"}}`, "write the config as a .conflist"},
		{"file runtimes skip", "10-podnic.yaml", installConflist, "write the config as a .conflist"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newInstallFixture(t, c.file, c.conf)
			// What was there before stays as it was.
			old := filepath.Join(f.confDir, c.file)
			if err := os.WriteFile(old, []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			changed, err := InstallNode(f.in)
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("err %v, want ErrInvalidConfig mentioning %q", err, c.want)
			}
			if len(changed) != 0 {
				t.Errorf("changed %v", changed)
			}
			if got := f.files(t); !slices.Equal(got, []string{"net.d/" + c.file}) {
				t.Errorf("dirs hold %v, want only the old config", got)
			}
			if data, _ := os.ReadFile(old); string(data) != "old" {
				t.Errorf("the old config became %q", data)
			}
		})
	}
}

func TestInstallNodeWithoutThePluginWritesNoConfig(t *testing.T) {
	f := newInstallFixture(t, "10-podnic.conflist", installConflist)
	if err := os.Remove(f.in.Plugin); err != nil {
		t.Fatal(err)
	}
	if _, err := InstallNode(f.in); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err %v, want the missing plugin", err)
	}
	if got := f.files(t); len(got) != 0 {
		t.Errorf("dirs hold %v, want nothing", got)
	}
}
