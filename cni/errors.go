package cni

import (
	"errors"
	"os"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnic/podnic/bpf"
)

// Plugin error codes, beside the CNI spec's well-known ones (1-99).
const (
	ErrCodeDeviceNotFound uint = 100 // no host device matches the selector
	ErrCodeDeviceBusy     uint = 101 // the device is not free on the host
	ErrCodeIPAM           uint = 102 // address allocation failed
	ErrCodeDatapath       uint = 103 // attaching the programs failed
	ErrCodeDevice         uint = 104 // moving or configuring the device failed
)

// cniError turns an error into a CNI error with a code that says what to
// fix; errors that are already CNI errors pass through.
func cniError(code uint, msg string, err error) error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	switch {
	case errors.Is(err, ErrInvalidConfig):
		return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	case errors.Is(err, bpf.ErrNoSocketLB):
		return types.NewError(types.ErrTryAgainLater, "podnic socket path not ready: "+err.Error(), "servicePath \"socket\" needs podnic-agent's socket-level balancing; it is not attached yet, or the agent runs with --socket-lb=false (then use servicePath \"full\")")
	case errors.Is(err, bpf.ErrNotLoaded):
		return types.NewError(types.ErrTryAgainLater, "podnic datapath not ready: "+err.Error(), "podnic-agent has not loaded the programs and maps yet (or run 'podnicctl load')")
	}
	return types.NewError(code, msg, err.Error())
}

// failpoint fails ADD right after the named step when PODNIC_FAILPOINT
// names it. It exists for the rollback tests, which must show that a
// failure after any step leaves nothing behind; nothing sets it in
// production.
func failpoint(step string) error {
	if os.Getenv("PODNIC_FAILPOINT") == step {
		return types.NewError(types.ErrInternal, "failpoint", "injected failure after step "+step)
	}
	return nil
}
