package bpf

import (
	"errors"
	"net/netip"
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/podnic/podnic/test/simnode"
)

// programsOn lists "ifname/hook:program" for what runs on the pod's NIC and
// lo, as the kernel reports it.
func programsOn(t *testing.T, p *simnode.Pod) []string {
	t.Helper()
	var out []string
	for _, ifname := range []string{p.Ifname, loopback} {
		as, err := QueryInterface(p.NetnsPath, ifname)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			out = append(out, ifname+"/"+a.Hook.String()+":"+a.ProgramName)
		}
	}
	sort.Strings(out)
	return out
}

// A pod on the socket path gets podnic_guard on its NIC's egress and
// nothing else, so no program runs for its incoming packets; its Service
// traffic, TCP and UDP, self access included, is balanced at the socket.
// What the socket left is refused at once, not translated: an affinity
// Service without the pod's address, a connected UDP socket whose backend
// left, a deleted Service. Attaching on the full path again brings the
// reply programs back, and the socket path removes them again.
func TestSocketPathAttachesTheGuardAlone(t *testing.T) {
	d := loadTest(t)
	client, server := trafficPods(t, d)

	_, err := d.AttachPodPath(client.NetnsPath, client.Ifname, simOwner, ModeAuto, PathSocket)
	if err == nil || !strings.Contains(err.Error(), "--socket-lb") {
		t.Fatalf("socket path without socket-level balancing on the node: %v, want an error naming --socket-lb", err)
	}
	if _, err := os.Stat(ownerDir(d.Root, simOwner)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused attach left pins: %v", err)
	}
	if got := programsOn(t, client); len(got) != 0 {
		t.Errorf("a refused attach left programs: %v", got)
	}

	socketLB(t, d)
	attachSocketPath := func() {
		t.Helper()
		as, err := d.AttachPodPath(client.NetnsPath, client.Ifname, simOwner, ModeAuto, PathSocket)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) != 1 || as[0].ProgramName != ProgGuard || as[0].Hook != Egress {
			t.Fatalf("attachments %v, want %s on egress alone", as, ProgGuard)
		}
		want := []string{client.Ifname + "/egress:" + ProgGuard}
		if got := programsOn(t, client); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("programs %v, want %v", got, want)
		}
	}
	attachSocketPath()

	t.Run("balanced", func(t *testing.T) {
		delta := verdictDelta(t, d, verdict(DirSocket, ReasonSocketLB), verdict(DirFromPod, ReasonUnbalanced))
		for _, vip := range []netip.Addr{simVIPv4, simVIPv6, simSelfV4, simSelfV6} {
			at := netip.AddrPortFrom(vip, simServicePort)
			if _, err := client.HTTPGet("http://"+at.String()+"/", simTimeout); err != nil {
				t.Errorf("TCP to %s: %v", at, err)
			}
			c := udpSocket(t, client, vip.Is6())
			if _, from, err := udpAsk(c, at, "ping"); err != nil || from != at {
				t.Errorf("UDP to %s: answer from %s, %v", at, from, err)
			}
		}
		if got := delta(); got[0] != 8 || got[1] != 0 {
			t.Errorf("counted socket-lb %d, refuse-unbalanced %d; want 8, 0", got[0], got[1])
		}
	})

	t.Run("refused", func(t *testing.T) {
		// An affinity Service while the pod's addresses are unknown: the
		// full path would hand it to tc.
		aff := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.70"), simServicePort)
		err := d.Maps.UpsertService(ServiceEntry{
			Frontend: Frontend{VIP: aff.Addr(), Port: aff.Port(), Proto: TCP},
			ID:       70,
			Affinity: 60e9,
			Backends: []BackendEntry{{ID: 70, Addr: netip.AddrPortFrom(server.IPv4, simBackendPort)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		var cookie uint64
		var addrs lbAddrs
		for it := d.Maps.LBAddrs.Iterate(); it.Next(&cookie, &addrs); {
			if err := d.Maps.LBAddrs.Delete(cookie); err != nil {
				t.Fatal(err)
			}
		}
		delta := verdictDelta(t, d, verdict(DirFromPod, ReasonUnbalanced), verdict(DirFromPod, ReasonDNATNew))
		if _, err := client.Dial("tcp", aff, simTimeout); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("affinity without the pod's address: %v, want connection refused", err)
		}

		// A connected UDP socket whose backend left.
		moved := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.71"), simServicePort)
		front := Frontend{VIP: moved.Addr(), Port: moved.Port(), Proto: UDP}
		err = d.Maps.UpsertService(ServiceEntry{
			Frontend: front, ID: 71,
			Backends: []BackendEntry{{ID: 71, Addr: netip.AddrPortFrom(server.IPv4, simBackendPort)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		c := udpConnect(t, client, moved)
		if _, _, err := udpAsk(c, netip.AddrPort{}, "ping"); err != nil {
			t.Fatal(err)
		}
		err = d.Maps.UpsertService(ServiceEntry{
			Frontend: front, ID: 71,
			Backends: []BackendEntry{{ID: 72, Addr: netip.AddrPortFrom(client.IPv4, simBackendPort)}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Maps.DeleteBackend(71); err != nil {
			t.Fatal(err)
		}
		if _, _, err := udpAsk(c, netip.AddrPort{}, "ping"); !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connected UDP socket whose backend left: %v, want connection refused", err)
		}
		if got := delta(); got[0] != 2 || got[1] != 0 {
			t.Errorf("counted refuse-unbalanced %d, tc dnat-new %d; want 2, 0", got[0], got[1])
		}
		attachPodPathAddrs(t, d, client) // the addresses again
	})

	// Full path over it, and back.
	if _, err := d.AttachPodPath(client.NetnsPath, client.Ifname, simOwner, ModeAuto, PathFull); err != nil {
		t.Fatal(err)
	}
	want := []string{client.Ifname + "/egress:" + ProgFromPod, client.Ifname + "/ingress:" + ProgToPod, loopback + "/egress:" + ProgLoOut}
	sort.Strings(want)
	if got := programsOn(t, client); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("full path: programs %v, want %v", got, want)
	}
	attachSocketPath()
	if err := DetachPod(d.Root, simOwner, client.NetnsPath); err != nil {
		t.Fatal(err)
	}
	if got := programsOn(t, client); len(got) != 0 {
		t.Errorf("programs left after DetachPod: %v", got)
	}
}

// attachPodPathAddrs registers the pod's addresses again, as attaching does.
func attachPodPathAddrs(t *testing.T, d *Datapath, p *simnode.Pod) {
	t.Helper()
	if _, err := d.AttachPodPath(p.NetnsPath, p.Ifname, simOwner, ModeAuto, PathSocket); err != nil {
		t.Fatal(err)
	}
}

// podnic_guard, packet by packet (BPF_PROG_TEST_RUN): it never translates.
// A SYN to a Service the socket left is refused with a RST and counted
// refuse-unbalanced, as is one to an external VIP; an address in the
// Service CIDRs without a Service is rejected as on the full path; other
// traffic passes untouched. With the CIDRs known, TCP to any other address
// passes on its IP header alone (the fast path: even a truncated segment,
// which the full parse would drop as invalid).
func TestGuardRefusesWhatTheSocketLeftAndPassesTheRest(t *testing.T) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) {
			d := loadTest(t)
			service(t, d, Frontend{VIP: fam.vip, Port: servicePort, Proto: TCP}, 1, backendPort, fam.backends[0])
			client := ap(fam.client, clientPort)
			syn := pkt{src: client, dst: ap(fam.vip, servicePort), proto: TCP, flags: "S", seq: 5}
			delta := verdictDelta(t, d, verdict(DirFromPod, ReasonUnbalanced), verdict(DirFromPod, ReasonReject))
			ret, got := run(t, d.Programs.Guard, syn.bytes(t))
			if ret != actRedirect {
				t.Errorf("SYN to a Service: verdict %d, want TC_ACT_REDIRECT with a RST", ret)
			}
			expectPacket(t, "RST", got, rstFor(t, syn))

			toPod := pkt{src: client, dst: ap(fam.router, servicePort), proto: TCP, flags: "S"}.bytes(t)
			hdr := 14 + 20
			if fam.vip.Is6() {
				hdr = 14 + 40
			}
			truncated := toPod[:hdr]
			if ret, got := run(t, d.Programs.Guard, toPod); ret != actUnspec || !equalPacket(got, toPod) {
				t.Errorf("SYN to a pod changed (verdict %d)", ret)
			}
			if ret, _ := run(t, d.Programs.Guard, truncated); ret != actShot {
				t.Errorf("truncated segment without the CIDRs known: verdict %d, want dropped as invalid", ret)
			}

			setFamilyCIDR(t, d, fam)
			if ret, got := run(t, d.Programs.Guard, truncated); ret != actUnspec || !equalPacket(got, truncated) {
				t.Errorf("fast path: truncated segment to a pod: verdict %d, want passed untouched", ret)
			}
			gone := pkt{src: client, dst: ap(fam.vip.Next().Next().Next(), servicePort), proto: TCP, flags: "S", seq: 5}
			if ret, got := run(t, d.Programs.Guard, gone.bytes(t)); ret != actRedirect {
				t.Errorf("SYN to a deleted Service: verdict %d, want a RST", ret)
			} else {
				expectPacket(t, "RST", got, rstFor(t, gone))
			}

			// An external VIP, outside the CIDRs: refused, not translated.
			service(t, d, Frontend{VIP: fam.router, Port: servicePort, Proto: TCP}, 2, backendPort, fam.backends[0])
			if err := d.Maps.SetExternalVIPs(true); err != nil {
				t.Fatal(err)
			}
			ext := pkt{src: client, dst: ap(fam.router, servicePort), proto: TCP, flags: "S", seq: 5}
			if ret, got := run(t, d.Programs.Guard, ext.bytes(t)); ret != actRedirect {
				t.Errorf("SYN to an external VIP: verdict %d, want a RST", ret)
			} else {
				expectPacket(t, "RST", got, rstFor(t, ext))
			}
			if got := delta(); got[0] != 2 || got[1] != 1 {
				t.Errorf("counted refuse-unbalanced %d, reject %d; want 2, 1", got[0], got[1])
			}
		})
	}
}
