package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// FileSource feeds the agent from a multi-document YAML of v1 Services and
// discovery.k8s.io/v1 EndpointSlices, re-read when its content changes.
// Objects that leave the file are deleted. A file that does not parse is
// logged and ignored: the last good content stays programmed.
type FileSource struct {
	Path     string
	Interval time.Duration // how often to look for changes; 0: 1s
	Zone     string        // this node's zone, for topology hints
}

type fileObjects struct {
	services map[string]*v1.Service
	slices   map[string]*discovery.EndpointSlice
}

// parseObjectsFile reads Services and EndpointSlices from YAML documents.
func parseObjectsFile(data []byte) (fileObjects, error) {
	objs := fileObjects{services: map[string]*v1.Service{}, slices: map[string]*discovery.EndpointSlice{}}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return objs, fmt.Errorf("reading document %d: %w", i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return objs, fmt.Errorf("document %d: %w", i, err)
		}
		switch {
		case tm.APIVersion == "v1" && tm.Kind == "Service":
			var s v1.Service
			if err := yaml.UnmarshalStrict(doc, &s); err != nil {
				return objs, fmt.Errorf("document %d (Service): %w", i, err)
			}
			if s.Namespace == "" {
				s.Namespace = "default"
			}
			objs.services[s.Namespace+"/"+s.Name] = &s
		case tm.APIVersion == "discovery.k8s.io/v1" && tm.Kind == "EndpointSlice":
			var s discovery.EndpointSlice
			if err := yaml.UnmarshalStrict(doc, &s); err != nil {
				return objs, fmt.Errorf("document %d (EndpointSlice): %w", i, err)
			}
			if s.Namespace == "" {
				s.Namespace = "default"
			}
			if err := validateEndpointAddrs(&s); err != nil {
				return objs, fmt.Errorf("document %d (EndpointSlice %s/%s): %w", i, s.Namespace, s.Name, err)
			}
			objs.slices[s.Namespace+"/"+s.Name] = &s
		default:
			return objs, fmt.Errorf("document %d: %s %s is neither a v1 Service nor a discovery.k8s.io/v1 EndpointSlice", i, tm.APIVersion, tm.Kind)
		}
	}
}

// Run reads the file, marks the agent ready after the first good read,
// and follows changes until ctx ends.
func (s FileSource) Run(ctx context.Context, a *Agent) error {
	every := s.Interval
	if every == 0 {
		every = time.Second
	}
	a.OnNode(map[string]string{LabelZone: s.Zone})
	// last is the content programmed; bad the last content that did not
	// parse, and readErr the last read error: each is logged once, not
	// at every look.
	var last, bad [32]byte
	var readErr string
	var cur fileObjects
	ready := false
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		data, err := os.ReadFile(s.Path)
		sum := sha256.Sum256(data)
		if err == nil {
			readErr = ""
		}
		switch {
		case err != nil:
			if err.Error() != readErr {
				readErr = err.Error()
				a.log.Warn("reading services file", "path", s.Path, "error", err)
			}
		case sum != last && sum != bad:
			objs, err := parseObjectsFile(data)
			if err != nil {
				bad = sum
				a.log.Error("services file does not parse; keeping the last good one", "path", s.Path, "error", err)
				break
			}
			last = sum
			for k, o := range cur.services {
				if objs.services[k] == nil {
					a.OnServiceDelete(o.Namespace, o.Name)
				}
			}
			for k, o := range cur.slices {
				if objs.slices[k] == nil {
					a.OnEndpointSliceDelete(o.Namespace, o.Name)
				}
			}
			for _, o := range objs.services {
				a.OnService(o)
			}
			for _, o := range objs.slices {
				a.OnEndpointSlice(o)
			}
			cur = objs
			a.log.Info("services file read", "path", s.Path, "services", len(objs.services), "endpointslices", len(objs.slices))
			if !ready {
				ready = true
				a.SetReady()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// validateEndpointAddrs refuses, as the API server's EndpointSlice
// validation does, an IP endpoint address that is no address, or one no
// pod can have: unspecified, loopback, link-local, or link-local
// multicast. The datapath relies on it: lo's program passes loopback
// traffic untranslated (docs/datapath.md).
func validateEndpointAddrs(s *discovery.EndpointSlice) error {
	if s.AddressType != discovery.AddressTypeIPv4 && s.AddressType != discovery.AddressTypeIPv6 {
		return nil
	}
	for i, e := range s.Endpoints {
		for _, raw := range e.Addresses {
			a, err := netip.ParseAddr(raw)
			if err != nil {
				return fmt.Errorf("endpoint %d: address %q: %w", i, raw, err)
			}
			a = a.Unmap()
			var why string
			switch {
			case a.IsUnspecified():
				why = "unspecified"
			case a.IsLoopback():
				why = "a loopback address"
			case a.IsLinkLocalUnicast():
				why = "a link-local address"
			case a.IsLinkLocalMulticast():
				why = "a link-local multicast address"
			}
			if why != "" {
				return fmt.Errorf("endpoint %d: address %s is %s, which the API server refuses for an endpoint", i, raw, why)
			}
		}
	}
	return nil
}
