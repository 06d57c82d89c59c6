// Command nodebox brings the node in a box (test/nodebox) up and leaves it
// up, takes it down, and runs kubectl, podnicctl or a shell in it.
//
//	nodebox up -repo DIR -k8s-bin DIR -crictl FILE [-dir DIR] [-no-agent]
//	nodebox down -dir DIR
//	nodebox kubectl -dir DIR ARGS...
//	nodebox podnicctl -dir DIR ARGS...
//	nodebox exec -dir DIR CMD ARGS...   (in the node's namespaces)
//	nodebox watch -dir DIR              (the watchdog Up starts)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/podnic/podnic/test/nodebox"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "nodebox:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: nodebox up|down|kubectl|podnicctl|exec|watch -dir DIR [args]")
	}
	fs := flag.NewFlagSet("nodebox "+args[0], flag.ContinueOnError)
	dir := fs.String("dir", "", "the box's directory")
	repo := fs.String("repo", ".", "repository root (up)")
	k8sBin := fs.String("k8s-bin", "", "directory of the Kubernetes binaries (up)")
	crictl := fs.String("crictl", "", "crictl binary (up)")
	noAgent := fs.Bool("no-agent", false, "do not run podnic-agent (up)")
	daemonSet := fs.Bool("daemonset", false, "install podnic from deploy/ as a cluster admin would: podnic-agent as the chart's DaemonSet (up; needs -helm)")
	helm := fs.String("helm", "", "helm binary, for -daemonset (up)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	logf := func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
	ctx := context.Background()
	switch args[0] {
	case "up":
		ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		b, err := nodebox.Up(ctx, nodebox.Options{
			Repo: *repo, K8sBin: *k8sBin, Crictl: *crictl, Dir: *dir,
			Detached: true, NoAgent: *noAgent, AgentDaemonSet: *daemonSet, Helm: *helm, Logf: logf,
		})
		if err != nil {
			return err
		}
		fmt.Println(b.Dir)
		return nil
	case "watch":
		return nodebox.Watch(*dir)
	}
	b, err := nodebox.Open(*dir)
	if err != nil {
		return fmt.Errorf("no box in %q: %w", *dir, err)
	}
	b.SetLogf(logf)
	switch args[0] {
	case "down":
		return b.Down()
	case "podnicctl":
		out, err := b.Podnicctl(ctx, fs.Args()...)
		fmt.Print(out)
		return err
	case "kubectl", "exec":
		cmd := b.KubectlCommand(ctx, fs.Args()...)
		if args[0] == "exec" {
			cmd = exec.Command("nsenter", append([]string{"-t", fmt.Sprint(b.Node.PID), "-n", "-m", "--"}, fs.Args()...)...)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		return cmd.Run()
	}
	return fmt.Errorf("unknown command %q", args[0])
}
