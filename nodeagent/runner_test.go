package nodeagent

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

// runnerHarness drives a BoundedFrequencyRunner on a fake clock: every run
// of fn is reported on calls, and fn returns the next error of results.
type runnerHarness struct {
	t       *testing.T
	clock   *clocktesting.FakeClock
	runner  *BoundedFrequencyRunner
	calls   chan time.Time
	results chan error
	stop    chan struct{}
	done    chan struct{}
}

const (
	runnerMin   = time.Second
	runnerRetry = 5 * time.Second
	runnerMax   = time.Minute
)

func newRunnerHarness(t *testing.T) *runnerHarness {
	h := &runnerHarness{
		t: t, clock: clocktesting.NewFakeClock(time.Unix(1_000_000, 0)),
		calls: make(chan time.Time, 16), results: make(chan error, 16),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	fn := func() error {
		h.calls <- h.clock.Now()
		select {
		case err := <-h.results:
			if err != nil && err.Error() == "panic" {
				panic("runner test panic")
			}
			return err
		default:
			return nil
		}
	}
	r, err := NewBoundedFrequencyRunner("test", fn, runnerMin, runnerRetry, runnerMax, h.clock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	h.runner = r
	go func() {
		defer close(h.done)
		r.Loop(h.stop)
	}()
	t.Cleanup(func() {
		close(h.stop)
		<-h.done
	})
	h.waitIdle()
	return h
}

// waitIdle waits until the loop waits on its timers: the fake clock may
// only be stepped then, or the step is lost.
func (h *runnerHarness) waitIdle() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.clock.HasWaiters() {
		if time.Now().After(deadline) {
			h.t.Fatal("the runner never waited on its timers")
		}
		time.Sleep(time.Millisecond)
	}
}

// expectRun waits for one run and returns the fake time it started at.
func (h *runnerHarness) expectRun(what string) time.Time {
	h.t.Helper()
	select {
	case at := <-h.calls:
		h.waitIdle()
		return at
	case <-time.After(5 * time.Second):
		h.t.Fatalf("%s: no run", what)
		return time.Time{}
	}
}

// expectNoRun checks that nothing runs for a while of real time.
func (h *runnerHarness) expectNoRun(what string) {
	h.t.Helper()
	select {
	case at := <-h.calls:
		h.t.Fatalf("%s: ran at +%s", what, at.Sub(time.Unix(1_000_000, 0)))
	case <-time.After(50 * time.Millisecond):
	}
}

func TestRunnerRunsAtOnceWhenIdleAndCoalescesRequestsWithinMinInterval(t *testing.T) {
	h := newRunnerHarness(t)
	h.expectNoRun("before any request")
	h.runner.Run()
	first := h.expectRun("first request")

	// Three requests within the minimum interval make one run, at its end.
	h.runner.Run()
	h.runner.Run()
	h.runner.Run()
	h.expectNoRun("requests right after a run")
	h.clock.Step(runnerMin - time.Millisecond)
	h.expectNoRun("1ms before the minimum interval")
	h.clock.Step(time.Millisecond)
	if at := h.expectRun("minimum interval over"); at.Sub(first) != runnerMin {
		t.Errorf("second run %s after the first, want %s", at.Sub(first), runnerMin)
	}
	h.clock.Step(runnerMin)
	h.expectNoRun("coalesced requests ran twice")
}

func TestRunnerRunsAtLeastEveryMaxInterval(t *testing.T) {
	h := newRunnerHarness(t)
	h.runner.Run()
	first := h.expectRun("request")
	h.clock.Step(runnerMax - time.Second)
	h.expectNoRun("before the maximum interval")
	h.clock.Step(time.Second)
	if at := h.expectRun("maximum interval"); at.Sub(first) != runnerMax {
		t.Errorf("periodic run %s after the last one, want %s", at.Sub(first), runnerMax)
	}
	// A run on request restarts the period.
	h.clock.Step(10 * time.Second)
	h.runner.Run()
	asked := h.expectRun("request")
	h.clock.Step(runnerMax - time.Second)
	h.expectNoRun("a requested run did not restart the period")
	h.clock.Step(time.Second)
	if at := h.expectRun("maximum interval after a request"); at.Sub(asked) != runnerMax {
		t.Errorf("periodic run %s after the requested one, want %s", at.Sub(asked), runnerMax)
	}
}

func TestRunnerRetriesAFailedRunAfterRetryInterval(t *testing.T) {
	h := newRunnerHarness(t)
	for _, failure := range []error{errors.New("map write failed"), errors.New("panic")} {
		h.clock.Step(runnerMin) // the last run's minimum interval
		h.results <- failure
		h.runner.Run()
		failed := h.expectRun("request")
		h.clock.Step(runnerRetry - time.Second)
		h.expectNoRun("before the retry interval")
		h.clock.Step(time.Second)
		if at := h.expectRun("retry after " + failure.Error()); at.Sub(failed) != runnerRetry {
			t.Errorf("retry %s after the failure, want %s", at.Sub(failed), runnerRetry)
		}
		// Success: back to the maximum interval.
		h.clock.Step(runnerRetry)
		h.expectNoRun("retried after a success")
		h.clock.Step(runnerMax - runnerRetry)
		h.expectRun("maximum interval after recovery")
	}
}

func TestRunnerRefusesMaxIntervalBelowMinInterval(t *testing.T) {
	_, err := NewBoundedFrequencyRunner("bad", func() error { return nil }, time.Minute, time.Second, time.Second, nil, nil)
	if err == nil {
		t.Fatal("accepted maxInterval 1s below minInterval 1m")
	}
}
