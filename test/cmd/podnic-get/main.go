// Command podnic-get is the client workload of the node in a box
// (test/nodebox): it sends HTTP GETs to a URL, each on a new connection,
// and prints each answer's body, failing on the first error. (Debian's
// static busybox wget crashes here.)
//
//	podnic-get [-n 1] [-timeout 2s] URL
package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	n := flag.Int("n", 1, "number of requests")
	timeout := flag.Duration("timeout", 2*time.Second, "timeout of each request")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: podnic-get [-n N] [-timeout D] URL")
		os.Exit(2)
	}
	client := &http.Client{Timeout: *timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < *n; i++ {
		if err := get(client, flag.Arg(0)); err != nil {
			fmt.Fprintf(os.Stderr, "podnic-get: request %d: %v\n", i+1, err)
			os.Exit(1)
		}
	}
}

func get(client *http.Client, url string) error {
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, body)
	}
	_, err = os.Stdout.Write(body)
	return err
}
