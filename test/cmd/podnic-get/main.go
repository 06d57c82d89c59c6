// Command podnic-get is the client workload of the node in a box
// (test/nodebox): it sends requests to a target and prints each answer.
// (Debian's static busybox wget crashes here.)
//
//	podnic-get [-n 1] [-timeout 2s] [-udp] [-reuse] [-dns-server IP:53] URL|HOST:PORT
//	podnic-get -load [-n 100000] [-for 60s] [-interval 10ms] [-stop-file F] ...
//
// By default each request is an HTTP GET of URL on a new connection, its
// body printed, and the first error ends the command (exit 1; the message
// says how long the failing request took). -udp sends a datagram to
// HOST:PORT from a new socket per request and prints the echo;
// -src-port-base P sends request i from UDP port P+i, so no flow repeats.
// -reuse keeps HTTP connections alive, or uses one UDP socket for all.
// -dns-server resolves URL's host through that DNS server.
//
// -load keeps going through errors: it stops after -n requests, after -for,
// or once the -stop-file exists, then prints one JSON summary (requests,
// failures, the first errors, answers per backend name) and exits 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

func main() {
	n := flag.Int("n", 1, "number of requests (with -load: at most)")
	timeout := flag.Duration("timeout", 2*time.Second, "timeout of each request")
	udp := flag.Bool("udp", false, "UDP echo to HOST:PORT instead of HTTP GET of URL")
	reuse := flag.Bool("reuse", false, "reuse HTTP connections (keep-alive)")
	load := flag.Bool("load", false, "keep going through errors and print a JSON summary")
	duration := flag.Duration("for", time.Minute, "with -load: stop after this long")
	interval := flag.Duration("interval", 0, "pause between requests")
	stopFile := flag.String("stop-file", "", "with -load: stop once this file exists")
	srcPortBase := flag.Int("src-port-base", 0, "with -udp: send request i from this port + i")
	dnsServer := flag.String("dns-server", "", "resolve names through this DNS server (IP:PORT)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: podnic-get [-n N] [-timeout D] [-udp] [-reuse] [-load [-for D] [-interval D] [-stop-file F]] URL|HOST:PORT")
		os.Exit(2)
	}
	target := flag.Arg(0)
	var ask func(i int) (string, error)
	switch {
	case *udp && *reuse:
		c, err := net.Dial("udp", target)
		if err != nil {
			fmt.Fprintf(os.Stderr, "podnic-get: %v\n", err)
			os.Exit(1)
		}
		ask = func(i int) (string, error) { return echo(c, i, *timeout) }
	case *udp:
		ask = func(i int) (string, error) {
			d := net.Dialer{Timeout: *timeout}
			if *srcPortBase > 0 {
				d.LocalAddr = &net.UDPAddr{Port: *srcPortBase + i}
			}
			c, err := d.Dial("udp", target)
			if err != nil {
				return "", err
			}
			defer c.Close()
			return echo(c, i, *timeout)
		}
	default:
		dialer := &net.Dialer{Timeout: *timeout}
		if *dnsServer != "" {
			dialer.Resolver = &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, *dnsServer)
			}}
		}
		client := &http.Client{Timeout: *timeout, Transport: &http.Transport{DisableKeepAlives: !*reuse, DialContext: dialer.DialContext}}
		ask = func(int) (string, error) { return get(client, target) }
	}
	if *load {
		s := run(ask, *n, *duration, *interval, *stopFile)
		if err := json.NewEncoder(os.Stdout).Encode(s); err != nil {
			os.Exit(1)
		}
		return
	}
	for i := 0; i < *n; i++ {
		t0 := time.Now()
		answer, err := ask(i)
		if err != nil {
			fmt.Fprintf(os.Stderr, "podnic-get: request %d after %v: %v\n", i+1, time.Since(t0).Round(time.Microsecond), err)
			os.Exit(1)
		}
		if _, err := io.WriteString(os.Stdout, answer); err != nil {
			os.Exit(1)
		}
		time.Sleep(*interval)
	}
}

// summary is what -load prints.
type summary struct {
	Requests int            `json:"requests"`
	Failures int            `json:"failures"`
	Errors   []string       `json:"errors,omitempty"` // the first few, with when they happened
	Answers  map[string]int `json:"answers"`          // per backend name
	Seconds  float64        `json:"seconds"`
	Stopped  string         `json:"stopped"` // count, time or stop-file
}

func run(ask func(int) (string, error), n int, duration, interval time.Duration, stopFile string) summary {
	s := summary{Answers: map[string]int{}}
	start := time.Now()
	for s.Stopped == "" {
		switch {
		case s.Requests >= n:
			s.Stopped = "count"
		case time.Since(start) >= duration:
			s.Stopped = "time"
		case stopFile != "" && exists(stopFile):
			s.Stopped = "stop-file"
		default:
			answer, err := ask(s.Requests)
			s.Requests++
			if err != nil {
				s.Failures++
				if len(s.Errors) < 10 {
					s.Errors = append(s.Errors, fmt.Sprintf("request %d at %.3fs: %v", s.Requests, time.Since(start).Seconds(), err))
				}
			} else {
				s.Answers[nameOf(answer)]++
			}
			time.Sleep(interval)
		}
	}
	s.Seconds = time.Since(start).Seconds()
	return s
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// nameOf returns the backend name in podnic-echo's answer: "hello from NAME
// (...)" over HTTP, "NAME: ..." over UDP.
func nameOf(answer string) string {
	if rest, ok := strings.CutPrefix(answer, "hello from "); ok {
		name, _, _ := strings.Cut(rest, " ")
		return name
	}
	name, _, _ := strings.Cut(answer, ":")
	return name
}

func get(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, body)
	}
	return string(body), nil
}

// echo sends one datagram on c and returns the reply, newline-terminated.
func echo(c net.Conn, i int, timeout time.Duration) (string, error) {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return "", err
	}
	msg := fmt.Sprintf("ping %d", i+1)
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	reply := string(buf[:n])
	if !strings.HasSuffix(reply, ": "+msg) {
		return "", errors.New("unexpected reply " + reply)
	}
	return reply + "\n", nil
}
