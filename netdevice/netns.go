package netdevice

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
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

	errc := make(chan error, 1)
	go func() {
		errc <- runLocked(path, target, fn)
	}()
	return <-errc
}

// runLocked enters target on the goroutine's locked thread, runs fn and
// restores the original namespace. It unlocks the thread only when the
// restore succeeded.
func runLocked(path string, target netns.NsHandle, fn func() error) error {
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
		return fmt.Errorf("entering netns %s: %w", path, err)
	}

	fnErr := fn()

	if err := netns.Set(orig); err != nil {
		// The thread is in the wrong namespace for good: keep it locked
		// so the runtime terminates it when this goroutine exits.
		return errors.Join(fnErr, fmt.Errorf("restoring netns after %s: %w", path, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}
