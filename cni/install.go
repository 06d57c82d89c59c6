package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

// PluginName is the file name of the podnic plugin in a CNI bin dir, the
// "type" of its configs.
const PluginName = "podnic"

// Installation says what InstallNode puts on a node: the plugin binary into
// BinDir (as "podnic") and the CNI config file Config into ConfDir, under
// its own base name.
type Installation struct {
	Plugin  string // the podnic plugin binary to copy
	BinDir  string // the runtime's CNI bin dir, e.g. /opt/cni/bin
	Config  string // a .conflist file
	ConfDir string // the runtime's CNI config dir, e.g. /etc/cni/net.d
}

// InstallNode checks the config (as the runtime will read it, and each
// podnic plugin in it as the plugin will) and then writes the plugin and
// the config, each through a temporary file renamed into place, so the
// runtime never sees half a file and a running ADD keeps its binary. The
// plugin goes first: a config never names a plugin not there yet. A file
// whose content is already in place is left alone (the runtime reloads
// its config on every write). A bad config changes nothing.
func InstallNode(in Installation) (changed []string, err error) {
	conf, err := os.ReadFile(in.Config)
	if err != nil {
		return nil, fmt.Errorf("installing the CNI config: %w", err)
	}
	if err := ValidateConfigFile(filepath.Base(in.Config), conf); err != nil {
		return nil, fmt.Errorf("installing the CNI config %s: %w", in.Config, err)
	}
	plugin, err := os.ReadFile(in.Plugin)
	if err != nil {
		return nil, fmt.Errorf("installing the podnic plugin: %w", err)
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(in.BinDir, PluginName), plugin, 0o755},
		{filepath.Join(in.ConfDir, filepath.Base(in.Config)), conf, 0o644},
	} {
		wrote, err := replaceFile(f.path, f.data, f.mode)
		if err != nil {
			return changed, err
		}
		if wrote {
			changed = append(changed, f.path)
		}
	}
	return changed, nil
}

// ValidateConfigFile checks a CNI config list file named name as a runtime
// loads it, and every podnic
// plugin in it with ParseConfig, as the plugin would be called: with the
// network's name and version, and, after another plugin, a prevResult.
func ValidateConfigFile(name string, data []byte) error {
	if filepath.Ext(name) != ".conflist" {
		return fmt.Errorf("%w: file name %q: write the config as a .conflist (runtimes skip other names, and libcni deprecates single-plugin .conf files)", ErrInvalidConfig, name)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	found := false
	for i, p := range list.Plugins {
		if p.Network.Type != PluginName {
			continue
		}
		found = true
		var m map[string]any
		if err := json.Unmarshal(p.Bytes, &m); err != nil {
			return fmt.Errorf("%w: plugin %d: %w", ErrInvalidConfig, i, err)
		}
		m["name"], m["cniVersion"] = list.Name, list.CNIVersion
		if i > 0 {
			m["prevResult"] = map[string]any{"cniVersion": list.CNIVersion}
		}
		raw, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("%w: plugin %d: %w", ErrInvalidConfig, i, err)
		}
		if _, err := ParseConfig(raw); err != nil {
			return fmt.Errorf("plugin %d: %w", i, err)
		}
	}
	if !found {
		return fmt.Errorf("%w: no plugin of type %q in network %q", ErrInvalidConfig, PluginName, list.Name)
	}
	return nil
}

// replaceFile puts data at path with mode unless path already holds it,
// through a temporary file in the same directory renamed over path.
func replaceFile(path string, data []byte, mode os.FileMode) (bool, error) {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == mode {
			return false, nil
		}
	}
	dir, base := filepath.Split(path)
	f, err := os.CreateTemp(dir, "."+base+".tmp-")
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	success := false
	defer func() {
		if !success {
			os.Remove(tmp)
		}
	}()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return false, fmt.Errorf("writing %s: %w", path, err)
	}
	success = true
	return true, nil
}
