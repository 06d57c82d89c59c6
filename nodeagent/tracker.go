package nodeagent

import (
	"sync"
	"time"
)

// Change is one object's coalesced change: its newest value, or its
// deletion, with the trigger times of the events that led there.
type Change[T any] struct {
	Value    T
	Deleted  bool
	Triggers []time.Time
}

// ChangeTracker coalesces informer events per object, as kube-proxy's
// ServiceChangeTracker and EndpointsChangeTracker do: only the newest value
// of an object is kept, and a change that brings an object back to what the
// last sync took (A→B→A, or add then delete) is no change at all.
// It is safe for concurrent use: informers write, the sync takes.
type ChangeTracker[T any] struct {
	equal   func(a, b T) bool
	trigger func(T) time.Time // optional: when the change began

	mu      sync.Mutex
	applied map[string]T // what the last Take handed out
	pending map[string]*Change[T]
}

// NewChangeTracker returns a tracker comparing values with equal; trigger,
// if not nil, tells when the change a value carries began.
func NewChangeTracker[T any](equal func(a, b T) bool, trigger func(T) time.Time) *ChangeTracker[T] {
	return &ChangeTracker[T]{equal: equal, trigger: trigger, applied: map[string]T{}, pending: map[string]*Change[T]{}}
}

// Set records that key now has value v. It reports whether a change is
// pending for key afterwards.
func (c *ChangeTracker[T]) Set(key string, v T) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.applied[key]; ok && c.equal(old, v) {
		delete(c.pending, key)
		return false
	}
	ch := c.pending[key]
	if ch == nil {
		ch = &Change[T]{}
		c.pending[key] = ch
	} else if !ch.Deleted && c.equal(ch.Value, v) {
		return true
	}
	ch.Value, ch.Deleted = v, false
	if c.trigger != nil {
		if t := c.trigger(v); !t.IsZero() {
			ch.Triggers = append(ch.Triggers, t)
		}
	}
	return true
}

// Delete records that key is gone. It reports whether a change is pending
// for key afterwards.
func (c *ChangeTracker[T]) Delete(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.applied[key]; !ok {
		delete(c.pending, key)
		return false
	}
	// A deletion's trigger time is the time of the last update, not of
	// the deletion: kube-proxy ignores it, and so does podnic.
	c.pending[key] = &Change[T]{Deleted: true}
	return true
}

// Take hands out the pending changes and counts them as applied.
func (c *ChangeTracker[T]) Take() map[string]*Change[T] {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.pending
	c.pending = map[string]*Change[T]{}
	for k, ch := range out {
		if ch.Deleted {
			delete(c.applied, k)
		} else {
			c.applied[k] = ch.Value
		}
	}
	return out
}

// Pending counts the objects with a change not yet taken.
func (c *ChangeTracker[T]) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.pending)
}
