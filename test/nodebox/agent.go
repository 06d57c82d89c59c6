package nodebox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"
)

// AgentPID returns the PID of the running podnic-agent.
func (b *Box) AgentPID() (int, error) {
	p := b.agent()
	if !p.alive() {
		return 0, errors.New("podnic-agent is not running")
	}
	return p.PID, nil
}

// StopAgent sends sig to podnic-agent, by its PID, and waits until it has
// exited. The datapath and its pinned maps stay; StartAgent is the inverse.
func (b *Box) StopAgent(sig syscall.Signal) error {
	p := b.agent()
	if !p.alive() {
		return errors.New("podnic-agent is not running")
	}
	if err := syscall.Kill(p.PID, sig); err != nil {
		return fmt.Errorf("signalling podnic-agent (pid %d): %w", p.PID, err)
	}
	deadline := time.Now().Add(stopTimeout)
	for p.alive() {
		if time.Now().After(deadline) {
			return fmt.Errorf("podnic-agent (pid %d) still running %v after %v", p.PID, stopTimeout, sig)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Procs = slices.DeleteFunc(b.Procs, func(q *proc) bool { return q == p })
	return b.saveState()
}

// StartAgent starts podnic-agent as Up does and waits until it is healthy
// (its sources synced and its first sync written).
func (b *Box) StartAgent(ctx context.Context) error {
	if b.agent().alive() {
		return errors.New("podnic-agent is running already")
	}
	return b.startAgent(ctx)
}

// agent returns the last podnic-agent process the box started, or nil.
func (b *Box) agent() *proc {
	for i := len(b.Procs) - 1; i >= 0; i-- {
		if b.Procs[i].Name == "podnic-agent" {
			return b.Procs[i]
		}
	}
	return nil
}
