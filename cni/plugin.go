package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/netdevice"
)

// SupportedVersions are the CNI spec versions the plugin speaks.
var SupportedVersions = version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Funcs are the plugin's verbs, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: Add, Del: Del, Check: Check, Status: Status, GC: GC}
}

// Add gives the pod its NIC (or, chained, attaches to the NIC an earlier
// plugin made), addresses, routes and podnic's datapath.
func Add(args *skel.CmdArgs) error {
	steps := newStepTimer("ADD")
	defer steps.log(args.ContainerID)
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return cniError(types.ErrInvalidNetworkConfig, "invalid config", err)
	}
	if args.Netns == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_NETNS is empty", "ADD needs the pod's network namespace")
	}
	// Fail before touching anything when the datapath is not there.
	dp, err := bpf.OpenPinned(conf.BPFRoot)
	if err != nil {
		return cniError(types.ErrTryAgainLater, "opening the datapath", err)
	}
	defer dp.Close()
	steps.mark("datapath")

	var result *types100.Result
	if conf.Chained {
		result, err = addChained(args, conf, dp)
	} else {
		result, err = addExclusive(args, conf, dp, steps)
	}
	if err != nil {
		return err
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// addChained attaches to the interface an earlier plugin put in the pod.
func addChained(args *skel.CmdArgs, conf *Config, dp *bpf.Datapath) (*types100.Result, error) {
	prev := conf.PrevResult
	if prev == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "chained mode needs a prevResult", "put podnic after the plugin that creates the interface in a conflist")
	}
	found := false
	for _, iface := range prev.Interfaces {
		if iface.Name == args.IfName && (iface.Sandbox == "" || iface.Sandbox == args.Netns) {
			found = true
		}
	}
	if !found {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "interface not in prevResult", fmt.Sprintf("no interface %q in the pod in the earlier plugin's result", args.IfName))
	}
	st := &State{Network: conf.Network, ContainerID: args.ContainerID, Ifname: args.IfName, Netns: args.Netns,
		Chained: true, Created: time.Now(), BPFRoot: conf.BPFRoot, AttachMode: string(conf.AttachMode)}
	if err := st.save(conf.StateDir); err != nil {
		return nil, types.NewError(types.ErrIOFailure, "saving state", err.Error())
	}
	success := false
	defer func() {
		if !success {
			_ = bpf.DetachPod(conf.BPFRoot, owner(args.ContainerID, args.IfName), args.Netns)
			_ = removeState(conf.StateDir, conf.Network, args.ContainerID, args.IfName)
		}
	}()
	if err := netdevice.PodSysctls(args.Netns); err != nil {
		return nil, cniError(ErrCodeDevice, "setting pod sysctls", err)
	}
	if _, err := dp.AttachPodPath(args.Netns, args.IfName, owner(args.ContainerID, args.IfName), conf.AttachMode, conf.ServicePath); err != nil {
		return nil, cniError(ErrCodeDatapath, "attaching podnic's programs", err)
	}
	st.Attached = true
	if err := st.save(conf.StateDir); err != nil {
		return nil, types.NewError(types.ErrIOFailure, "saving state", err.Error())
	}
	success = true
	slog.Info("attached podnic to chained interface", "container", args.ContainerID, "ifname", args.IfName)
	return prev, nil
}

// Del undoes Add. It is idempotent and succeeds when the netns or the
// device is gone already; addresses are released from the cached state.
func Del(args *skel.CmdArgs) error {
	steps := newStepTimer("DEL")
	defer steps.log(args.ContainerID)
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return cniError(types.ErrInvalidNetworkConfig, "invalid config", err)
	}
	st, err := loadState(conf.StateDir, conf.Network, args.ContainerID, args.IfName)
	if err != nil {
		return cniError(types.ErrIOFailure, "reading state", err)
	}
	if st == nil {
		// Nothing recorded: ADD never got far, or DEL ran before. Still
		// make sure no pins and no addresses stay behind.
		st = &State{Network: conf.Network, ContainerID: args.ContainerID, Ifname: args.IfName, Netns: args.Netns,
			Chained: conf.Chained, BPFRoot: conf.BPFRoot, IPAMType: conf.IPAMType}
	}
	if args.Netns != "" {
		st.Netns = args.Netns
	}
	steps.mark("read")
	return teardown(conf, st, steps)
}

// teardown removes everything a state records, in reverse order of ADD.
// Each step tolerates what a crash, a node reboot or a force delete may
// already have removed. steps, if not nil, records how long each took.
func teardown(conf *Config, st *State, steps *stepTimer) error {
	var errs []error
	netns := st.Netns
	if netns != "" {
		if _, err := os.Stat(netns); err != nil {
			netns = "" // gone: pinned links are unpinned, filters died with it
		}
	}
	// The TCX links are parked (they run a pass-through program from
	// here on) and unpinned only after the device has moved: the kernel
	// then detaches them from a workqueue, each after a grace period under
	// rtnl, and neither DEL nor the move waits for that (see
	// bpf.DetachPodDeferred).
	unpin, err := bpf.DetachPodDeferred(st.BPFRoot, owner(st.ContainerID, st.Ifname), netns)
	if err != nil {
		errs = append(errs, fmt.Errorf("detaching programs: %w", err))
	}
	steps.mark("detach")
	if !st.Chained {
		if err := releaseDevice(st, netns); err != nil {
			errs = append(errs, err)
		}
		steps.mark("device")
	}
	if unpin != nil {
		if err := unpin(); err != nil {
			errs = append(errs, fmt.Errorf("detaching programs: %w", err))
		}
		steps.mark("unpin")
	}
	if !st.Chained {
		if err := releaseAddresses(conf, st); err != nil {
			errs = append(errs, err)
		}
		steps.mark("addresses")
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrIOFailure, "tearing down", errors.Join(errs...).Error())
	}
	if err := removeState(conf.StateDir, st.Network, st.ContainerID, st.Ifname); err != nil {
		return types.NewError(types.ErrIOFailure, "removing state", err.Error())
	}
	steps.mark("state")
	return nil
}

// Check verifies that what Add set up is still in place.
func Check(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return cniError(types.ErrInvalidNetworkConfig, "invalid config", err)
	}
	st, err := loadState(conf.StateDir, conf.Network, args.ContainerID, args.IfName)
	if err != nil {
		return cniError(types.ErrIOFailure, "reading state", err)
	}
	if st == nil {
		return types.NewError(types.ErrUnknownContainer, "no podnic attachment", fmt.Sprintf("container %s interface %s was not added by podnic on network %s", args.ContainerID, args.IfName, conf.Network))
	}
	if st.PCIAddress != "" {
		return checkDPDK(st)
	}
	if !st.Chained {
		if err := checkDevice(args, st); err != nil {
			return err
		}
	}
	as, err := bpf.QueryInterface(args.Netns, args.IfName)
	if err != nil {
		return cniError(ErrCodeDatapath, "querying attached programs", err)
	}
	want := map[string]bool{bpf.ProgFromPod: false, bpf.ProgToPod: false}
	if conf.ServicePath == bpf.PathSocket {
		want = map[string]bool{bpf.ProgGuard: false}
	}
	for _, a := range as {
		if _, ok := want[a.ProgramName]; ok {
			want[a.ProgramName] = true
		}
	}
	for name, ok := range want {
		if !ok {
			return types.NewError(ErrCodeDatapath, "program missing", fmt.Sprintf("%s is not attached to %s", name, args.IfName))
		}
	}
	return nil
}

// Status says whether the plugin can serve ADD: only when the pinned
// programs and maps exist.
func Status(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return cniError(types.ErrInvalidNetworkConfig, "invalid config", err)
	}
	dp, err := bpf.OpenPinned(conf.BPFRoot)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "podnic datapath not ready", err.Error())
	}
	dp.Close()
	return nil
}

// GC releases every attachment of this network that the runtime no longer
// lists as valid: pins, devices and addresses. No reference plugin
// implements GC yet.
func GC(args *skel.CmdArgs) error {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return cniError(types.ErrInvalidNetworkConfig, "invalid config", err)
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range conf.ValidAttach {
		valid[a] = true
	}
	states, err := listStates(conf.StateDir, conf.Network)
	if err != nil {
		return cniError(types.ErrIOFailure, "listing states", err)
	}
	var errs []error
	for _, st := range states {
		if valid[types.GCAttachment{ContainerID: st.ContainerID, IfName: st.Ifname}] {
			continue
		}
		if err := teardown(conf, st, nil); err != nil {
			errs = append(errs, fmt.Errorf("%s/%s: %w", st.ContainerID, st.Ifname, err))
			continue
		}
		slog.Info("garbage-collected attachment", "container", st.ContainerID, "ifname", st.Ifname)
	}
	if err := gcAddresses(conf); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrIOFailure, "garbage collection incomplete", errors.Join(errs...).Error())
	}
	return nil
}

func marshalRaw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return b
}
