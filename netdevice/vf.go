package netdevice

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/vishvananda/netlink"
)

// VFConfig is what ConfigureVF sets on a VF through its PF; nil fields are
// left as they are.
type VFConfig struct {
	MAC      net.HardwareAddr // the VF's administrative MAC
	VLAN     *int             // 0 removes the VLAN; the QoS priority is kept
	SpoofChk *bool
	Trust    *bool
}

// VFSaved is a VF's settings as its PF reports them, so that RestoreVF can
// put them back. It marshals to JSON with the MAC as a string.
type VFSaved struct {
	PF       string           `json:"pf"`
	Index    int              `json:"index"`
	MAC      net.HardwareAddr `json:"-"`
	VLAN     int              `json:"vlan"`
	QoS      int              `json:"qos"`
	SpoofChk bool             `json:"spoofChk"`
	Trust    bool             `json:"trust"`
}

type vfSavedJSON struct {
	vfSavedFields
	MAC string `json:"mac"`
}

type vfSavedFields VFSaved // no methods, so no recursion

// MarshalJSON writes the MAC in its usual text form.
func (s VFSaved) MarshalJSON() ([]byte, error) {
	var mac string
	if len(s.MAC) > 0 {
		mac = s.MAC.String()
	}
	return json.Marshal(vfSavedJSON{vfSavedFields(s), mac})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *VFSaved) UnmarshalJSON(b []byte) error {
	var j vfSavedJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = VFSaved(j.vfSavedFields)
	mac, err := parseSavedMAC("VF", j.MAC)
	s.MAC = mac
	return err
}

// pfLinks is the PF side of VF settings: the only calls that need a real
// SR-IOV PF. netlinkPF implements it; tests swap in a fake, since there is
// no SR-IOV hardware where they run. The set paths below therefore run
// only against that fake; against the kernel, only reading a device
// without VFs (an error) is tested.
type pfLinks interface {
	readVF(pf string, vf int) (VFSaved, error)
	setVFMAC(pf string, vf int, mac net.HardwareAddr) error
	setVFVLAN(pf string, vf, vlan, qos int) error
	setVFSpoofChk(pf string, vf int, on bool) error
	setVFTrust(pf string, vf int, on bool) error
}

// hostPF is the PF access ConfigureVF, RestoreVF and MoveIn use.
var hostPF pfLinks = netlinkPF{}

// netlinkPF reaches VFs through their PF's rtnetlink VF attributes, in the
// current netns, where the PF stays.
type netlinkPF struct{}

func (netlinkPF) readVF(pf string, vf int) (VFSaved, error) {
	l, err := netlink.LinkByName(pf)
	if err != nil {
		return VFSaved{}, fmt.Errorf("looking up PF %s: %w", pf, err)
	}
	for _, v := range l.Attrs().Vfs {
		if v.ID == vf {
			return VFSaved{
				PF:       pf,
				Index:    vf,
				MAC:      append(net.HardwareAddr(nil), v.Mac...),
				VLAN:     v.Vlan,
				QoS:      v.Qos,
				SpoofChk: v.Spoofchk,
				Trust:    v.Trust != 0,
			}, nil
		}
	}
	return VFSaved{}, fmt.Errorf("PF %s reports no VF %d", pf, vf)
}

func (netlinkPF) withPF(pf string, fn func(netlink.Link) error) error {
	l, err := netlink.LinkByName(pf)
	if err != nil {
		return fmt.Errorf("looking up PF %s: %w", pf, err)
	}
	return fn(l)
}

func (p netlinkPF) setVFMAC(pf string, vf int, mac net.HardwareAddr) error {
	return p.withPF(pf, func(l netlink.Link) error { return netlink.LinkSetVfHardwareAddr(l, vf, mac) })
}

func (p netlinkPF) setVFVLAN(pf string, vf, vlan, qos int) error {
	return p.withPF(pf, func(l netlink.Link) error { return netlink.LinkSetVfVlanQos(l, vf, vlan, qos) })
}

func (p netlinkPF) setVFSpoofChk(pf string, vf int, on bool) error {
	return p.withPF(pf, func(l netlink.Link) error { return netlink.LinkSetVfSpoofchk(l, vf, on) })
}

func (p netlinkPF) setVFTrust(pf string, vf int, on bool) error {
	return p.withPF(pf, func(l netlink.Link) error { return netlink.LinkSetVfTrust(l, vf, on) })
}

// ConfigureVF sets cfg on the VF dev through its PF and returns the
// settings it replaced, for RestoreVF. If one setting fails, those already
// made are undone. The PF stays in the host, so this works before or after
// MoveIn. MoveIn records the VF's settings as it finds them and MoveOut
// puts those back; so after ConfigureVF then MoveIn, call RestoreVF with
// ConfigureVF's result after MoveOut. Either order ends with the VF as it
// was before ConfigureVF.
func ConfigureVF(dev *Device, cfg VFConfig) (*VFSaved, error) {
	if dev == nil || dev.VF == nil {
		return nil, errors.New("configuring VF: device is not a VF")
	}
	if dev.VF.PF == "" {
		return nil, fmt.Errorf("configuring VF %s: its PF %s has no netdev in the host netns", dev.PCIAddress, dev.VF.PFPCIAddress)
	}
	if cfg.VLAN != nil && (*cfg.VLAN < 0 || *cfg.VLAN > 4094) {
		return nil, fmt.Errorf("configuring VF %s: VLAN %d is outside 0..4094", dev.PCIAddress, *cfg.VLAN)
	}
	pf, vf := dev.VF.PF, dev.VF.Index
	prev, err := hostPF.readVF(pf, vf)
	if err != nil {
		return nil, fmt.Errorf("configuring VF %d of %s: %w", vf, pf, err)
	}

	success := false
	defer func() {
		if success {
			return
		}
		if err := RestoreVF(&prev); err != nil {
			slog.Error("podnic: could not undo a partial VF configuration", "pf", pf, "vf", vf, "error", err)
		}
	}()
	if cfg.MAC != nil {
		if err := hostPF.setVFMAC(pf, vf, cfg.MAC); err != nil {
			return nil, fmt.Errorf("setting MAC %s on VF %d of %s: %w", cfg.MAC, vf, pf, err)
		}
	}
	if cfg.VLAN != nil {
		if err := hostPF.setVFVLAN(pf, vf, *cfg.VLAN, prev.QoS); err != nil {
			return nil, fmt.Errorf("setting VLAN %d on VF %d of %s: %w", *cfg.VLAN, vf, pf, err)
		}
	}
	if cfg.SpoofChk != nil {
		if err := hostPF.setVFSpoofChk(pf, vf, *cfg.SpoofChk); err != nil {
			return nil, fmt.Errorf("setting spoof check on VF %d of %s: %w", vf, pf, err)
		}
	}
	if cfg.Trust != nil {
		if err := hostPF.setVFTrust(pf, vf, *cfg.Trust); err != nil {
			return nil, fmt.Errorf("setting trust on VF %d of %s: %w", vf, pf, err)
		}
	}
	success = true
	slog.Info("podnic: configured VF", "pf", pf, "vf", vf)
	return &prev, nil
}

// RestoreVF puts saved settings back on the VF through its PF, changing
// only what differs. A nil saved or a PF that is gone is not an error: the
// VF went with it.
func RestoreVF(saved *VFSaved) error {
	if saved == nil {
		return nil
	}
	pf, vf := saved.PF, saved.Index
	cur, err := hostPF.readVF(pf, vf)
	if err != nil {
		if isLinkNotFound(err) {
			slog.Info("podnic: PF is gone; nothing to restore", "pf", pf, "vf", vf)
			return nil
		}
		return fmt.Errorf("restoring VF %d of %s: %w", vf, pf, err)
	}
	var errs []error
	if !bytes.Equal(cur.MAC, saved.MAC) && saved.MAC != nil {
		if err := hostPF.setVFMAC(pf, vf, saved.MAC); err != nil {
			errs = append(errs, fmt.Errorf("MAC: %w", err))
		}
	}
	if cur.VLAN != saved.VLAN || cur.QoS != saved.QoS {
		if err := hostPF.setVFVLAN(pf, vf, saved.VLAN, saved.QoS); err != nil {
			errs = append(errs, fmt.Errorf("VLAN: %w", err))
		}
	}
	if cur.SpoofChk != saved.SpoofChk {
		if err := hostPF.setVFSpoofChk(pf, vf, saved.SpoofChk); err != nil {
			errs = append(errs, fmt.Errorf("spoof check: %w", err))
		}
	}
	if cur.Trust != saved.Trust {
		if err := hostPF.setVFTrust(pf, vf, saved.Trust); err != nil {
			errs = append(errs, fmt.Errorf("trust: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("restoring VF %d of %s: %w", vf, pf, err)
	}
	return nil
}
