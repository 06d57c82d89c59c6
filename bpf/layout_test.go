package bpf

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// The Go layouts must match the C structs byte for byte, or every map
// access silently corrupts state.
func TestMapLayoutsMatchObject(t *testing.T) {
	spec, err := loadPodnic()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		m          string
		key, value any
	}{
		{"podnic_svc_v1", ServiceKey{}, ServiceValue{}},
		{"podnic_slot_v1", SlotKey{}, uint32(0)},
		{"podnic_be_v1", uint32(0), Backend{}},
		{"podnic_ct_v1", CTKey{}, CTEntry{}},
		{"podnic_aff_v1", AffinityKey{}, AffinityValue{}},
		{"podnic_cnt_v1", uint32(0), Counter{}},
		{"podnic_cidr_v1", CIDRKey{}, uint8(0)},
		{"podnic_lbaddr_v1", uint64(0), lbAddrs{}},
		{"podnic_nodeip_v1", uint32(0), nodeAddrs{}},
		{"podnic_srcrange_v1", SourceRangeKey{}, uint8(0)},
	} {
		ms := spec.Maps[c.m]
		if ms == nil {
			t.Errorf("map %s missing from the object", c.m)
			continue
		}
		if got := binary.Size(c.key); uint32(got) != ms.KeySize {
			t.Errorf("%s: Go key is %d bytes, C key %d", c.m, got, ms.KeySize)
		}
		if got := binary.Size(c.value); uint32(got) != ms.ValueSize {
			t.Errorf("%s: Go value is %d bytes, C value %d", c.m, got, ms.ValueSize)
		}
	}
	var ev *btf.Struct
	if err := spec.Types.TypeByName("pn_event", &ev); err != nil {
		t.Fatal(err)
	}
	if got := binary.Size(Event{}); uint32(got) != ev.Size {
		t.Errorf("Go event is %d bytes, C event %d", got, ev.Size)
	}
}

// podnicPnReasonValues lists enum pn_reason from the object's BTF.
func podnicPnReasonValues() []int64 {
	spec, err := loadPodnic()
	if err != nil {
		panic(err)
	}
	var e *btf.Enum
	if err := spec.Types.TypeByName("pn_reason", &e); err != nil {
		panic(err)
	}
	var vs []int64
	for _, v := range e.Values {
		vs = append(vs, int64(v.Value))
	}
	return vs
}
