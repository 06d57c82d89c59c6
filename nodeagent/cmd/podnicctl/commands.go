package main

import (
	"errors"
	"flag"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/podnic/podnic/bpf"
	"github.com/podnic/podnic/nodeagent/localapi"
)

func newFlags(name string) *flag.FlagSet {
	return flag.NewFlagSet("podnicctl "+name, flag.ContinueOnError)
}

func noArgs(fs *flag.FlagSet) error {
	if fs.NArg() > 0 {
		return fmt.Errorf("%s: unexpected arguments %q", fs.Name(), fs.Args())
	}
	return nil
}

// parseNoArgs parses a command's flags and refuses arguments.
func parseNoArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	return noArgs(fs)
}

// fetch asks the agent for path when it runs, and otherwise computes the
// same answer from the pinned maps.
func fetch[T any](g globals, path string, fromPins func(*bpf.Datapath) (T, error)) (T, error) {
	var v T
	if c := g.agent(); c != nil {
		err := c.Get(path, &v)
		return v, err
	}
	d, err := open(g)
	if err != nil {
		return v, err
	}
	defer d.Close()
	return fromPins(d)
}

func open(g globals) (*bpf.Datapath, error) {
	d, err := bpf.OpenPinned(g.root)
	if errors.Is(err, bpf.ErrNotLoaded) {
		return nil, fmt.Errorf("%w (run 'podnicctl load' or start podnic-agent)", err)
	}
	return d, err
}

func cmdLoad(g globals, args []string) error {
	fs := newFlags("load")
	socketLB := fs.Bool("socket-lb", true, "balance TCP and UDP to Services at the socket (programs on the node's cgroup v2 root)")
	peerName := fs.Bool("socket-lb-peer-name", true, "getpeername() of a balanced socket names the Service, as through kube-proxy (about 0.25 µs of CPU per connection)")
	cgroup := fs.String("cgroup-root", "", "cgroup v2 directory for --socket-lb; empty: the node's cgroup v2 mount, mounted at "+bpf.CgroupMount+" if there is none")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	d, err := bpf.Load(g.root)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := bpf.SetupSocketLB(d, bpf.SocketLBOptions{On: *socketLB, PeerName: *peerName, CgroupPath: *cgroup}); err != nil {
		return err
	}
	fmt.Fprintf(g.out, "datapath loaded and pinned under %s\n", g.root)
	return nil
}

func cmdUnload(g globals, args []string) error {
	if err := parseNoArgs(newFlags("unload"), args); err != nil {
		return err
	}
	if err := bpf.Unpin(g.root); err != nil {
		return err
	}
	fmt.Fprintf(g.out, "removed every pin under %s\n", g.root)
	return nil
}

func cmdAttach(g globals, args []string) error {
	fs := newFlags("attach")
	netns := fs.String("netns", "", "path of the pod's network namespace (required)")
	ifname := fs.String("ifname", "eth0", "the pod's NIC inside the netns")
	owner := fs.String("owner", "", "owner key of the attachment, e.g. the container id (required)")
	mode := fs.String("mode", "auto", "attach mode: auto, tcx or legacy")
	servicePath := fs.String("service-path", "full", "full (tc programs both ways, every kube-proxy behaviour) or socket (Service traffic at the socket only, podnic_guard alone on the NIC)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if *netns == "" || *owner == "" {
		return errors.New("attach: --netns and --owner are required")
	}
	path, err := bpf.ParseServicePath(*servicePath)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	d, err := open(g)
	if err != nil {
		return err
	}
	defer d.Close()
	as, err := d.AttachPodPath(*netns, *ifname, *owner, bpf.Mode(*mode), path)
	if err != nil {
		return err
	}
	return printAttachments(g, as)
}

func cmdDetach(g globals, args []string) error {
	fs := newFlags("detach")
	netns := fs.String("netns", "", "path of the pod's network namespace, for legacy tc filters")
	owner := fs.String("owner", "", "owner key given to attach (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	if *owner == "" {
		return errors.New("detach: --owner is required")
	}
	if err := bpf.DetachPod(g.root, *owner, *netns); err != nil {
		return err
	}
	fmt.Fprintf(g.out, "detached %s\n", *owner)
	return nil
}

func cmdAttachments(g globals, args []string) error {
	fs := newFlags("attachments")
	netns := fs.String("netns", "", "ask the kernel about one interface in this netns")
	ifname := fs.String("ifname", "", "the interface to ask about, with --netns")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	var as []bpf.Attachment
	var err error
	if *netns != "" || *ifname != "" {
		if *netns == "" || *ifname == "" {
			return errors.New("attachments: --netns and --ifname go together")
		}
		as, err = bpf.QueryInterface(*netns, *ifname)
	} else if c := g.agent(); c != nil {
		as, err = c.Attachments()
	} else {
		as, err = bpf.ListAttachments(g.root)
	}
	if err != nil {
		return err
	}
	return printAttachments(g, as)
}

func printAttachments(g globals, as []bpf.Attachment) error {
	if as == nil {
		as = []bpf.Attachment{}
	}
	return g.emit(as, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "OWNER\tINTERFACE\tIFINDEX\tHOOK\tMODE\tPROGRAM\tPROG ID")
		for _, a := range as {
			owner := a.Owner
			if owner == "" {
				owner = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%d\n", owner, a.Ifname, a.Ifindex, a.Hook, a.Mode, a.ProgramName, a.ProgramID)
		}
	})
}

type backendFlags []netip.AddrPort

func (b *backendFlags) String() string { return fmt.Sprint(*b) }
func (b *backendFlags) Set(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fmt.Errorf("backend %q: want IP:PORT ([IPv6]:PORT)", s)
	}
	*b = append(*b, ap)
	return nil
}

type prefixFlags []netip.Prefix

func (p *prefixFlags) String() string { return fmt.Sprint(*p) }
func (p *prefixFlags) Set(s string) error {
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("source range %q: want a CIDR, e.g. 192.0.2.0/24", s)
	}
	*p = append(*p, pf.Masked())
	return nil
}

func parseProto(s string) (bpf.Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return bpf.TCP, nil
	case "udp":
		return bpf.UDP, nil
	case "sctp":
		return bpf.SCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: want tcp, udp or sctp", s)
}

func frontendFlags(fs *flag.FlagSet) func() (bpf.Frontend, error) {
	vip := fs.String("vip", "", "Service VIP (required)")
	port := fs.Uint("port", 0, "Service port (required)")
	proto := fs.String("proto", "tcp", "tcp, udp or sctp")
	return func() (bpf.Frontend, error) {
		a, err := netip.ParseAddr(*vip)
		if err != nil {
			return bpf.Frontend{}, fmt.Errorf("--vip %q: %w", *vip, err)
		}
		if *port == 0 || *port > 65535 {
			return bpf.Frontend{}, fmt.Errorf("--port %d: want 1-65535", *port)
		}
		p, err := parseProto(*proto)
		if err != nil {
			return bpf.Frontend{}, err
		}
		return bpf.Frontend{VIP: a.Unmap(), Port: uint16(*port), Proto: p}, nil
	}
}

// backendID derives a stable node-wide id from a backend's address, so two
// Services sharing a backend share its entry.
func backendID(ap netip.AddrPort, p bpf.Proto) uint32 {
	h := fnv.New32a()
	fmt.Fprintf(h, "%s/%d", ap, p)
	if id := h.Sum32(); id != 0 {
		return id
	}
	return 1
}

func cmdServiceSet(g globals, args []string) error {
	fs := newFlags("service set")
	frontend := frontendFlags(fs)
	id := fs.Uint("id", 0, "service id, unique per frontend on the node (required)")
	affinity := fs.Duration("affinity", 0, "session affinity ClientIP timeout, e.g. 3h (0: none)")
	var backends backendFlags
	fs.Var(&backends, "backend", "backend IP:PORT; repeat for more (none: connections are rejected)")
	var ranges prefixFlags
	fs.Var(&ranges, "source-range", "CIDR new flows may come from (loadBalancerSourceRanges); repeat for more (none: any source)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	f, err := frontend()
	if err != nil {
		return err
	}
	if *id == 0 || *id > 1<<32-1 {
		return errors.New("service set: --id must be 1 to 4294967295")
	}
	s := bpf.ServiceEntry{Frontend: f, ID: uint32(*id), Affinity: *affinity, SourceRanges: ranges}
	for _, b := range backends {
		s.Backends = append(s.Backends, bpf.BackendEntry{ID: backendID(b, f.Proto), Addr: netip.AddrPortFrom(b.Addr().Unmap(), b.Port())})
	}
	d, err := open(g)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Maps.UpsertService(s); err != nil {
		return err
	}
	fmt.Fprintf(g.out, "service %s set with %d backends\n", f, len(backends))
	return nil
}

func cmdServiceDelete(g globals, args []string) error {
	fs := newFlags("service delete")
	frontend := frontendFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	f, err := frontend()
	if err != nil {
		return err
	}
	d, err := open(g)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Maps.DeleteService(f); err != nil {
		return err
	}
	services, err := d.Maps.ListServices()
	if err != nil {
		return err
	}
	for _, s := range services {
		if s.VIP == f.VIP {
			fmt.Fprintf(g.out, "service %s deleted\n", f)
			return nil
		}
	}
	if err := d.Maps.DeleteVIP(f.VIP); err != nil {
		return err
	}
	fmt.Fprintf(g.out, "service %s deleted; %s is no VIP any more\n", f, f.VIP)
	return nil
}

func cmdServiceList(g globals, args []string) error {
	if err := parseNoArgs(newFlags("service list"), args); err != nil {
		return err
	}
	rows, err := fetch(g, localapi.PathServices, func(d *bpf.Datapath) ([]localapi.ServiceRow, error) {
		return localapi.ServiceRows(d, nil)
	})
	if err != nil {
		return err
	}
	if rows == nil {
		rows = []localapi.ServiceRow{}
	}
	return g.emit(rows, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "ID\tFRONTEND\tTYPE\tSERVICE\tAFFINITY\tSOURCES\tBACKENDS")
		for _, s := range rows {
			aff, svc, src := "-", s.Service, "-"
			if s.Affinity > 0 {
				aff = s.Affinity.String()
			}
			if len(s.SourceRanges) > 0 {
				var ps []string
				for _, p := range s.SourceRanges {
					ps = append(ps, p.String())
				}
				src = strings.Join(ps, ",")
			}
			if svc == "" {
				svc = "-"
			}
			var bs []string
			for _, b := range s.Backends {
				bs = append(bs, fmt.Sprintf("%s (%s)", b.Addr, b.State))
			}
			switch {
			case len(bs) == 0 && s.NoLocal:
				bs = []string{"none on this node: dropped (internalTrafficPolicy Local)"}
			case len(bs) == 0:
				bs = []string{"none: rejected"}
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.String(), s.Type, svc, aff, src, strings.Join(bs, ", "))
		}
	})
}

func cmdCTList(g globals, args []string) error {
	if err := parseNoArgs(newFlags("ct list"), args); err != nil {
		return err
	}
	rows, err := fetch(g, localapi.PathConntrack, localapi.CTRows)
	if err != nil {
		return err
	}
	if rows == nil {
		rows = []localapi.CTRow{}
	}
	return g.emit(rows, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "PROTO\tCLIENT\tFRONTEND\tBACKEND\tSTATE\tEXPIRES IN")
		for _, r := range rows {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Proto, r.Client, r.Frontend, r.Backend, r.State, r.ExpiresIn)
		}
	})
}

func cmdStatus(g globals, args []string) error {
	if err := parseNoArgs(newFlags("status"), args); err != nil {
		return err
	}
	var st localapi.Status
	if c := g.agent(); c != nil {
		if err := c.Get(localapi.PathStatus, &st); err != nil {
			return err
		}
	} else {
		d, err := open(g)
		if err != nil {
			return err
		}
		defer d.Close()
		st = localapi.Status{
			BPFRoot: d.Root, AttachMode: "-", AttachedAs: map[string]int{}, Programs: localapi.Programs(d),
			Maps: localapi.MapFill(d, nil), KPR: localapi.KubeProxyReplacement(),
		}
		services, err := d.Maps.ListServices()
		if err != nil {
			return err
		}
		st.Frontends = len(services)
		as, err := bpf.ListAttachments(d.Root)
		if err != nil {
			return err
		}
		localapi.CountAttachments(d, as, &st)
		if st.SocketLB, err = bpf.SocketLBAttached(d.Root); err != nil {
			return err
		}
	}
	return g.emit(st, func(w *tabwriter.Writer) {
		if st.Agent {
			fmt.Fprintf(w, "Agent:\tOK\tnode %s, zone %q, source %s\n", st.Node, st.Zone, st.Source)
		} else {
			fmt.Fprintf(w, "Agent:\tnot running\tread from the pins under %s\n", st.BPFRoot)
		}
		var modes []string
		for m, n := range st.AttachedAs {
			modes = append(modes, fmt.Sprintf("%s %d", m, n))
		}
		sort.Strings(modes)
		fmt.Fprintf(w, "Attach mode:\t%s\t%d attach points: %s\n", st.AttachMode, st.Attachments, strings.Join(modes, ", "))
		if st.StaleAttachments > 0 {
			fmt.Fprintf(w, "Stale:\t%d\tattach points run an earlier build's programs (podnic-agent moves them at its start)\n", st.StaleAttachments)
		}
		if len(st.SocketLB) > 0 {
			fmt.Fprintf(w, "Socket LB:\ton\tTCP connect() goes straight to a backend (%s)\n", strings.Join(st.SocketLB, ", "))
		} else {
			fmt.Fprintf(w, "Socket LB:\toff\ttc translates every connection\n")
		}
		for _, p := range st.Programs {
			fmt.Fprintf(w, "Program:\t%s\tid %d tag %s\n", p.Name, p.ID, p.Tag)
		}
		for _, m := range st.Maps {
			fmt.Fprintf(w, "Map:\t%s\t%d/%d (%.1f%%)\n", m.Name, m.Entries, m.Capacity, 100*float64(m.Entries)/float64(max(m.Capacity, 1)))
		}
		if st.Agent {
			fmt.Fprintf(w, "Services:\t%d\t%d frontends\n", st.Services, st.Frontends)
		} else {
			fmt.Fprintf(w, "Services:\t-\t%d frontends\n", st.Frontends)
		}
		switch s := st.LastSync; {
		case s == nil && st.Agent:
			fmt.Fprintf(w, "Last sync:\tnone yet\t\n")
		case s != nil && s.Error != "":
			fmt.Fprintf(w, "Last sync:\tFAILED %s ago\t%s\n", s.Age, s.Error)
		case s != nil:
			fmt.Fprintf(w, "Last sync:\t%s ago\ttook %s, %d writes, %d syncs\n", s.Age, s.Duration, s.Writes, s.Syncs)
		}
		fmt.Fprintln(w, "KubeProxyReplacement:")
		for _, f := range st.KPR {
			fmt.Fprintf(w, "  %s:\t%s\t%s\n", f.Name, f.State, f.Detail)
		}
	})
}

type verdictRow struct {
	Hook    string `json:"hook"`
	Verdict string `json:"verdict"`
	Code    int32  `json:"code"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

func cmdVerdicts(g globals, args []string) error {
	if err := parseNoArgs(newFlags("verdicts"), args); err != nil {
		return err
	}
	d, err := open(g)
	if err != nil {
		return err
	}
	defer d.Close()
	vs, err := d.Maps.ReadVerdicts()
	if err != nil {
		return err
	}
	rows := []verdictRow{}
	for _, v := range vs {
		rows = append(rows, verdictRow{Hook: v.Dir.String(), Verdict: v.Reason.String(), Code: int32(v.Reason), Packets: v.Packets, Bytes: v.Bytes})
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].Hook != rows[j].Hook {
			return rows[i].Hook < rows[j].Hook
		}
		return rows[i].Code > rows[j].Code
	})
	return g.emit(rows, func(w *tabwriter.Writer) {
		fmt.Fprintln(w, "HOOK\tVERDICT\tCODE\tPACKETS\tBYTES")
		for _, r := range rows {
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\n", r.Hook, r.Verdict, r.Code, r.Packets, r.Bytes)
		}
	})
}

func cmdEvents(g globals, args []string) error {
	fs := newFlags("events")
	count := fs.Int("count", 10, "stop after this many events")
	timeout := fs.Duration("timeout", 10*time.Second, "stop after this long without an event")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := noArgs(fs); err != nil {
		return err
	}
	d, err := open(g)
	if err != nil {
		return err
	}
	defer d.Close()
	r, err := bpf.NewEventReader(d.Maps.Events)
	if err != nil {
		return err
	}
	defer r.Close()
	for range *count {
		ev, err := r.Read(*timeout)
		if errors.Is(err, bpf.ErrNoEvent) {
			return nil
		}
		if err != nil {
			return err
		}
		src := netip.AddrPortFrom(ev.Src.IP(), ev.Sport.Host())
		dst := netip.AddrPortFrom(ev.Dst.IP(), ev.Dport.Host())
		fmt.Fprintf(g.out, "%s %s %s -> %s %s (ifindex %d)\n", ev.Dir, ev.Reason, src, dst, ev.Proto, ev.Ifindex)
	}
	return nil
}
