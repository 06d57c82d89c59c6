package localapi

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/podnic/podnic/bpf"
)

// A row survives the trip from the agent to podnicctl, the drop flag of a
// Service without local endpoints included.
func TestServiceRowsRoundTripThroughJSON(t *testing.T) {
	rows := []ServiceRow{
		{ServiceInfo: bpf.ServiceInfo{Frontend: bpf.Frontend{VIP: netip.MustParseAddr("10.96.0.10"), Port: 80, Proto: bpf.TCP}, ID: 1,
			Affinity: time.Minute, Backends: []bpf.BackendInfo{{ID: 3, Addr: netip.MustParseAddrPort("192.0.2.20:8080"), State: bpf.BackendTerminating}}},
			Type: "ClusterIP", Service: "default/web:http"},
		{ServiceInfo: bpf.ServiceInfo{Frontend: bpf.Frontend{VIP: netip.MustParseAddr("fd00:96::10"), Port: 53, Proto: bpf.UDP}, ID: 2,
			NoLocal: true, Backends: []bpf.BackendInfo{}}, Type: "ClusterIP"},
		{ServiceInfo: bpf.ServiceInfo{Frontend: bpf.Frontend{VIP: netip.MustParseAddr("203.0.113.50"), Port: 80, Proto: bpf.TCP}, ID: 3,
			SourceRanges: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("192.0.2.7/32")},
			Backends:     []bpf.BackendInfo{}}, Type: "External", Service: "default/web-lb:http"},
	}
	b, err := json.Marshal(rows)
	if err != nil {
		t.Fatal(err)
	}
	var got []ServiceRow
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, rows) {
		t.Errorf("round trip of %s:\n got %+v\nwant %+v", b, got, rows)
	}
}
