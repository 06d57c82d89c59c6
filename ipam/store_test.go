package ipam

// Address plan as in config_test.go: 192.0.2.0/24 and 2001:db8::/64.

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	v4Small  = `[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.2","rangeEnd":"192.0.2.9","gateway":"192.0.2.1"}]`
	v6Small  = `[{"subnet":"2001:db8::/64","rangeStart":"2001:db8::10","rangeEnd":"2001:db8::1f","gateway":"2001:db8::1"}]`
	v4Single = `[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.2","rangeEnd":"192.0.2.2"}]`
)

// confJSON is a network configuration with ranges (the JSON list of sets)
// and extra ipam fields, its store under dir.
func confJSON(dir, ranges, extra string) []byte {
	return fmt.Appendf(nil, `{"cniVersion":"1.1.0","name":"net1","type":"podnic","ipam":{"type":"podnic","dataDir":%q,"ranges":%s%s}}`,
		dir, ranges, extra)
}

func openStore(t testing.TB, dir, ranges, extra string) *Store {
	t.Helper()
	c, err := ParseConfig(confJSON(dir, ranges, extra))
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func owner(i int) Owner { return Owner{ContainerID: "c" + strconv.Itoa(i), Ifname: "eth0"} }

func addrs(as []Allocation) string {
	var s []string
	for _, a := range as {
		s = append(s, a.Addr.String())
	}
	return strings.Join(s, " ")
}

// storeFiles lists the address files left in a store, sorted.
func storeFiles(t testing.TB, s *Store) []string {
	t.Helper()
	des, err := os.ReadDir(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		if _, err := netip.ParseAddr(de.Name()); err == nil {
			out = append(out, de.Name())
		}
	}
	slices.Sort(out)
	return out
}

func mustAllocate(t testing.TB, s *Store, o Owner) []Allocation {
	t.Helper()
	as, err := s.Allocate(o)
	if err != nil {
		t.Fatalf("allocate for %v: %v", o, err)
	}
	return as
}

func TestAllocateLookupRelease(t *testing.T) {
	s := openStore(t, t.TempDir(), `[`+v4Small+`]`, "")
	a := mustAllocate(t, s, owner(1))
	want := []Allocation{{Addr: pfx("192.0.2.2/24"), Gateway: ip("192.0.2.1")}}
	if !slices.Equal(a, want) {
		t.Fatalf("allocated %v, want %v", a, want)
	}
	b, err := os.ReadFile(filepath.Join(s.Dir(), "192.0.2.2"))
	if err != nil || string(b) != "c1\neth0\n" {
		t.Fatalf("address file %q, %v", b, err)
	}
	if got, err := s.Lookup(owner(1)); err != nil || !slices.Equal(got, want) {
		t.Fatalf("lookup %v, %v", got, err)
	}
	if got, err := s.Lookup(owner(2)); err != nil || len(got) != 0 {
		t.Fatalf("lookup of a stranger %v, %v", got, err)
	}
	if err := s.Release(owner(2)); err != nil {
		t.Fatalf("releasing what nobody holds: %v", err)
	}
	if err := s.Release(owner(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(owner(1)); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if got, err := s.Lookup(owner(1)); err != nil || len(got) != 0 {
		t.Fatalf("lookup after release %v, %v", got, err)
	}
	if f := storeFiles(t, s); len(f) != 0 {
		t.Fatalf("left behind %v", f)
	}
}

func TestAllocateSkipsGatewayExclusionsNetworkAndBroadcast(t *testing.T) {
	// 192.0.2.0/28: .0 is the network address, .1 the gateway, .3 and
	// .4/30 are excluded, .15 is the broadcast address.
	s := openStore(t, t.TempDir(), `[[{"subnet":"192.0.2.0/28"}]]`, `,"exclude":["192.0.2.3","192.0.2.4/30"]`)
	var got []string
	for i := range 8 {
		got = append(got, strings.TrimSuffix(addrs(mustAllocate(t, s, owner(i))), "/28"))
	}
	want := []string{"192.0.2.2", "192.0.2.8", "192.0.2.9", "192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14"}
	if !slices.Equal(got, want) {
		t.Fatalf("handed out %v, want %v", got, want)
	}
	if _, err := s.Allocate(owner(9)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("ninth allocation: %v, want ErrExhausted", err)
	}
}

func TestAllocateSkipsTheIPv6NetworkAddressAndExcludedPrefixes(t *testing.T) {
	// A link-local gateway takes nothing from the subnet; only the
	// Subnet-Router anycast address (::) is skipped.
	s := openStore(t, t.TempDir(), `[[{"subnet":"2001:db8::/126","gateway":"fe80::1"}]]`, "")
	var got []string
	for i := range 3 {
		got = append(got, addrs(mustAllocate(t, s, owner(i))))
	}
	if want := []string{"2001:db8::1/126", "2001:db8::2/126", "2001:db8::3/126"}; !slices.Equal(got, want) {
		t.Fatalf("handed out %v, want %v", got, want)
	}
	if _, err := s.Allocate(owner(9)); !errors.Is(err, ErrExhausted) {
		t.Fatalf("fourth allocation: %v, want ErrExhausted", err)
	}

	// Half a /64 excluded is skipped in one step, not 2^63.
	s = openStore(t, t.TempDir(), `[[{"subnet":"2001:db8:1::/64"}]]`, `,"exclude":["2001:db8:1::/65"]`)
	if got := addrs(mustAllocate(t, s, owner(1))); got != "2001:db8:1:0:8000::/64" {
		t.Fatalf("handed out %s", got)
	}
}

func TestExhaustionReturnsErrExhaustedAndLeaksNothing(t *testing.T) {
	// The IPv6 set comes first, so the failing call has taken an IPv6
	// address before it finds the IPv4 set full.
	s := openStore(t, t.TempDir(), `[`+v6Small+`,`+v4Single+`]`, "")
	a := mustAllocate(t, s, owner(1))
	before := storeFiles(t, s)
	_, err := s.Allocate(owner(2))
	if !errors.Is(err, ErrExhausted) {
		t.Fatalf("got %v, want ErrExhausted", err)
	}
	if want := "range set 1 (192.0.2.2-192.0.2.2)"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name %q", err, want)
	}
	if after := storeFiles(t, s); !slices.Equal(before, after) {
		t.Fatalf("store before %v, after %v", before, after)
	}
	if got, _ := s.Lookup(owner(2)); len(got) != 0 {
		t.Fatalf("failed owner holds %v", got)
	}
	if got, _ := s.Lookup(owner(1)); !slices.Equal(got, a) {
		t.Fatalf("holder now holds %v, want %v", got, a)
	}
}

func TestAllocateIsIdempotent(t *testing.T) {
	s := openStore(t, t.TempDir(), `[`+v4Small+`,`+v6Small+`]`, "")
	a := mustAllocate(t, s, owner(1))
	b := mustAllocate(t, s, owner(1))
	if !slices.Equal(a, b) {
		t.Fatalf("first %v, second %v", a, b)
	}
	other := mustAllocate(t, s, Owner{ContainerID: "c1", Ifname: "net1"})
	if addrs(other) == addrs(a) {
		t.Fatalf("another interface of the container got the same addresses %v", other)
	}
	if n := len(storeFiles(t, s)); n != 4 {
		t.Fatalf("%d address files, want 4", n)
	}
}

func TestAllocateCompletesAnOwnerHoldingSomeSets(t *testing.T) {
	dir := t.TempDir()
	v4only := openStore(t, dir, `[`+v4Small+`]`, "")
	a := mustAllocate(t, v4only, owner(1))
	dual := openStore(t, dir, `[`+v4Small+`,`+v6Small+`]`, "")
	b := mustAllocate(t, dual, owner(1))
	if len(b) != 2 || b[0] != a[0] || b[1].Addr != pfx("2001:db8::10/64") {
		t.Fatalf("after adding an IPv6 set: %v (had %v)", b, a)
	}
}

func TestDualStackGetsOneAddressOfEachFamily(t *testing.T) {
	s := openStore(t, t.TempDir(), `[`+v4Small+`,`+v6Small+`]`, "")
	a := mustAllocate(t, s, owner(1))
	want := []Allocation{
		{Addr: pfx("192.0.2.2/24"), Gateway: ip("192.0.2.1")},
		{Addr: pfx("2001:db8::10/64"), Gateway: ip("2001:db8::1")},
	}
	if !slices.Equal(a, want) {
		t.Fatalf("allocated %v, want %v", a, want)
	}
}

func TestAllocateIsRoundRobin(t *testing.T) {
	// Two ranges in one set: the search moves on from the last address
	// handed out, across ranges, and wraps.
	s := openStore(t, t.TempDir(),
		`[[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.2","rangeEnd":"192.0.2.3"},{"subnet":"198.51.100.0/24","rangeStart":"198.51.100.2","rangeEnd":"198.51.100.2"}]]`, "")
	var got []string
	for i := range 5 {
		got = append(got, addrs(mustAllocate(t, s, owner(i))))
		if err := s.Release(owner(i)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"192.0.2.2/24", "192.0.2.3/24", "198.51.100.2/24", "192.0.2.2/24", "192.0.2.3/24"}
	if !slices.Equal(got, want) {
		t.Fatalf("handed out %v, want %v", got, want)
	}
}

func TestGCReleasesOnlyInvalidOwnersAndPartialFiles(t *testing.T) {
	s := openStore(t, t.TempDir(), `[`+v4Small+`,`+v6Small+`]`, "")
	keep := mustAllocate(t, s, owner(1))
	gone := mustAllocate(t, s, owner(2))
	// A partial file: the crash came before the interface name was
	// complete.
	if err := os.WriteFile(filepath.Join(s.Dir(), "192.0.2.9"), []byte("c3\neth"), 0o644); err != nil {
		t.Fatal(err)
	}
	freed, err := s.GC([]Owner{owner(1), owner(7)})
	if err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(gone), Allocation{Addr: pfx("192.0.2.9/24"), Gateway: ip("192.0.2.1")})
	sortAllocations(freed)
	sortAllocations(want)
	if !slices.Equal(freed, want) {
		t.Fatalf("GC freed %v, want %v", freed, want)
	}
	if got, _ := s.Lookup(owner(1)); !slices.Equal(got, keep) {
		t.Fatalf("valid owner holds %v, want %v", got, keep)
	}
	if f := storeFiles(t, s); len(f) != 2 {
		t.Fatalf("store holds %v, want the valid owner's two addresses", f)
	}
}

func sortAllocations(as []Allocation) {
	slices.SortFunc(as, func(a, b Allocation) int { return a.Addr.Addr().Compare(b.Addr.Addr()) })
}

func TestCrashedClaimIsNeitherHandedOutNorLost(t *testing.T) {
	s := openStore(t, t.TempDir(), `[`+v4Small+`]`, "")
	// A crash between O_EXCL create and write leaves an empty file.
	if err := os.WriteFile(filepath.Join(s.Dir(), "192.0.2.3"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; ; i++ {
		a, err := s.Allocate(owner(i))
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		seen[a[0].Addr.Addr().String()] = true
	}
	if len(seen) != 7 || seen["192.0.2.3"] {
		t.Fatalf("handed out %d addresses %v; want the 7 of 8 that the crash did not claim", len(seen), seen)
	}
	for i := range 7 {
		if err := s.Release(owner(i)); err != nil {
			t.Fatal(err)
		}
	}
	if f := storeFiles(t, s); !slices.Equal(f, []string{"192.0.2.3"}) {
		t.Fatalf("after releasing every owner the store holds %v; the crashed claim must stay until GC", f)
	}
	freed, err := s.GC(nil)
	if err != nil {
		t.Fatal(err)
	}
	if addrs(freed) != "192.0.2.3/24" {
		t.Fatalf("GC freed %v", freed)
	}
	if f := storeFiles(t, s); len(f) != 0 {
		t.Fatalf("after GC the store holds %v", f)
	}
}

func TestOwnersMustBeWritableAsOneLineEach(t *testing.T) {
	s := openStore(t, t.TempDir(), `[`+v4Small+`]`, "")
	for _, o := range []Owner{{}, {ContainerID: "c"}, {Ifname: "eth0"}, {ContainerID: "c\n", Ifname: "eth0"}, {ContainerID: "c", Ifname: "e\x00"}} {
		if _, err := s.Allocate(o); err == nil {
			t.Errorf("allocated for %q", o)
		}
	}
	if f := storeFiles(t, s); len(f) != 0 {
		t.Fatalf("store holds %v", f)
	}
}

func TestClosedStoreRefuses(t *testing.T) {
	s := openStore(t, t.TempDir(), `[`+v4Small+`]`, "")
	s.Close()
	if _, err := s.Allocate(owner(1)); !errors.Is(err, errClosed) {
		t.Fatalf("allocate on a closed store: %v", err)
	}
}

func TestConcurrentGoroutinesNeverShareAnAddress(t *testing.T) {
	// Half the goroutines share one Store (one flock fd, so the mutex
	// guards them), the others open their own.
	dir := t.TempDir()
	shared := openStore(t, dir, `[[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.2","rangeEnd":"192.0.2.17"}]]`, "")
	var wg sync.WaitGroup
	got := make([]string, 16)
	errs := make([]error, 16)
	for i := range 16 {
		wg.Go(func() {
			s := shared
			if i%2 == 1 {
				s = openStore(t, dir, `[[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.2","rangeEnd":"192.0.2.17"}]]`, "")
			}
			a, err := s.Allocate(owner(i))
			got[i], errs[i] = addrs(a), err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if len(slices.Compact(slices.Clone(got))) != 16 {
		t.Fatalf("addresses handed out twice: %v", got)
	}
}

// Cross-process tests re-run this test binary as helpers.
const (
	envHelper = "PODNIC_IPAM_HELPER" // allocate | cycle
	envConf   = "PODNIC_IPAM_CONF"
	envOwner  = "PODNIC_IPAM_OWNER"
	envGo     = "PODNIC_IPAM_GO"     // helpers start when this file exists
	envCycles = "PODNIC_IPAM_CYCLES" // cycle: allocate/release rounds
	envHeld   = "PODNIC_IPAM_HELD"   // cycle: marker directory
)

// TestHelperProcess is not a test: it is a plugin process of the
// cross-process tests.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("helper process for the cross-process tests")
	}
	fail := func(code int, format string, args ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
		os.Exit(code)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(os.Getenv(envGo)); err == nil {
			break
		}
		if time.Now().After(deadline) {
			fail(1, "no start signal")
		}
	}
	c, err := ParseConfig([]byte(os.Getenv(envConf)))
	if err != nil {
		fail(1, "%v", err)
	}
	s, err := Open(c)
	if err != nil {
		fail(1, "%v", err)
	}
	o := Owner{ContainerID: os.Getenv(envOwner), Ifname: "eth0"}
	switch mode {
	case "allocate":
		a, err := s.Allocate(o)
		if errors.Is(err, ErrExhausted) {
			fmt.Println("exhausted")
			os.Exit(0)
		}
		if err != nil {
			fail(1, "%v", err)
		}
		fmt.Println(addrs(a))
	case "cycle":
		cycles, _ := strconv.Atoi(os.Getenv(envCycles))
		deadline := time.Now().Add(60 * time.Second)
		for range cycles {
			a, err := s.Allocate(o)
			for errors.Is(err, ErrExhausted) && time.Now().Before(deadline) {
				time.Sleep(200 * time.Microsecond)
				a, err = s.Allocate(o)
			}
			if err != nil {
				fail(1, "%v", err)
			}
			// A marker per address held, claimed with O_EXCL: if another
			// process holds the same address now, its marker is there.
			var markers []string
			for _, x := range a {
				m := filepath.Join(os.Getenv(envHeld), x.Addr.Addr().String())
				f, err := os.OpenFile(m, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
				if err != nil {
					fail(2, "%s handed out twice: %v", x.Addr, err)
				}
				f.Close()
				markers = append(markers, m)
			}
			for _, m := range markers {
				os.Remove(m)
			}
			if err := s.Release(o); err != nil {
				fail(1, "%v", err)
			}
		}
	default:
		fail(1, "unknown helper mode %q", mode)
	}
	os.Exit(0)
}

type helperResult struct {
	out string
	err error
}

// runHelpers runs n helper processes, started together, and returns their
// output.
func runHelpers(t *testing.T, n int, env func(i int) []string) []helperResult {
	t.Helper()
	goFile := filepath.Join(t.TempDir(), "go")
	cmds := make([]*exec.Cmd, n)
	outs := make([]*bytes.Buffer, n)
	for i := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), envGo+"="+goFile)
		cmd.Env = append(cmd.Env, env(i)...)
		outs[i] = &bytes.Buffer{}
		cmd.Stdout = outs[i]
		cmd.Stderr = outs[i]
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
	}
	if err := os.WriteFile(goFile, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := make([]helperResult, n)
	for i, cmd := range cmds {
		err := cmd.Wait()
		res[i] = helperResult{strings.TrimSpace(outs[i].String()), err}
	}
	return res
}

func TestConcurrentProcessesNeverShareAnAddress(t *testing.T) {
	// Ten processes, eight IPv4 addresses: eight get one of each family,
	// two find the IPv4 set exhausted after taking an IPv6 address, and
	// must give it back.
	dir := t.TempDir()
	conf := confJSON(dir, `[`+v6Small+`,`+v4Small+`]`, "")
	res := runHelpers(t, 10, func(i int) []string {
		return []string{envHelper + "=allocate", envConf + "=" + string(conf), envOwner + "=" + owner(i).ContainerID}
	})
	var handed []string
	exhausted := 0
	for i, r := range res {
		if r.err != nil {
			t.Fatalf("process %d: %v: %s", i, r.err, r.out)
		}
		if r.out == "exhausted" {
			exhausted++
			continue
		}
		handed = append(handed, strings.Fields(r.out)...)
	}
	if exhausted != 2 || len(handed) != 16 {
		t.Fatalf("%d processes exhausted, %d addresses handed out: %v", exhausted, len(handed), handed)
	}
	slices.Sort(handed)
	if len(slices.Compact(slices.Clone(handed))) != len(handed) {
		t.Fatalf("addresses handed out twice: %v", handed)
	}
	s := openStore(t, dir, `[`+v6Small+`,`+v4Small+`]`, "")
	var onDisk []string
	for _, f := range storeFiles(t, s) {
		a := s.cfg.allocation(netip.MustParseAddr(f))
		onDisk = append(onDisk, a.Addr.String())
	}
	slices.Sort(onDisk)
	if !slices.Equal(onDisk, handed) {
		t.Fatalf("store holds %v, processes were handed %v", onDisk, handed)
	}
}

func TestConcurrentAllocateReleaseCyclesLeaveAnEmptyStore(t *testing.T) {
	// 8 processes x 25 cycles = 200 allocate/release cycles on a pool of 4
	// addresses per family, so processes wait for each other's releases.
	dir, held := t.TempDir(), t.TempDir()
	ranges := `[[{"subnet":"192.0.2.0/24","rangeStart":"192.0.2.2","rangeEnd":"192.0.2.5"}],[{"subnet":"2001:db8::/64","rangeStart":"2001:db8::2","rangeEnd":"2001:db8::5"}]]`
	conf := confJSON(dir, ranges, "")
	res := runHelpers(t, 8, func(i int) []string {
		return []string{envHelper + "=cycle", envConf + "=" + string(conf), envOwner + "=" + owner(i).ContainerID,
			envCycles + "=25", envHeld + "=" + held}
	})
	for i, r := range res {
		if r.err != nil {
			t.Errorf("process %d: %v: %s", i, r.err, r.out)
		}
	}
	s := openStore(t, dir, ranges, "")
	if f := storeFiles(t, s); len(f) != 0 {
		t.Fatalf("store holds %v after every owner released", f)
	}
}

func BenchmarkAllocateRelease(b *testing.B) {
	for _, bc := range []struct {
		name, ranges string
		held         int
	}{
		{"v4/held=0", `[[{"subnet":"192.0.2.0/24"}]]`, 0},
		{"dual/held=0", `[[{"subnet":"192.0.2.0/24"}],[{"subnet":"2001:db8::/64"}]]`, 0},
		{"v4/held=200", `[[{"subnet":"198.51.0.0/16"}]]`, 200},
	} {
		b.Run(bc.name, func(b *testing.B) {
			s := openStore(b, b.TempDir(), bc.ranges, "")
			for i := range bc.held {
				mustAllocate(b, s, owner(1000+i))
			}
			o := owner(1)
			for b.Loop() {
				if _, err := s.Allocate(o); err != nil {
					b.Fatal(err)
				}
				if err := s.Release(o); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
