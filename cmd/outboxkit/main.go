// Command outboxkit runs the outboxkit workers and operator tools:
//
//	outboxkit migrate up|down|version|print   install or upgrade the tables
//
// Run "outboxkit help" for every command and "outboxkit <command> -h" for
// its flags. Every flag that names a secret also reads an environment
// variable, and secrets are never printed.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/outboxkit/outboxkit/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
