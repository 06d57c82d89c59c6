// Command podnicctl inspects and drives podnic's datapath on this node.
//
// status, service list, ct list and attachments ask podnic-agent over its
// root-only unix socket when the socket exists; otherwise, and for every
// other command, podnicctl works on the pinned programs and maps directly,
// so it also runs on a node without the agent (the standalone demo does
// exactly that).
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/podnic/podnic/nodeagent/localapi"
)

const usage = `podnicctl — podnic's datapath on this node

Usage: podnicctl [--bpf-root DIR] [--socket PATH] [-o table|json] COMMAND [ARGS]

Commands:
  status                    datapath, maps, Services and the agent's last sync
  load                      load the datapath and pin it (keeps live maps)
  unload                    remove every podnic pin; detaches TCX links
  attach                    attach the programs to a pod's interface
  detach                    detach a pod's programs and remove its pins
  attachments               what is attached where
  service set|delete|list   Service frontends and their backends
  ct list                   conntrack entries
  verdicts                  packets counted per verdict and attach point (pass is not counted)
  events                    follow drop and reject events

Run 'podnicctl COMMAND -h' for a command's flags.
`

type globals struct {
	root   string
	socket string
	output string
	out    io.Writer
}

// agent returns a client of podnic-agent when its socket exists.
func (g globals) agent() *localapi.Client {
	if g.socket == "" {
		return nil
	}
	if c := localapi.NewClient(g.socket); c.Available() {
		return c
	}
	return nil
}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "podnicctl:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	g := globals{out: out}
	fs := flag.NewFlagSet("podnicctl", flag.ContinueOnError)
	fs.StringVar(&g.root, "bpf-root", "/sys/fs/bpf/podnic", "bpffs directory of podnic's pins")
	fs.StringVar(&g.socket, "socket", localapi.DefaultSocket, "podnic-agent's socket; used when it exists (empty: never)")
	fs.StringVar(&g.output, "o", "table", "output format: table or json")
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if g.output != "table" && g.output != "json" {
		return fmt.Errorf("unknown output format %q: use table or json", g.output)
	}
	args = fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return errors.New("no command given")
	}
	cmd, rest := args[0], args[1:]
	if len(rest) > 0 && (cmd == "service" || cmd == "ct") {
		cmd, rest = cmd+" "+rest[0], rest[1:]
	}
	switch cmd {
	case "status":
		return cmdStatus(g, rest)
	case "load":
		return cmdLoad(g, rest)
	case "unload":
		return cmdUnload(g, rest)
	case "attach":
		return cmdAttach(g, rest)
	case "detach":
		return cmdDetach(g, rest)
	case "attachments":
		return cmdAttachments(g, rest)
	case "service set":
		return cmdServiceSet(g, rest)
	case "service delete":
		return cmdServiceDelete(g, rest)
	case "service list":
		return cmdServiceList(g, rest)
	case "ct list":
		return cmdCTList(g, rest)
	case "verdicts":
		return cmdVerdicts(g, rest)
	case "events":
		return cmdEvents(g, rest)
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", strings.Join(args, " "))
}

// emit writes v as JSON, or calls table to write a table.
func (g globals) emit(v any, table func(w *tabwriter.Writer)) error {
	if g.output == "json" {
		enc := json.NewEncoder(g.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	w := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	table(w)
	return w.Flush()
}
