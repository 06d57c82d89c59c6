package netdevice

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
)

// Saved is what MoveIn found and MoveOut puts back. The caller persists it
// (as JSON, the MAC as a string) between CNI ADD and DEL. The original name
// is also kept in the link's alias ("podnic:<name>"), so a device that
// comes back from a dead pod under its in-pod name can still be told apart.
type Saved struct {
	Name  string           `json:"name"`
	MAC   net.HardwareAddr `json:"-"`
	MTU   int              `json:"mtu"`
	Up    bool             `json:"up"`
	Alias string           `json:"alias,omitempty"`
	VF    *VFSaved         `json:"vf,omitempty"` // set for a VF
}

type savedFields Saved // no methods, so no recursion

type savedJSON struct {
	savedFields
	MAC string `json:"mac"`
}

// MarshalJSON writes the MAC in its usual text form.
func (s Saved) MarshalJSON() ([]byte, error) {
	return json.Marshal(savedJSON{savedFields(s), s.MAC.String()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (s *Saved) UnmarshalJSON(b []byte) error {
	var j savedJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	*s = Saved(j.savedFields)
	mac, err := parseSavedMAC("device", j.MAC)
	s.MAC = mac
	return err
}

// parseSavedMAC reads a MAC written by a saved state's MarshalJSON; empty
// is none.
func parseSavedMAC(what, s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, nil
	}
	mac, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("saved %s MAC: %w", what, err)
	}
	return mac, nil
}

// MoveIn moves dev from the current (host) netns into the pod netns at
// podNetns, named ifname, with MTU mtu (0 keeps it), and sets it up.
//
// The device is renamed inside the pod netns, never in the host: renaming
// in the host races with udev and NetworkManager. When the pod already has
// a link with the device's host name, the device goes through a fresh
// temporary netns and is renamed there, as containernetworking's
// host-device does. Its alias becomes "podnic:<original name>". The
// link is looked up again after every move, since a move sets it down and
// may change its ifindex. If any step fails, the device is returned to the
// host as it was found, and the temporary netns is always closed.
//
// For a VF (dev.VF set) the VF's settings are read through the PF first and
// kept in Saved.VF, for MoveOut to restore. A DPDK-bound device has no
// netdev and is refused.
func MoveIn(dev *Device, podNetns, ifname string, mtu int) (*Saved, error) {
	return moveInChecked(dev, podNetns, ifname, mtu, true)
}

// MoveInDown is MoveIn that leaves the device down in the pod, so that
// ConfigureAddrs puts the IPv4 addresses on it before it comes up and the
// kernel announces them as it does (see ConfigureAddrs). CNI ADD uses it.
func MoveInDown(dev *Device, podNetns, ifname string, mtu int) (*Saved, error) {
	return moveInChecked(dev, podNetns, ifname, mtu, false)
}

// MoveInDownAfter is MoveInDown that calls prepare with the device's host
// ifindex and what MoveOut will need (as MoveInDown returns it) once the
// device is down in the host, right before it moves. If prepare fails, the
// device is left as it was found and the error is returned as it is. CNI
// ADD attaches the NIC's TCX links there: they stay on the device as it
// moves, and the device is down meanwhile.
func MoveInDownAfter(dev *Device, podNetns, ifname string, mtu int, prepare func(hostIfindex int, saved *Saved) error) (*Saved, error) {
	return moveInCheckedAfter(dev, podNetns, ifname, mtu, false, prepare)
}

func moveInChecked(dev *Device, podNetns, ifname string, mtu int, up bool) (*Saved, error) {
	return moveInCheckedAfter(dev, podNetns, ifname, mtu, up, nil)
}

// errPrepare marks an error of MoveInDownAfter's prepare, returned as is.
type errPrepare struct{ err error }

func (e errPrepare) Error() string { return e.err.Error() }
func (e errPrepare) Unwrap() error { return e.err }

func moveInCheckedAfter(dev *Device, podNetns, ifname string, mtu int, up bool, prepare func(int, *Saved) error) (*Saved, error) {
	if dev == nil {
		return nil, errors.New("moving device: no device")
	}
	if dev.DPDK || dev.Name == "" {
		return nil, fmt.Errorf("moving device %s: bound to %s with no netdev; DPDK devices are handed to the pod by the device plugin, not moved", dev.PCIAddress, dev.Driver)
	}
	if err := validIfname(ifname); err != nil {
		return nil, fmt.Errorf("moving %s: %w", dev.Name, err)
	}
	if mtu < 0 {
		return nil, fmt.Errorf("moving %s: MTU %d is negative", dev.Name, mtu)
	}
	saved, err := moveIn(dev, podNetns, ifname, mtu, up, prepare)
	if pe := (errPrepare{}); errors.As(err, &pe) {
		return nil, pe.err
	}
	if err != nil {
		return nil, fmt.Errorf("moving %s into %s: %w", dev.Name, podNetns, err)
	}
	slog.Info("podnic: moved device into pod", "device", dev.Name, "mac", saved.MAC.String(), "netns", podNetns, "ifname", ifname)
	return saved, nil
}

func moveIn(dev *Device, podNetns, ifname string, mtu int, up bool, prepare func(int, *Saved) error) (*Saved, error) {
	host, err := currentNetns()
	if err != nil {
		return nil, err
	}
	defer host.close()
	pod, err := openNetns(podNetns)
	if err != nil {
		return nil, err
	}
	defer pod.close()

	link, err := host.nl.LinkByName(dev.Name)
	if err != nil {
		if isLinkNotFound(err) {
			return nil, fmt.Errorf("%s is not in the host netns: %w", dev.Name, ErrNotFound)
		}
		return nil, fmt.Errorf("looking up %s: %w", dev.Name, err)
	}
	a := link.Attrs()
	if len(dev.MAC) > 0 && !bytes.Equal(a.HardwareAddr, dev.MAC) {
		return nil, fmt.Errorf("%s now has MAC %s, not %s as when it was found", dev.Name, a.HardwareAddr, dev.MAC)
	}
	if strings.HasPrefix(a.Alias, aliasPrefix) {
		return nil, fmt.Errorf("%w: %s came back from a pod (alias %q) and waits for MoveOut", ErrBusy, a.Name, a.Alias)
	}
	saved := &Saved{
		Name:  a.Name,
		MAC:   append(net.HardwareAddr(nil), a.HardwareAddr...),
		MTU:   a.MTU,
		Up:    a.Flags&net.FlagUp != 0,
		Alias: a.Alias,
	}
	// A PF without a netdev in the host cannot change the VF's settings
	// either, so there is nothing to record then.
	if dev.VF != nil && dev.VF.PF != "" {
		vf, err := hostPF.readVF(dev.VF.PF, dev.VF.Index)
		if err != nil {
			return nil, fmt.Errorf("reading VF settings: %w", err)
		}
		saved.VF = &vf
	}

	// Deferred before the undo below, so that a temporary netns is closed
	// only after the undo has taken the device out of it. It is created
	// only when a name is taken.
	tmp := &tempNetnsOnDemand{}
	defer tmp.close()

	// Where the device is and under what name, for the undo.
	at, atName := host, a.Name
	success := false
	defer func() {
		if success {
			return
		}
		if err := undoMoveIn(host, tmp, at, atName, saved); err != nil {
			slog.Error("podnic: could not return device to the host after a failed move", "device", saved.Name, "at", at.label, "error", err)
		}
	}()

	if err := host.nl.LinkSetDown(link); err != nil {
		return nil, fmt.Errorf("setting %s down: %w", a.Name, err)
	}
	// Straight into the pod when its host name is free there: the rename
	// then happens inside the pod, where no udev runs, and the device moves
	// once, not twice (each move waits for RCU grace periods: 15-30 ms
	// measured on Linux 6.18). Otherwise through the temporary netns.
	cur := pod
	if _, err := pod.nl.LinkByName(a.Name); !isLinkNotFound(err) {
		if cur, err = tmp.get(); err != nil {
			return nil, err
		}
	}
	if prepare != nil {
		if err := prepare(a.Index, saved); err != nil {
			return nil, errPrepare{err}
		}
	}
	if err := host.nl.LinkSetNsFd(link, int(cur.ns)); err != nil {
		return nil, fmt.Errorf("moving %s to the %s: %w", a.Name, cur.label, err)
	}
	at = cur
	if link, err = cur.nl.LinkByName(a.Name); err != nil {
		return nil, fmt.Errorf("looking up %s in the %s: %w", a.Name, cur.label, err)
	}
	if err := cur.nl.LinkSetAlias(link, aliasPrefix+a.Name); err != nil {
		return nil, fmt.Errorf("setting alias of %s: %w", a.Name, err)
	}
	if ifname != a.Name {
		if err := cur.nl.LinkSetName(link, ifname); err != nil {
			return nil, fmt.Errorf("renaming %s to %s: %w", a.Name, ifname, err)
		}
		atName = ifname
	}
	// The MTU is set before the device is up in the pod.
	if mtu > 0 && mtu != a.MTU {
		if err := cur.nl.LinkSetMTU(link, mtu); err != nil {
			return nil, fmt.Errorf("setting MTU %d on %s: %w", mtu, ifname, err)
		}
	}
	if tmp.is(cur) {
		if err := cur.nl.LinkSetNsFd(link, int(pod.ns)); err != nil {
			return nil, fmt.Errorf("entering the pod as %s: %w", ifname, err)
		}
		at = pod
		if link, err = pod.nl.LinkByName(ifname); err != nil {
			return nil, fmt.Errorf("looking up %s in the pod: %w", ifname, err)
		}
	}
	if up {
		if err := pod.nl.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("setting %s up: %w", ifname, err)
		}
	}
	success = true
	return saved, nil
}

// undoMoveIn returns a device that MoveIn took as far as netns at, under
// name, to the host as it was found.
func undoMoveIn(host *netnsRef, tmp *tempNetnsOnDemand, at *netnsRef, name string, saved *Saved) error {
	if at != host {
		return bringHome(host, tmp, at, name, saved, nil, "")
	}
	// Still in the host, unchanged but perhaps set down.
	if !saved.Up {
		return nil
	}
	link, err := host.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	return host.nl.LinkSetUp(link)
}

// MoveOut returns the device MoveIn moved into podNetns as ifname to the
// host netns with its original name, MAC, MTU, alias, up/down state and,
// for a VF, VF settings. It renames the device inside the pod netns and
// moves it once, or, when a name is taken, through a temporary netns; that
// netns is always closed.
//
// MoveOut is idempotent and succeeds when there is nothing left to do:
//
//   - The device is already back, under its original name and MAC.
//   - The pod netns is gone. The kernel moves a physical device (an ENI, a
//     VF) of a dying netns back to the initial netns under its in-pod name
//     (or "devN" if that name is taken there); MoveOut finds it by its
//     "podnic:" alias or else by its MAC, and restores it there.
//   - The device is gone. A veth end, unlike a physical NIC, is destroyed
//     with its netns, and its peer with it; MoveOut then returns nil.
//
// If the device cannot enter the host (its original name is taken there),
// it is put back into the pod as ifname and MoveOut fails, so a retry can
// try again.
func MoveOut(podNetns, ifname string, saved *Saved) error {
	if saved == nil || saved.Name == "" {
		return errors.New("moving device out: nothing saved")
	}
	if err := moveOut(podNetns, ifname, saved); err != nil {
		return fmt.Errorf("moving %s out of %s: %w", saved.Name, podNetns, err)
	}
	return nil
}

func moveOut(podNetns, ifname string, saved *Saved) error {
	// The PF stays in the host, so the VF's settings can be restored
	// wherever its netdev is, and before its MAC is set back below.
	vfErr := RestoreVF(saved.VF)

	host, err := currentNetns()
	if err != nil {
		return errors.Join(vfErr, err)
	}
	defer host.close()
	tmp := &tempNetnsOnDemand{} // only when a name is taken
	defer tmp.close()

	pod, err := openNetns(podNetns)
	switch {
	case errors.Is(err, errNetnsGone):
		slog.Info("podnic: pod netns is gone; looking for the device in the host", "netns", podNetns, "device", saved.Name)
	case err != nil:
		return errors.Join(vfErr, err)
	default:
		defer pod.close()
		_, err := pod.nl.LinkByName(ifname)
		switch {
		case err == nil:
			if err := bringHome(host, tmp, pod, ifname, saved, pod, ifname); err != nil {
				return errors.Join(vfErr, err)
			}
			slog.Info("podnic: returned device to the host", "device", saved.Name, "netns", podNetns, "ifname", ifname)
			return vfErr
		case !isLinkNotFound(err):
			return errors.Join(vfErr, fmt.Errorf("looking up %s in the pod: %w", ifname, err))
		}
	}

	link, err := findReturned(host, ifname, saved)
	if err != nil {
		return errors.Join(vfErr, err)
	}
	if link == nil {
		slog.Info("podnic: device is gone; nothing to return", "device", saved.Name, "mac", saved.MAC.String())
		return vfErr
	}
	if a := link.Attrs(); a.Name == saved.Name && bytes.Equal(a.HardwareAddr, saved.MAC) && a.Alias == saved.Alias && (saved.MTU == 0 || a.MTU == saved.MTU) {
		slog.Info("podnic: device is already back in the host", "device", saved.Name)
		return vfErr
	}
	if err := bringHome(host, tmp, host, link.Attrs().Name, saved, nil, ""); err != nil {
		return errors.Join(vfErr, err)
	}
	slog.Info("podnic: restored device in the host", "device", saved.Name, "found_as", link.Attrs().Name)
	return vfErr
}

// findReturned looks in the host for a device MoveIn moved: first by its
// "podnic:<name>" alias, then under its original name and MAC (already
// back), then by MAC alone if exactly one link has it. It returns nil when
// none matches.
func findReturned(host *netnsRef, ifname string, saved *Saved) (netlink.Link, error) {
	links, err := dumpRetry(host.nl.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing host links: %w", err)
	}
	var byAlias, byMAC []netlink.Link
	for _, l := range links {
		a := l.Attrs()
		sameMAC := len(saved.MAC) > 0 && bytes.Equal(a.HardwareAddr, saved.MAC)
		if a.Alias == aliasPrefix+saved.Name {
			byAlias = append(byAlias, l)
		}
		if sameMAC {
			if a.Name == saved.Name {
				return l, nil
			}
			byMAC = append(byMAC, l)
		}
	}
	if len(byAlias) > 0 {
		for _, l := range byAlias {
			if bytes.Equal(l.Attrs().HardwareAddr, saved.MAC) {
				return l, nil
			}
		}
		return byAlias[0], nil
	}
	if len(byMAC) == 1 {
		return byMAC[0], nil
	}
	if len(byMAC) > 1 {
		return nil, fmt.Errorf("several host links have MAC %s and none has alias %s%s", saved.MAC, aliasPrefix, saved.Name)
	}
	return nil, nil
}

// bringHome returns the link called name in netns at to the host with the
// name, MAC, MTU, alias and up state in saved. tmp is a temporary netns,
// created here if needed; at may be tmp itself (MoveIn's undo) or the host
// (a device that came back by itself). A link outside tmp whose names are
// taken is moved there first, renamed and restored there, then moved to
// the host. If that last move fails and back is set, the link is renamed
// to backName and returned to back, so that it does not die with tmp.
func bringHome(host *netnsRef, tmpOnDemand *tempNetnsOnDemand, at *netnsRef, name string, saved *Saved, back *netnsRef, backName string) error {
	link, err := at.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", name, at.label, err)
	}
	if at == host && name == saved.Name {
		return restoreInPlace(host, link, saved)
	}
	if at != host && !tmpOnDemand.is(at) && nameFree(at, saved.Name, name) && nameFree(host, saved.Name, "") {
		return bringHomeDirect(host, at, link, name, saved)
	}
	tmp, err := tmpOnDemand.get()
	if err != nil {
		return err
	}
	if at != tmp {
		if err := at.nl.LinkSetDown(link); err != nil {
			return fmt.Errorf("setting %s down: %w", name, err)
		}
		if err := at.nl.LinkSetNsFd(link, int(tmp.ns)); err != nil {
			return fmt.Errorf("moving %s to a temporary netns: %w", name, err)
		}
		if link, err = tmp.nl.LinkByName(name); err != nil {
			return fmt.Errorf("looking up %s in the temporary netns: %w", name, err)
		}
	}
	if name != saved.Name {
		if err := tmp.nl.LinkSetName(link, saved.Name); err != nil {
			return fmt.Errorf("renaming %s to %s: %w", name, saved.Name, err)
		}
	}
	if err := restoreAttrs(tmp, link, saved); err != nil {
		return err
	}
	if err := tmp.nl.LinkSetNsFd(link, int(host.ns)); err != nil {
		err = fmt.Errorf("entering the host as %s: %w", saved.Name, err)
		if back != nil {
			err = errors.Join(err, sendBack(tmp, back, link, backName, aliasPrefix+saved.Name))
		}
		return err
	}
	if link, err = host.nl.LinkByName(saved.Name); err != nil {
		return fmt.Errorf("looking up %s in the host: %w", saved.Name, err)
	}
	if saved.Up {
		if err := host.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", saved.Name, err)
		}
	}
	return nil
}

// nameFree reports whether no link but the one called self has name in ns.
func nameFree(ns *netnsRef, name, self string) bool {
	if name == self {
		return true
	}
	_, err := ns.nl.LinkByName(name)
	return isLinkNotFound(err)
}

// bringHomeDirect renames and restores the link inside the pod netns at,
// where no udev runs, and moves it to the host once. If the move fails
// (the name was taken meanwhile), the link gets its pod name, alias and up
// state back, so a retry finds it where it was.
func bringHomeDirect(host, at *netnsRef, link netlink.Link, name string, saved *Saved) error {
	if err := at.nl.LinkSetDown(link); err != nil {
		return fmt.Errorf("setting %s down: %w", name, err)
	}
	if name != saved.Name {
		if err := at.nl.LinkSetName(link, saved.Name); err != nil {
			return fmt.Errorf("renaming %s to %s: %w", name, saved.Name, err)
		}
	}
	if err := restoreAttrs(at, link, saved); err != nil {
		return err
	}
	if err := at.nl.LinkSetNsFd(link, int(host.ns)); err != nil {
		err = fmt.Errorf("entering the host as %s: %w", saved.Name, err)
		if rerr := at.nl.LinkSetName(link, name); rerr != nil {
			return errors.Join(err, fmt.Errorf("renaming back to %s: %w", name, rerr))
		}
		if rerr := at.nl.LinkSetAlias(link, aliasPrefix+saved.Name); rerr != nil {
			return errors.Join(err, fmt.Errorf("setting alias back: %w", rerr))
		}
		return errors.Join(err, at.nl.LinkSetUp(link))
	}
	if !saved.Up {
		return nil
	}
	link, err := host.nl.LinkByName(saved.Name)
	if err != nil {
		return fmt.Errorf("looking up %s in the host: %w", saved.Name, err)
	}
	if err := host.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", saved.Name, err)
	}
	return nil
}

// sendBack returns a link stuck in tmp to back as name with alias, set up,
// as it was before MoveOut touched it.
func sendBack(tmp, back *netnsRef, link netlink.Link, name, alias string) error {
	if err := tmp.nl.LinkSetName(link, name); err != nil {
		return fmt.Errorf("renaming back to %s: %w", name, err)
	}
	if err := tmp.nl.LinkSetAlias(link, alias); err != nil {
		return fmt.Errorf("setting alias back: %w", err)
	}
	if err := tmp.nl.LinkSetNsFd(link, int(back.ns)); err != nil {
		return fmt.Errorf("moving back to %s: %w", back.label, err)
	}
	l, err := back.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("looking up %s in %s: %w", name, back.label, err)
	}
	return back.nl.LinkSetUp(l)
}

// restoreAttrs sets saved's MAC, MTU and alias on a link that is down.
func restoreAttrs(ns *netnsRef, link netlink.Link, saved *Saved) error {
	a := link.Attrs()
	if len(saved.MAC) > 0 && !bytes.Equal(a.HardwareAddr, saved.MAC) {
		if err := ns.nl.LinkSetHardwareAddr(link, saved.MAC); err != nil {
			return fmt.Errorf("restoring MAC %s on %s: %w", saved.MAC, saved.Name, err)
		}
	}
	if saved.MTU > 0 && a.MTU != saved.MTU {
		if err := ns.nl.LinkSetMTU(link, saved.MTU); err != nil {
			return fmt.Errorf("restoring MTU %d on %s: %w", saved.MTU, saved.Name, err)
		}
	}
	if a.Alias != saved.Alias {
		if err := ns.nl.LinkSetAlias(link, saved.Alias); err != nil {
			return fmt.Errorf("restoring alias of %s: %w", saved.Name, err)
		}
	}
	return nil
}

// restoreInPlace restores a link that is in the host under its original
// name. A link that already matches is left alone, up state included, so
// a second MoveOut changes nothing.
func restoreInPlace(host *netnsRef, link netlink.Link, saved *Saved) error {
	a := link.Attrs()
	if bytes.Equal(a.HardwareAddr, saved.MAC) && (saved.MTU == 0 || a.MTU == saved.MTU) && a.Alias == saved.Alias {
		return nil
	}
	// Many drivers change the MAC only while the link is down.
	if err := host.nl.LinkSetDown(link); err != nil {
		return fmt.Errorf("setting %s down: %w", saved.Name, err)
	}
	if err := restoreAttrs(host, link, saved); err != nil {
		return err
	}
	if saved.Up {
		if err := host.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", saved.Name, err)
		}
	}
	return nil
}
