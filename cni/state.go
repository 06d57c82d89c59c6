package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// State is what ADD leaves for DEL, CHECK and GC: enough to undo every
// step even when the runtime no longer knows the netns or the device.
// It is written atomically before each step of ADD whose undo needs it
// (VF settings, the device's move; every undo accepts a step that never
// happened) and once more, with the addresses, while the pod is
// configured; undoing the address allocation and the attachment needs
// only the owner (container and interface), which the first write
// records.
type State struct {
	Version     int       `json:"version"`
	Network     string    `json:"network"`
	ContainerID string    `json:"containerID"`
	Ifname      string    `json:"ifname"`
	Netns       string    `json:"netns"`
	Chained     bool      `json:"chained"`
	Created     time.Time `json:"created"`

	// Exclusive mode: the device as it was on the host, for MoveOut.
	Device json.RawMessage `json:"device,omitempty"`
	// VF settings as they were, for restoring them through the PF.
	VF json.RawMessage `json:"vf,omitempty"`
	// MAC is the pod NIC's address, for CHECK.
	MAC string `json:"mac,omitempty"`
	// PCIAddress is the VF handed to the pod bound to a DPDK driver: it
	// has no netdev to move, so this claim is what keeps a second pod
	// off it.
	PCIAddress string `json:"pciAddress,omitempty"`

	IPAMType  string   `json:"ipamType,omitempty"`
	Addresses []string `json:"addresses,omitempty"` // CIDR notation

	BPFRoot    string `json:"bpfRoot"`
	AttachMode string `json:"attachMode,omitempty"`
	Attached   bool   `json:"attached"`
}

const stateVersion = 1

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]`)

// owner is the key of an attachment in bpffs and in the state dir: the
// container id and interface, made safe for bpffs (no dots).
func owner(containerID, ifname string) string {
	o := unsafeName.ReplaceAllString(containerID, "_") + "--" + unsafeName.ReplaceAllString(ifname, "_")
	if len(o) > 128 {
		o = o[:128]
	}
	return o
}

func statePath(dir, network, containerID, ifname string) string {
	return filepath.Join(dir, unsafeName.ReplaceAllString(network, "_"), owner(containerID, ifname)+".json")
}

// save writes the state atomically: a crash leaves the old or the new
// state, never a torn one.
func (s *State) save(dir string) error {
	s.Version = stateVersion
	path := statePath(dir, s.Network, s.ContainerID, s.Ifname)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("writing state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("syncing state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// loadState reads the state of one attachment; a missing state is
// (nil, nil).
func loadState(dir, network, containerID, ifname string) (*State, error) {
	b, err := os.ReadFile(statePath(dir, network, containerID, ifname))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("decoding state %s: %w", statePath(dir, network, containerID, ifname), err)
	}
	return &s, nil
}

func removeState(dir, network, containerID, ifname string) error {
	err := os.Remove(statePath(dir, network, containerID, ifname))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing state: %w", err)
	}
	return nil
}

// listStates returns every attachment state of a network, oldest first.
func listStates(dir, network string) ([]*State, error) {
	return readStates(filepath.Join(dir, unsafeName.ReplaceAllString(network, "_")))
}

// dpdkHolder returns the attachment, of any network in dir, that holds the
// DPDK-bound VF at pci, other than (containerID, ifname); nil when none.
func dpdkHolder(dir, pci, containerID, ifname string) (*State, error) {
	nets, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing states: %w", err)
	}
	for _, n := range nets {
		if !n.IsDir() {
			continue
		}
		states, err := readStates(filepath.Join(dir, n.Name()))
		if err != nil {
			return nil, err
		}
		for _, s := range states {
			if s.PCIAddress == pci && (s.ContainerID != containerID || s.Ifname != ifname) {
				return s, nil
			}
		}
	}
	return nil, nil
}

// readStates reads the states in one network's dir, oldest first.
func readStates(netDir string) ([]*State, error) {
	entries, err := os.ReadDir(netDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing states: %w", err)
	}
	var out []*State
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(netDir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading state: %w", err)
		}
		var s State
		if err := json.Unmarshal(b, &s); err != nil {
			continue // a foreign file; leave it
		}
		out = append(out, &s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}
