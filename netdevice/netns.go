package netdevice

import (
	"errors"
	"fmt"
	"io/fs"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InNetns runs fn on a locked OS thread inside the network namespace at
// path, then returns the thread to the namespace it came from. An empty path
// runs fn, on a locked thread too, in the current namespace.
//
// fn runs on a goroutine of its own, so the caller's thread never changes
// namespace. If the original namespace cannot be restored, the thread stays
// locked and dies with that goroutine, rather than serve other goroutines
// in the wrong namespace. Sockets fn creates keep the namespace they were
// created in and may be used from any goroutine afterwards.
func InNetns(path string, fn func() error) error {
	if path == "" {
		errc := make(chan error, 1)
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			errc <- fn()
		}()
		return <-errc
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("opening netns %s: %w", path, err)
	}
	defer target.Close()
	return inNetnsHandle(path, target, fn)
}

// inNetnsHandle is InNetns for a namespace that is already open; label
// names it in errors.
func inNetnsHandle(label string, target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		errc <- runLocked(label, target, fn)
	}()
	return <-errc
}

// runLocked enters target on the goroutine's locked thread, runs fn and
// restores the original namespace. It unlocks the thread only when the
// restore succeeded.
func runLocked(label string, target netns.NsHandle, fn func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("opening current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		// setns failed, so the thread is still where it was.
		runtime.UnlockOSThread()
		return fmt.Errorf("entering netns %s: %w", label, err)
	}

	fnErr := fn()

	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace for good: keep it locked
		// so the runtime terminates it when this goroutine exits.
		return errors.Join(fnErr, fmt.Errorf("restoring netns after %s: %w", label, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// errNetnsGone marks a pod netns path that no longer names a network
// namespace: the file is gone, or it is no longer an nsfs bind mount.
var errNetnsGone = errors.New("netns is gone")

// netnsRef is an open network namespace and a rtnetlink handle whose socket
// lives in it. Operations through nl act on that namespace whatever thread
// runs them, so the code that moves devices never switches namespaces
// itself. Both must be closed: the socket alone keeps the namespace alive.
type netnsRef struct {
	label string // for messages: "host", "temporary netns", or the path
	ns    netns.NsHandle
	nl    *netlink.Handle
}

func (r *netnsRef) close() {
	if r == nil {
		return
	}
	if r.nl != nil {
		r.nl.Close()
	}
	if r.ns.IsOpen() {
		_ = r.ns.Close()
	}
}

// handleIn opens a rtnetlink socket inside ns.
func handleIn(label string, ns netns.NsHandle) (*netlink.Handle, error) {
	var h *netlink.Handle
	err := inNetnsHandle(label, ns, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening netlink in %s: %w", label, err)
	}
	return h, nil
}

// currentNetns opens the calling thread's namespace: the host netns, or a
// simulated host when the caller runs inside InNetns.
func currentNetns() (*netnsRef, error) {
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("opening current netns: %w", err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		_ = ns.Close()
		return nil, fmt.Errorf("opening netlink in the current netns: %w", err)
	}
	return &netnsRef{label: "host", ns: ns, nl: h}, nil
}

// openNetns opens the pod netns at path. A path that no longer names a
// network namespace yields an error wrapping errNetnsGone.
func openNetns(path string) (*netnsRef, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("opening netns %s: %w (%w)", path, errNetnsGone, err)
		}
		return nil, fmt.Errorf("opening netns %s: %w", path, err)
	}
	h, err := handleIn(path, ns)
	if err != nil {
		_ = ns.Close()
		// setns refuses a file that is not a netns, such as the empty
		// mount point a runtime leaves behind after unmounting.
		if errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("opening netns %s: %w: not a network namespace (%w)", path, errNetnsGone, unix.EINVAL)
		}
		return nil, err
	}
	return &netnsRef{label: path, ns: ns, nl: h}, nil
}

// tempNetns creates an anonymous network namespace that lives as long as
// the returned reference is open. It has no name under /run/netns, so a
// crash cannot leak it: the kernel destroys it with the last reference and
// returns any physical device inside to the initial netns (a veth dies).
func tempNetns() (*netnsRef, error) {
	type result struct {
		ns  netns.NsHandle
		nl  *netlink.Handle
		err error
	}
	resc := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			resc <- result{err: fmt.Errorf("opening current netns: %w", err)}
			return
		}
		defer orig.Close()
		tmp, newErr := netns.New() // unshare(CLONE_NEWNET) on this thread only
		var h *netlink.Handle
		if newErr == nil {
			h, newErr = netlink.NewHandle(unix.NETLINK_ROUTE)
		}
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked so it dies with the goroutine.
			if h != nil {
				h.Close()
			}
			if tmp.IsOpen() {
				_ = tmp.Close()
			}
			resc <- result{err: fmt.Errorf("restoring netns after creating a temporary one: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		if newErr != nil {
			if tmp.IsOpen() {
				_ = tmp.Close()
			}
			resc <- result{err: fmt.Errorf("creating temporary netns: %w", newErr)}
			return
		}
		resc <- result{ns: tmp, nl: h}
	}()
	r := <-resc
	if r.err != nil {
		return nil, r.err
	}
	return &netnsRef{label: "temporary netns", ns: r.ns, nl: r.nl}, nil
}

// tempNetnsOnDemand is a temporary netns created on first use. Most
// moves need none (the device's names are free), and a netns is not free:
// creating one sets up every pernet subsystem, and destroying it queues a
// cleanup that takes rtnl and waits for RCU grace periods while the next
// CNI call may need rtnl too.
type tempNetnsOnDemand struct {
	ref *netnsRef
}

// get returns the temporary netns, creating it on the first call.
func (t *tempNetnsOnDemand) get() (*netnsRef, error) {
	if t.ref == nil {
		ref, err := tempNetns()
		if err != nil {
			return nil, err
		}
		t.ref = ref
	}
	return t.ref, nil
}

// is reports whether ns is the temporary netns (false before it exists).
func (t *tempNetnsOnDemand) is(ns *netnsRef) bool {
	return t.ref != nil && ns == t.ref
}

func (t *tempNetnsOnDemand) close() {
	t.ref.close()
	t.ref = nil
}

// dumpRetry repeats a netlink dump that the kernel interrupted because the
// table changed meanwhile; its partial result is not to be trusted.
func dumpRetry[T any](dump func() ([]T, error)) ([]T, error) {
	var err error
	for range 5 {
		var v []T
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return nil, err
}

// isLinkNotFound reports whether err says the link does not exist.
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}
