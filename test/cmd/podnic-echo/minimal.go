package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
)

// serveMinimal answers every HTTP/1.1 request on l with one fixed
// response and no allocation per request: the benchmark backend, whose own
// cost per request is small next to the datapath's (net/http's is about
// as large as the whole kernel path of a short connection). It reads
// requests without a body (GET, HEAD) and honours Connection: close.
func serveMinimal(l net.Listener, name string) error {
	body := "hello from " + name + "\n"
	keep := []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	closing := []byte(fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body))
	bad := []byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accepting: %w", err)
		}
		go minimalConn(c, keep, closing, bad)
	}
}

var (
	headerEnd           = []byte("\r\n\r\n")
	connectionClose     = []byte("\r\nconnection: close\r\n")
	contentLength       = []byte("\r\ncontent-length:")
	connectionKeepAlive = []byte("\r\nconnection: keep-alive\r\n")
	http10              = []byte(" http/1.0\r\n")
)

// isHTTP10 reports whether the (lower-cased) request line of head says
// HTTP/1.0, whose connections close unless asked to stay.
func isHTTP10(head []byte) bool {
	line := head
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		line = head[:i+1]
	}
	return bytes.HasSuffix(line, http10)
}

func minimalConn(c net.Conn, keep, closing, bad []byte) {
	defer c.Close()
	buf := make([]byte, 8192)
	n := 0
	for {
		m, err := c.Read(buf[n:])
		if m == 0 && err != nil {
			return
		}
		n += m
		for {
			end := bytes.Index(buf[:n], headerEnd)
			if end < 0 {
				if n == len(buf) {
					_, _ = c.Write(bad) // headers too long
					return
				}
				break
			}
			head := buf[:end+2]
			lowerASCII(head)
			if bytes.Contains(head, contentLength) {
				_, _ = c.Write(bad) // a body: not what this server is for
				return
			}
			if bytes.Contains(head, connectionClose) || isHTTP10(head) && !bytes.Contains(head, connectionKeepAlive) {
				_, _ = c.Write(closing)
				return
			}
			if _, err := c.Write(keep); err != nil {
				return
			}
			n = copy(buf, buf[end+len(headerEnd):n])
		}
	}
}

func lowerASCII(b []byte) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
}
