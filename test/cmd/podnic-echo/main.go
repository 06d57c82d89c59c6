// Command podnic-echo is the demo and test workload: an HTTP server that
// says who answered and who asked, and a UDP echo server on the same port.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	name := flag.String("name", hostname(), "name to answer with")
	listen := flag.String("listen", ":8080", "TCP (HTTP) and UDP address to serve")
	minimal := flag.Bool("minimal", false, "answer HTTP with one fixed response and no per-request work (the wrk suite's backend) instead of net/http's echo of both addresses")
	flag.Parse()
	if err := serve(*name, *listen, *minimal); err != nil {
		slog.Error("podnic-echo stopped", "err", err)
		os.Exit(1)
	}
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "podnic-echo"
	}
	return h
}

func serve(name, listen string, minimal bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	udp, err := net.ListenPacket("udp", listen)
	if err != nil {
		return fmt.Errorf("listening on udp %s: %w", listen, err)
	}
	defer udp.Close()
	go echoUDP(udp, name)

	srv := &http.Server{
		Addr:              listen,
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from %s (%s), you are %s\n", name, r.Context().Value(http.LocalAddrContextKey), r.RemoteAddr)
		}),
	}
	if minimal {
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("listening on tcp %s: %w", listen, err)
		}
		go func() {
			<-ctx.Done()
			_ = l.Close()
		}()
		slog.Info("serving", "name", name, "listen", listen, "http", "minimal")
		return serveMinimal(l, name)
	}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	slog.Info("serving", "name", name, "listen", listen)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving http on %s: %w", listen, err)
	}
	return nil
}

// echoUDP answers every datagram with the name and the datagram.
func echoUDP(c net.PacketConn, name string) {
	buf := make([]byte, 65535)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		reply := append([]byte(name+": "), buf[:n]...)
		_, _ = c.WriteTo(reply, from)
	}
}
