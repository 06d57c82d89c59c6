package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/ipam"
	"github.com/podnic/podnic/netdevice"
)

// addExclusive moves the selected device into the pod and configures it.
// Every step is undone, in reverse, when a later one fails: the device
// goes back to the host as it was, no address stays held, no pin remains.
// steps records how long each step took.
func addExclusive(args *skel.CmdArgs, conf *Config, dp *bpf.Datapath, steps *stepTimer) (*types100.Result, error) {
	dev, release, err := findDevice(args, conf)
	if err != nil {
		code := ErrCodeDevice
		switch {
		case errors.Is(err, netdevice.ErrNotFound):
			code = ErrCodeDeviceNotFound
		case errors.Is(err, netdevice.ErrBusy):
			code = ErrCodeDeviceBusy
		}
		return nil, cniError(code, "finding the pod's device", err)
	}
	defer release()

	st := &State{Network: conf.Network, ContainerID: args.ContainerID, Ifname: args.IfName, Netns: args.Netns,
		Created: time.Now(), BPFRoot: conf.BPFRoot, AttachMode: string(conf.AttachMode), IPAMType: conf.IPAMType}
	success := false
	defer func() {
		if !success {
			if err := teardown(conf, st, nil); err != nil {
				slog.Error("rolling back a failed ADD", "container", args.ContainerID, "err", err)
			}
		}
	}()

	// podnic's IPAM allocates while the device moves (see
	// startAllocation). Deferred after the rollback above, settle runs
	// before it, so a rollback always sees the allocation.
	alloc := startAllocation(args, conf)
	defer alloc.settle()
	// State writes overlap the steps that wait for the kernel. Deferred
	// last, so it runs first: a rollback never races a write.
	writer := &stateWriter{dir: conf.StateDir}
	defer func() { _ = writer.wait() }()

	if dev.VF != nil && conf.VF != nil {
		saved, err := netdevice.ConfigureVF(dev, netdevice.VFConfig{MAC: conf.VF.MAC, VLAN: conf.VF.VLAN, SpoofChk: conf.VF.SpoofChk, Trust: conf.VF.Trust})
		if err != nil {
			return nil, cniError(ErrCodeDevice, "configuring the VF through its PF", err)
		}
		st.VF = marshalRaw(saved)
		if err := st.save(conf.StateDir); err != nil {
			return nil, types.NewError(types.ErrIOFailure, "saving state", err.Error())
		}
		steps.mark("vf")
		if err := failpoint("vf"); err != nil {
			return nil, err
		}
	}

	result := &types100.Result{CNIVersion: types100.ImplementedSpecVersion}
	podIface := 0
	if dev.DPDK {
		// A VF bound to a userspace driver has no netdev to move: the pod
		// gets its addresses and the device through its device plugin.
		// The result says so the CNI way: an interface with the VF's
		// PCI address and no MAC.
		if err := claimDPDK(conf, st, dev.PCIAddress); err != nil {
			return nil, err
		}
		slog.Info("the VF is bound to a DPDK driver: it gets addresses but no netdev move, and no Service translation",
			"container", args.ContainerID, "pci", dev.PCIAddress, "driver", dev.Driver)
		result.Interfaces = []*types100.Interface{{Name: args.IfName, Sandbox: args.Netns, PciID: dev.PCIAddress}}
	} else {
		// Down until its addresses are on it: as ConfigureAddrs sets it
		// up, the kernel announces the IPv4 ones.
		//
		// The NIC's TCX links are attached while the device is down in
		// the host, just before it moves (they move with it). That is
		// no faster in itself: each link waits for an RCU grace period
		// under rtnl wherever it is created. But the move's rcu_barrier
		// then comes after them, by when an rcu_barrier of a netns
		// being deleted (the previous pod's, typically) has finished,
		// rather than waiting behind it while holding rtnl.
		//
		// The state records the device before it moves, the write
		// overlapping the attach: a DEL after a crash finds the device
		// still in the host, which MoveOut accepts.
		var attachErr, failErr error
		_, err := netdevice.MoveInDownAfter(dev, args.Netns, args.IfName, conf.MTU, func(ifindex int, saved *netdevice.Saved) error {
			st.Device = marshalRaw(saved)
			st.MAC = dev.MAC.String()
			writer.start(*st)
			if _, attachErr = dp.AttachNICBeforeMove(ifindex, args.IfName, owner(args.ContainerID, args.IfName), conf.AttachMode, conf.ServicePath); attachErr != nil {
				return attachErr
			}
			steps.mark("attach_nic")
			failErr = failpoint("attach_nic")
			return failErr
		})
		switch {
		case attachErr != nil:
			return nil, cniError(ErrCodeDatapath, "attaching podnic's programs", attachErr)
		case failErr != nil:
			return nil, failErr
		case err != nil:
			return nil, cniError(ErrCodeDevice, "moving the device into the pod", err)
		}
		release() // the device left the host: no other ADD can take it
		if err := writer.wait(); err != nil {
			return nil, types.NewError(types.ErrIOFailure, "saving state", err.Error())
		}
		result.Interfaces = []*types100.Interface{{Name: args.IfName, Mac: dev.MAC.String(), Mtu: podMTU(conf, dev), Sandbox: args.Netns, PciID: dev.PCIAddress}}
		steps.mark("move")
		if err := failpoint("move"); err != nil {
			return nil, err
		}
	}

	ips, routes, err := alloc.wait()
	if err != nil {
		return nil, cniError(ErrCodeIPAM, "allocating addresses", err)
	}
	// Recorded with the next save: undoing the allocation needs only the
	// owner (container and interface), which the state has already.
	for _, ip := range ips {
		st.Addresses = append(st.Addresses, ip.Address.String())
		ip.Interface = &podIface
	}
	result.IPs = ips
	result.Routes = podRoutes(ips, routes, conf.ServiceCIDRs)
	steps.mark("ipam")
	if err := failpoint("ipam"); err != nil {
		return nil, err
	}

	if dev.DPDK {
		if err := st.save(conf.StateDir); err != nil {
			return nil, types.NewError(types.ErrIOFailure, "saving state", err.Error())
		}
		success = true
		return result, nil
	}

	// The final state, written while the pod is configured: addresses
	// for CHECK, and the attachment about to be made (undoing either
	// needs only the owner).
	st.Attached = true
	writer.start(*st)

	if err := netdevice.ConfigureAddrs(args.Netns, args.IfName, prefixes(ips), netdeviceRoutes(result.Routes)); err != nil {
		return nil, cniError(ErrCodeDevice, "configuring addresses and routes", err)
	}
	steps.mark("addrs")
	if err := failpoint("addrs"); err != nil {
		return nil, err
	}
	if err := netdevice.PodSysctls(args.Netns); err != nil {
		return nil, cniError(ErrCodeDevice, "setting pod sysctls", err)
	}
	steps.mark("sysctls")
	if err := failpoint("sysctls"); err != nil {
		return nil, err
	}
	if _, err := dp.AttachPodPath(args.Netns, args.IfName, owner(args.ContainerID, args.IfName), conf.AttachMode, conf.ServicePath); err != nil {
		return nil, cniError(ErrCodeDatapath, "attaching podnic's programs", err)
	}
	steps.mark("attach")
	if err := failpoint("attach"); err != nil {
		return nil, err
	}
	if err := writer.wait(); err != nil {
		return nil, types.NewError(types.ErrIOFailure, "saving state", err.Error())
	}
	steps.mark("state")
	if err := failpoint("state"); err != nil {
		return nil, err
	}
	// Tell the fabric where the IPv6 addresses live now (the kernel sent
	// the gratuitous ARPs as the link came up); a lost announcement only
	// costs the first peer a neighbour solicitation round trip.
	if err := netdevice.AnnounceIPv6Addrs(args.Netns, args.IfName, ipv6Addrs(ips)); err != nil {
		slog.Warn("announcing pod addresses", "container", args.ContainerID, "err", err)
	}
	steps.mark("announce")
	success = true
	slog.Info("pod got its NIC", "container", args.ContainerID, "device", dev.Name, "ifname", args.IfName)
	return result, nil
}

// findDevice finds the pod's device. From a pool it takes the first member
// still free in the host under a lock held until release, which the caller
// calls once the device has left the host: concurrent ADDs never pick the
// same one.
func findDevice(args *skel.CmdArgs, conf *Config) (*netdevice.Device, func(), error) {
	if conf.Pool == nil {
		dev, err := netdevice.Find(conf.Device)
		if err != nil {
			return nil, nil, fmt.Errorf("finding device by %s: %w", conf.Device, err)
		}
		return dev, func() {}, nil
	}
	unlock, err := lockPool(conf)
	if err != nil {
		return nil, nil, err
	}
	var sels []netdevice.Selector
	for _, m := range conf.Pool.MACs {
		sels = append(sels, netdevice.Selector{MAC: m})
	}
	for _, n := range conf.Pool.Names {
		sels = append(sels, netdevice.Selector{Name: n})
	}
	for _, sel := range sels {
		dev, err := netdevice.Find(sel)
		if err == nil {
			slog.Debug("took device from the pool", "container", args.ContainerID, "device", dev.Name)
			return dev, unlock, nil
		}
		if !errors.Is(err, netdevice.ErrNotFound) && !errors.Is(err, netdevice.ErrBusy) {
			unlock()
			return nil, nil, fmt.Errorf("looking through the device pool: %w", err)
		}
	}
	unlock()
	return nil, nil, fmt.Errorf("device pool of %d: every device is in use: %w", len(sels), netdevice.ErrNotFound)
}

// claimDPDK records in st that the pod holds the DPDK-bound VF at pci,
// under a node-wide lock, unless another attachment holds it already:
// nothing else on the node marks such a VF as taken.
func claimDPDK(conf *Config, st *State, pci string) error {
	unlock, err := lockFile(conf.StateDir, "dpdk.lock")
	if err != nil {
		return types.NewError(types.ErrIOFailure, "locking the DPDK claims", err.Error())
	}
	defer unlock()
	holder, err := dpdkHolder(conf.StateDir, pci, st.ContainerID, st.Ifname)
	if err != nil {
		return types.NewError(types.ErrIOFailure, "reading the DPDK claims", err.Error())
	}
	if holder != nil {
		return cniError(ErrCodeDeviceBusy, "finding the pod's device",
			fmt.Errorf("%w: VF %s (DPDK driver) is held by container %s, interface %s, network %s", netdevice.ErrBusy, pci, holder.ContainerID, holder.Ifname, holder.Network))
	}
	st.PCIAddress = pci
	if err := st.save(conf.StateDir); err != nil {
		return types.NewError(types.ErrIOFailure, "saving state", err.Error())
	}
	return nil
}

// lockPool takes the network's pool lock, a flock on a file in the state
// dir, shared by every podnic process on the node.
func lockPool(conf *Config) (func(), error) {
	unlock, err := lockFile(filepath.Join(conf.StateDir, unsafeName.ReplaceAllString(conf.Network, "_")), "pool.lock")
	if err != nil {
		return nil, fmt.Errorf("locking device pool: %w", err)
	}
	return unlock, nil
}

// lockFile takes an exclusive flock on dir/name, creating both, and
// returns the idempotent unlock.
func lockFile(dir, name string) (func(), error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state dir: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("taking lock %s: %w", f.Name(), err)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
			f.Close()
		})
	}, nil
}

func podMTU(conf *Config, dev *netdevice.Device) int {
	if conf.MTU > 0 {
		return conf.MTU
	}
	return dev.MTU
}

// podRoutes are the IPAM routes, a default route per family with a
// gateway when IPAM gave none, and a route per Service CIDR. Each goes via
// the gateway of its family: with an on-link route the pod would ARP for a
// VIP and the packet would never reach tc.
func podRoutes(ips []*types100.IPConfig, routes []*types.Route, serviceCIDRs []netip.Prefix) []*types.Route {
	gw := map[bool]net.IP{}
	for _, ip := range ips {
		if ip.Gateway != nil {
			gw[ip.Address.IP.To4() == nil] = ip.Gateway
		}
	}
	var out []*types.Route
	hasDefault := map[bool]bool{}
	for _, r := range routes {
		r := *r
		v6 := r.Dst.IP.To4() == nil
		if r.GW == nil {
			r.GW = gw[v6]
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			hasDefault[v6] = true
		}
		out = append(out, &r)
	}
	for _, v6 := range []bool{false, true} {
		if gw[v6] != nil && !hasDefault[v6] {
			dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
			if v6 {
				dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			out = append(out, &types.Route{Dst: dst, GW: gw[v6]})
		}
	}
	for _, p := range serviceCIDRs {
		v6 := p.Addr().Is6()
		if gw[v6] == nil {
			continue
		}
		out = append(out, &types.Route{Dst: net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, GW: gw[v6]})
	}
	return out
}

func prefixes(ips []*types100.IPConfig) []netip.Prefix {
	var out []netip.Prefix
	for _, ip := range ips {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		ones, _ := ip.Address.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones))
	}
	return out
}

func ipv6Addrs(ips []*types100.IPConfig) []netip.Addr {
	var out []netip.Addr
	for _, p := range prefixes(ips) {
		if p.Addr().Is6() {
			out = append(out, p.Addr())
		}
	}
	return out
}

func netdeviceRoutes(rs []*types.Route) []netdevice.Route {
	var out []netdevice.Route
	for _, r := range rs {
		a, _ := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		nr := netdevice.Route{Dst: netip.PrefixFrom(a.Unmap(), ones)}
		if r.GW != nil {
			gw, _ := netip.AddrFromSlice(r.GW)
			nr.GW = gw.Unmap()
			nr.OnLink = true
		}
		out = append(out, nr)
	}
	return out
}

// allocation is an address allocation that may be under way.
type allocation struct {
	args *skel.CmdArgs
	conf *Config
	done chan struct{} // nil until started; closed when finished
	ips  []*types100.IPConfig
	rts  []*types.Route
	err  error
}

// startAllocation starts allocating the pod's addresses with podnic's
// IPAM on a goroutine of its own, so that it runs while the device moves:
// the move waits for RCU grace periods, the IPAM for its fsyncs, and
// neither needs the other. A delegated IPAM plugin starts only when wait
// is called, after the move: plugins may expect the interface in the pod
// (dhcp does).
func startAllocation(args *skel.CmdArgs, conf *Config) *allocation {
	a := &allocation{args: args, conf: conf}
	if conf.IPAMType == IPAMTypePodnic {
		a.start()
	}
	return a
}

func (a *allocation) start() {
	a.done = make(chan struct{})
	go func() {
		defer close(a.done)
		a.ips, a.rts, a.err = allocate(a.args, a.conf)
	}()
}

// wait starts the allocation if it has not started and returns its result.
func (a *allocation) wait() ([]*types100.IPConfig, []*types.Route, error) {
	if a.done == nil {
		a.start()
	}
	<-a.done
	return a.ips, a.rts, a.err
}

// settle waits for an allocation under way to finish; it starts none.
func (a *allocation) settle() {
	if a.done != nil {
		<-a.done
	}
}

// allocate gets the pod's addresses from podnic's IPAM or a delegated
// IPAM plugin.
func allocate(args *skel.CmdArgs, conf *Config) ([]*types100.IPConfig, []*types.Route, error) {
	if conf.IPAMType == IPAMTypePodnic {
		store, cfg, err := openPodnicIPAM(conf)
		if err != nil {
			return nil, nil, err
		}
		defer store.Close()
		allocs, err := store.Allocate(ipam.Owner{ContainerID: args.ContainerID, Ifname: args.IfName})
		if err != nil {
			return nil, nil, err
		}
		var ips []*types100.IPConfig
		for _, a := range allocs {
			ip := &types100.IPConfig{Address: net.IPNet{IP: a.Addr.Addr().AsSlice(), Mask: net.CIDRMask(a.Addr.Bits(), a.Addr.Addr().BitLen())}}
			if a.Gateway.IsValid() {
				ip.Gateway = a.Gateway.AsSlice()
			}
			ips = append(ips, ip)
		}
		return ips, ipamRoutes(cfg), nil
	}
	r, err := execIPAM(args, conf, "ADD")
	if err != nil {
		return nil, nil, err
	}
	res, err := types100.NewResultFromResult(r)
	if err != nil {
		return nil, nil, fmt.Errorf("converting %s result: %w", conf.IPAMType, err)
	}
	if len(res.IPs) == 0 {
		return nil, nil, fmt.Errorf("ipam plugin %s returned no address", conf.IPAMType)
	}
	return res.IPs, res.Routes, nil
}

// execIPAM runs the delegated IPAM plugin with explicit arguments, so DEL
// and GC work from cached state whatever the caller's environment says.
func execIPAM(args *skel.CmdArgs, conf *Config, cmd string) (types.Result, error) {
	paths := strings.Split(os.Getenv("CNI_PATH"), string(os.PathListSeparator))
	if args.Path != "" {
		paths = strings.Split(args.Path, string(os.PathListSeparator))
	}
	plugin, err := invoke.FindInPath(conf.IPAMType, paths)
	if err != nil {
		return nil, fmt.Errorf("finding ipam plugin %s: %w", conf.IPAMType, err)
	}
	iargs := &invoke.Args{Command: cmd, ContainerID: args.ContainerID, NetNS: args.Netns, IfName: args.IfName, Path: strings.Join(paths, string(os.PathListSeparator))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if cmd == "ADD" {
		return invoke.ExecPluginWithResult(ctx, plugin, conf.raw, iargs, nil)
	}
	return nil, invoke.ExecPluginWithoutResult(ctx, plugin, conf.raw, iargs, nil)
}

func openPodnicIPAM(conf *Config) (*ipam.Store, *ipam.Config, error) {
	cfg, err := ipam.ParseConfig(conf.raw)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	store, err := ipam.Open(cfg)
	if err != nil {
		return nil, nil, err
	}
	return store, cfg, nil
}

func ipamRoutes(cfg *ipam.Config) []*types.Route {
	var out []*types.Route
	for _, r := range cfg.Routes {
		rt := &types.Route{Dst: net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}}
		if r.GW.IsValid() {
			rt.GW = r.GW.AsSlice()
		}
		out = append(out, rt)
	}
	return out
}

// releaseAddresses gives the pod's addresses back, from cached state.
func releaseAddresses(conf *Config, st *State) error {
	typ := st.IPAMType
	if typ == "" {
		typ = conf.IPAMType
	}
	if typ == IPAMTypePodnic {
		store, _, err := openPodnicIPAM(conf)
		if err != nil {
			return fmt.Errorf("releasing addresses: %w", err)
		}
		defer store.Close()
		if err := store.Release(ipam.Owner{ContainerID: st.ContainerID, Ifname: st.Ifname}); err != nil {
			return fmt.Errorf("releasing addresses: %w", err)
		}
		return nil
	}
	if typ == "" {
		return nil
	}
	c := *conf
	c.IPAMType = typ
	if _, err := execIPAM(&skel.CmdArgs{ContainerID: st.ContainerID, Netns: st.Netns, IfName: st.Ifname}, &c, "DEL"); err != nil {
		return fmt.Errorf("releasing addresses through %s: %w", typ, err)
	}
	return nil
}

// gcAddresses lets the IPAM release what no valid attachment holds.
func gcAddresses(conf *Config) error {
	if conf.IPAMType != IPAMTypePodnic {
		// Delegated IPAM plugins implement GC themselves (1.1.0); the
		// runtime calls them through the conflist.
		return nil
	}
	store, _, err := openPodnicIPAM(conf)
	if err != nil {
		return fmt.Errorf("collecting addresses: %w", err)
	}
	defer store.Close()
	var valid []ipam.Owner
	for _, a := range conf.ValidAttach {
		valid = append(valid, ipam.Owner{ContainerID: a.ContainerID, Ifname: a.IfName})
	}
	if _, err := store.GC(valid); err != nil {
		return fmt.Errorf("collecting addresses: %w", err)
	}
	return nil
}

// releaseDevice returns the pod's device to the host as it was.
func releaseDevice(st *State, netns string) error {
	var errs []error
	if len(st.Device) > 0 {
		var saved netdevice.Saved
		if err := json.Unmarshal(st.Device, &saved); err != nil {
			return fmt.Errorf("decoding saved device: %w", err)
		}
		if err := netdevice.MoveOut(netns, st.Ifname, &saved); err != nil {
			errs = append(errs, fmt.Errorf("returning the device to the host: %w", err))
		}
	}
	if len(st.VF) > 0 {
		var saved netdevice.VFSaved
		if err := json.Unmarshal(st.VF, &saved); err != nil {
			return fmt.Errorf("decoding saved VF settings: %w", err)
		}
		if err := netdevice.RestoreVF(&saved); err != nil {
			errs = append(errs, fmt.Errorf("restoring VF settings: %w", err))
		}
	}
	return errors.Join(errs...)
}

// checkDevice verifies the device is in the pod with its MAC, addresses
// and a default route through it.
// checkDPDK checks a pod that holds a VF bound to a DPDK driver: no netdev
// and no programs, so the VF must still be there, still so bound.
func checkDPDK(st *State) error {
	dev, err := netdevice.Find(netdevice.Selector{PCIAddress: st.PCIAddress})
	if err != nil {
		return types.NewError(ErrCodeDevice, "device missing", err.Error())
	}
	if !dev.DPDK {
		return types.NewError(ErrCodeDevice, "device changed", fmt.Sprintf("VF %s is bound to %q now, not to a DPDK driver", st.PCIAddress, dev.Driver))
	}
	return nil
}

func checkDevice(args *skel.CmdArgs, st *State) error {
	var mac net.HardwareAddr
	var have []netip.Prefix
	var defaultRoute bool
	err := netdevice.InNetns(args.Netns, func() error {
		ifc, err := net.InterfaceByName(args.IfName)
		if err != nil {
			return err
		}
		mac = ifc.HardwareAddr
		as, err := ifc.Addrs()
		if err != nil {
			return err
		}
		for _, a := range as {
			if p, err := netip.ParsePrefix(a.String()); err == nil {
				have = append(have, p)
			}
		}
		defaultRoute = hasDefaultRoute(args.IfName)
		return nil
	})
	if err != nil {
		return types.NewError(ErrCodeDevice, "device missing from the pod", err.Error())
	}
	if st.MAC != "" && !strings.EqualFold(mac.String(), st.MAC) {
		return types.NewError(ErrCodeDevice, "device changed", fmt.Sprintf("%s has MAC %s, podnic gave it %s", args.IfName, mac, st.MAC))
	}
	for _, a := range st.Addresses {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			continue
		}
		if !slices.Contains(have, p) {
			return types.NewError(ErrCodeDevice, "address missing", fmt.Sprintf("%s lacks %s", args.IfName, a))
		}
	}
	if !defaultRoute {
		return types.NewError(ErrCodeDevice, "route missing", fmt.Sprintf("no default route via %s in the pod", args.IfName))
	}
	return nil
}

// hasDefaultRoute reads the calling thread's IPv4 and IPv6 route tables.
func hasDefaultRoute(ifname string) bool {
	if b, err := os.ReadFile("/proc/thread-self/net/route"); err == nil {
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) > 7 && f[0] == ifname && f[1] == "00000000" && f[7] == "00000000" {
				return true
			}
		}
	}
	if b, err := os.ReadFile("/proc/thread-self/net/ipv6_route"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 10 && f[0] == strings.Repeat("0", 32) && f[1] == "00" && f[9] == ifname {
				return true
			}
		}
	}
	return false
}

// stepTimer records how long each step of ADD or DEL took, logged at
// debug level (PODNIC_LOG_LEVEL=debug) so an operator can see where the
// time goes.
type stepTimer struct {
	verb        string
	start, last time.Time
	fields      []any
}

func newStepTimer(verb string) *stepTimer {
	now := time.Now()
	return &stepTimer{verb: verb, start: now, last: now}
}

// mark records step as done now; a nil stepTimer records nothing.
func (s *stepTimer) mark(step string) {
	if s == nil {
		return
	}
	now := time.Now()
	s.fields = append(s.fields, step, now.Sub(s.last).Round(10*time.Microsecond))
	s.last = now
}

func (s *stepTimer) log(container string) {
	if s == nil {
		return
	}
	slog.Debug(s.verb+" steps", append([]any{"container", container, "total", time.Since(s.start).Round(10 * time.Microsecond)}, s.fields...)...)
}

// stateWriter saves states on a goroutine, one after the other, so that a
// write (an fsync, 1-3 ms here) overlaps a step that waits for the kernel.
// A save starts only when the one before it has finished: the last state
// started is the one on disk.
type stateWriter struct {
	dir  string
	done chan error // the latest save's; nil when none is under way
}

// start saves st, a copy, after any save under way.
func (w *stateWriter) start(st State) {
	prev, done := w.done, make(chan error, 1)
	w.done = done
	go func() {
		if prev != nil {
			if err := <-prev; err != nil {
				done <- err
				return
			}
		}
		done <- st.save(w.dir)
	}()
}

// wait waits for the saves under way and returns the first error.
func (w *stateWriter) wait() error {
	if w.done == nil {
		return nil
	}
	err := <-w.done
	w.done = nil
	return err
}
