package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// EventReader reads drop and reject events from the datapath's ring buffer.
type EventReader struct {
	r *ringbuf.Reader
}

// ErrNoEvent is returned by Read when no event arrived in time.
var ErrNoEvent = errors.New("no event")

// NewEventReader opens a reader on the events map. Only one reader should
// consume events at a time: each event is delivered once.
func NewEventReader(events *ebpf.Map) (*EventReader, error) {
	r, err := ringbuf.NewReader(events)
	if err != nil {
		return nil, fmt.Errorf("opening event ring buffer: %w", err)
	}
	return &EventReader{r: r}, nil
}

// Read waits up to timeout for the next event.
func (r *EventReader) Read(timeout time.Duration) (Event, error) {
	var ev Event
	r.r.SetDeadline(time.Now().Add(timeout))
	rec, err := r.r.Read()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return ev, ErrNoEvent
	}
	if err != nil {
		return ev, fmt.Errorf("reading event: %w", err)
	}
	if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &ev); err != nil {
		return ev, fmt.Errorf("decoding event: %w", err)
	}
	return ev, nil
}

// Close stops the reader.
func (r *EventReader) Close() error { return r.r.Close() }
