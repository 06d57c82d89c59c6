// Command podnic is the CNI plugin that gives a pod its own NIC (an ENI or
// an SR-IOV VF) and podnic's Service datapath on it, or, chained after
// another plugin, attaches the datapath to the interface that plugin made.
package main

import (
	"log/slog"
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/podnic/podnic/cni"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() {
	// Namespace switches happen on the locked main thread.
	runtime.LockOSThread()
}

func main() {
	// stdout carries the CNI result; logs go to stderr, which runtimes log.
	level := slog.LevelWarn
	if l := os.Getenv("PODNIC_LOG_LEVEL"); l != "" {
		_ = level.UnmarshalText([]byte(l))
	}
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	skel.PluginMainFuncs(cni.Funcs(), cni.SupportedVersions, "podnic CNI plugin "+version)
}
