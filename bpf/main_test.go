package bpf

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// TestMain fails the run when tests leak file descriptors: every map,
// program, link and reader must be closed.
func TestMain(m *testing.M) {
	warmUpPoller()
	before := openFDs()
	code := m.Run()
	if after := openFDs(); code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "leaked %d file descriptors (%d before, %d after)\n", after-before, before, after)
		code = 1
	}
	os.Exit(code)
}

func openFDs() int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(fds)
}

// warmUpPoller makes the Go runtime create its network poller (an epoll fd
// and an eventfd, kept for the life of the process) before the count.
func warmUpPoller() {
	r, w, err := os.Pipe()
	if err != nil {
		return
	}
	_ = r.SetReadDeadline(time.Now())
	_ = r.Close()
	_ = w.Close()
}
