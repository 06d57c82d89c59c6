package nodeagent

import (
	"fmt"
	"log/slog"
	"time"

	"k8s.io/utils/clock"
)

// BoundedFrequencyRunner runs a function when asked, but never sooner
// than minInterval after its last run ended, at least every maxInterval,
// and again within retryInterval after a run failed. It is kube-proxy's
// pkg/proxy/runner, with an injectable clock for tests.
type BoundedFrequencyRunner struct {
	name          string
	fn            func() error
	minInterval   time.Duration
	retryInterval time.Duration
	maxInterval   time.Duration
	clock         clock.Clock
	log           *slog.Logger
	run           chan struct{}
}

// NewBoundedFrequencyRunner returns a runner of fn; maxInterval must not
// be below minInterval.
func NewBoundedFrequencyRunner(name string, fn func() error, minInterval, retryInterval, maxInterval time.Duration, clk clock.Clock, log *slog.Logger) (*BoundedFrequencyRunner, error) {
	if maxInterval < minInterval {
		return nil, fmt.Errorf("runner %s: maxInterval %s is below minInterval %s", name, maxInterval, minInterval)
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	if log == nil {
		log = slog.Default()
	}
	return &BoundedFrequencyRunner{
		name: name, fn: fn, clock: clk, log: log,
		minInterval: minInterval, retryInterval: retryInterval, maxInterval: maxInterval,
		run: make(chan struct{}, 1),
	}, nil
}

// Loop runs fn until stop is closed.
func (r *BoundedFrequencyRunner) Loop(stop <-chan struct{}) {
	minTimer := r.clock.NewTimer(r.minInterval)
	defer minTimer.Stop()
	nextTimer := r.clock.NewTimer(r.maxInterval)
	defer nextTimer.Stop()
	for {
		select {
		case <-stop:
			return
		case <-nextTimer.C():
		case <-r.run:
		}
		// Stopped before the run so that tests with a fake clock can
		// wait for HasWaiters after it.
		minTimer.Stop()
		nextTimer.Stop()
		err := r.safeRun()
		next := r.maxInterval
		if err != nil {
			next = min(next, r.retryInterval)
			r.log.Warn("run failed, retrying", "runner", r.name, "in", next, "error", err)
		}
		minTimer.Reset(r.minInterval)
		nextTimer.Reset(next)
		select {
		case <-stop:
			return
		case <-minTimer.C():
		}
	}
}

func (r *BoundedFrequencyRunner) safeRun() (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return r.fn()
}

// Run asks for a run as soon as the bounds allow; requests made before it
// starts are one request.
func (r *BoundedFrequencyRunner) Run() {
	select {
	case r.run <- struct{}{}:
	default:
	}
}
