package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/netdevice"
)

// Defaults of the plugin configuration.
const (
	DefaultStateDir = "/var/lib/cni/podnic"
	// IPAMTypePodnic selects podnic's own in-process IPAM.
	IPAMTypePodnic = "podnic"
)

// Mode is the data plane a pod gets.
type Mode string

// Data planes. Only exclusive is served by this plugin today; the others
// share the maps but need host-side programs that come later.
const (
	ModeExclusive Mode = "exclusive"
	ModeVeth      Mode = "veth"
	ModeIPVLAN    Mode = "ipvlan"
)

// netConf is the plugin's JSON configuration as the runtime hands it over.
type netConf struct {
	types.PluginConf

	DeviceMAC  string `json:"deviceMAC,omitempty"`
	DeviceName string `json:"deviceName,omitempty"`
	PCIAddress string `json:"pciAddress,omitempty"`
	PFName     string `json:"pfName,omitempty"`
	VFIndex    *int   `json:"vfIndex,omitempty"`

	MTU          int      `json:"mtu,omitempty"`
	BPFRoot      string   `json:"bpfRoot,omitempty"`
	Mode         string   `json:"mode,omitempty"`
	AttachMode   string   `json:"attachMode,omitempty"`
	ServicePath  string   `json:"servicePath,omitempty"`
	Chained      bool     `json:"chained,omitempty"`
	ServiceCIDRs []string `json:"serviceCIDRs,omitempty"`
	StateDir     string   `json:"stateDir,omitempty"`

	DevicePool *struct {
		MACs  []string `json:"macs,omitempty"`
		Names []string `json:"names,omitempty"`
	} `json:"devicePool,omitempty"`

	VF *struct {
		MAC      string `json:"mac,omitempty"`
		VLAN     *int   `json:"vlan,omitempty"`
		SpoofChk *bool  `json:"spoofchk,omitempty"`
		Trust    *bool  `json:"trust,omitempty"`
	} `json:"vf,omitempty"`

	RuntimeConfig struct {
		DeviceID string `json:"deviceID,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// noDevice reports whether the config selects no device of its own.
func noDevice(s netdevice.Selector) bool {
	return s.MAC == nil && s.Name == "" && s.PCIAddress == "" && s.PFName == "" && !s.HasVFIndex
}

// DevicePool lists the host devices pods of a node pool take their NIC
// from, one each, when one static config serves every pod (as container
// runtimes pass it) and no device plugin hands out a deviceID.
type DevicePool struct {
	MACs  []net.HardwareAddr
	Names []string
}

// VFConfig is what to set on a VF through its PF before the move.
type VFConfig struct {
	MAC      net.HardwareAddr
	VLAN     *int
	SpoofChk *bool
	Trust    *bool
}

// Config is a validated plugin configuration: the rest of the plugin
// never sees raw JSON.
type Config struct {
	CNIVersion   string
	Network      string
	Device       netdevice.Selector
	Pool         *DevicePool
	VF           *VFConfig
	IPAMType     string
	MTU          int
	BPFRoot      string
	Mode         Mode
	AttachMode   bpf.Mode
	ServicePath  bpf.ServicePath
	Chained      bool
	ServiceCIDRs []netip.Prefix
	StateDir     string
	PrevResult   *types100.Result
	ValidAttach  []types.GCAttachment

	raw []byte // for delegated IPAM, which reads the whole config
}

// ErrInvalidConfig marks every configuration error.
var ErrInvalidConfig = errors.New("invalid podnic config")

var pciAddress = regexp.MustCompile(`^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$`)

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
}

// ParseConfig validates the plugin configuration once.
func ParseConfig(raw []byte) (*Config, error) {
	var n netConf
	if err := json.Unmarshal(raw, &n); err != nil {
		return nil, invalid("parsing JSON: %v", err)
	}
	c := &Config{
		CNIVersion:  n.CNIVersion,
		Network:     n.Name,
		IPAMType:    n.IPAM.Type,
		MTU:         n.MTU,
		BPFRoot:     n.BPFRoot,
		Mode:        Mode(n.Mode),
		Chained:     n.Chained,
		StateDir:    n.StateDir,
		ValidAttach: n.ValidAttachments,
		raw:         raw,
	}
	if n.Type != "podnic" {
		return nil, invalid("type is %q, want \"podnic\"", n.Type)
	}
	if c.Network == "" {
		return nil, invalid("name is missing")
	}
	if c.BPFRoot == "" {
		c.BPFRoot = bpf.DefaultRoot
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	switch c.Mode {
	case "":
		c.Mode = ModeExclusive
	case ModeExclusive:
	case ModeVeth, ModeIPVLAN:
		return nil, invalid("mode %q is not served by this plugin version yet; use \"exclusive\"", c.Mode)
	default:
		return nil, invalid("mode %q: want \"exclusive\"", c.Mode)
	}
	am, err := bpf.ParseMode(n.AttachMode)
	if err != nil {
		return nil, invalid("attachMode: %v", err)
	}
	c.AttachMode = am
	sp, err := bpf.ParseServicePath(n.ServicePath)
	if err != nil {
		return nil, invalid("servicePath: %v", err)
	}
	c.ServicePath = sp
	if c.MTU < 0 || (c.MTU > 0 && c.MTU < 576) || c.MTU > 65535 {
		return nil, invalid("mtu %d: want 576 to 65535 (or omit it)", c.MTU)
	}
	for _, s := range n.ServiceCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, invalid("serviceCIDRs: %q is not a CIDR", s)
		}
		c.ServiceCIDRs = append(c.ServiceCIDRs, p.Masked())
	}

	if n.RawPrevResult != nil {
		if err := version.ParsePrevResult(&n.PluginConf); err != nil {
			return nil, invalid("parsing prevResult: %v", err)
		}
		r, err := types100.NewResultFromResult(n.PrevResult)
		if err != nil {
			return nil, invalid("converting prevResult: %v", err)
		}
		c.PrevResult = r
	}

	if err := c.parseDevice(&n); err != nil {
		return nil, err
	}
	// A prevResult on ADD comes from an earlier plugin in the list; on
	// CHECK and DEL it may be podnic's own result, so only a config
	// without a device of its own is chained implicitly.
	if c.PrevResult != nil && noDevice(c.Device) && c.Pool == nil && c.IPAMType == "" {
		c.Chained = true
	}
	if c.Chained {
		if !noDevice(c.Device) || c.Pool != nil {
			return nil, invalid("chained mode takes the interface from prevResult; remove the device selector (%s)", c.Device)
		}
		if c.IPAMType != "" {
			return nil, invalid("chained mode keeps the addresses of the earlier plugin; remove ipam")
		}
		return c, nil
	}
	if c.IPAMType == "" {
		return nil, invalid("ipam is missing: use {\"type\": \"podnic\", ...} or any CNI IPAM plugin")
	}
	return c, nil
}

func (c *Config) parseDevice(n *netConf) error {
	set := 0
	if n.DeviceMAC != "" {
		mac, err := net.ParseMAC(n.DeviceMAC)
		if err != nil || len(mac) != 6 {
			return invalid("deviceMAC %q is not an Ethernet MAC address", n.DeviceMAC)
		}
		c.Device.MAC = mac
		set++
	}
	if n.DeviceName != "" {
		if len(n.DeviceName) > 15 || strings.ContainsAny(n.DeviceName, "/ ") {
			return invalid("deviceName %q is not an interface name", n.DeviceName)
		}
		c.Device.Name = n.DeviceName
		set++
	}
	pci := n.PCIAddress
	if pci == "" && n.RuntimeConfig.DeviceID != "" && n.PFName == "" && n.DeviceMAC == "" && n.DeviceName == "" {
		// A device plugin hands over the VF it allocated.
		pci = n.RuntimeConfig.DeviceID
	}
	if pci != "" {
		if !pciAddress.MatchString(pci) {
			return invalid("PCI address %q: want domain:bus:device.function, e.g. 0000:03:00.2", pci)
		}
		c.Device.PCIAddress = strings.ToLower(pci)
		set++
	}
	if n.PFName != "" || n.VFIndex != nil {
		if n.PFName == "" || n.VFIndex == nil {
			return invalid("pfName and vfIndex go together")
		}
		if *n.VFIndex < 0 || *n.VFIndex > 4095 {
			return invalid("vfIndex %d out of range", *n.VFIndex)
		}
		c.Device.PFName, c.Device.VFIndex, c.Device.HasVFIndex = n.PFName, *n.VFIndex, true
		set++
	}
	if n.DevicePool != nil {
		pool := &DevicePool{}
		for _, m := range n.DevicePool.MACs {
			mac, err := net.ParseMAC(m)
			if err != nil || len(mac) != 6 {
				return invalid("devicePool.macs: %q is not an Ethernet MAC address", m)
			}
			pool.MACs = append(pool.MACs, mac)
		}
		for _, name := range n.DevicePool.Names {
			if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ ") {
				return invalid("devicePool.names: %q is not an interface name", name)
			}
			pool.Names = append(pool.Names, name)
		}
		if len(pool.MACs)+len(pool.Names) == 0 {
			return invalid("devicePool lists no device: give macs or names")
		}
		c.Pool = pool
		set++
	}
	if set > 1 {
		return invalid("choose the device one way: deviceMAC, deviceName, pciAddress (or runtimeConfig.deviceID), pfName with vfIndex, or devicePool")
	}
	// (ParseConfig has parsed prevResult already, which clears the raw one.)
	if set == 0 && !c.Chained && (c.PrevResult == nil || n.IPAM.Type != "") {
		return invalid("no device: set deviceMAC, deviceName, pciAddress, pfName with vfIndex or devicePool, or pass runtimeConfig.deviceID")
	}
	if n.VF != nil {
		if c.Device.PCIAddress == "" && !c.Device.HasVFIndex {
			return invalid("vf settings apply only to a VF chosen by pciAddress or pfName/vfIndex")
		}
		vf := &VFConfig{VLAN: n.VF.VLAN, SpoofChk: n.VF.SpoofChk, Trust: n.VF.Trust}
		if n.VF.MAC != "" {
			mac, err := net.ParseMAC(n.VF.MAC)
			if err != nil || len(mac) != 6 {
				return invalid("vf.mac %q is not an Ethernet MAC address", n.VF.MAC)
			}
			vf.MAC = mac
		}
		if vf.VLAN != nil && (*vf.VLAN < 0 || *vf.VLAN > 4094) {
			return invalid("vf.vlan %d: want 0 to 4094", *vf.VLAN)
		}
		c.VF = vf
	}
	return nil
}
