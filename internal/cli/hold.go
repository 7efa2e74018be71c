package cli

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/outboxkit/outboxkit/internal/holds"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

const holdUsage = `hold <add|list|release> [flags]

Legal holds: while a hold is active, the sweeper neither deletes (retention)
nor redacts (redact job) the rows of its key or tenant, in the outbox and the
inbox tables. Holds are never deleted; every action is audited.

  add --key K [--topic T] --reason R
                     hold one ordering key (in every topic unless --topic)
  add --tenant X [--tenant-header H] [--topic T] --reason R
                     hold the rows whose header H (default "tenant") is X
  list [--all]       active holds (--all: released ones too)
  release ID --reason R
                     end a hold; retention and redaction resume at their
                     next runs

Actions need --reason and an actor (--actor, $OUTBOXKIT_ACTOR, else your OS
user name).`

func runHold(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(env.Stderr, "Usage: outboxkit %s\n", holdUsage)
		return usageError("expected a verb: add, list or release")
	}
	verb, args := args[0], args[1:]
	fs := newFlagSet(env, "hold "+verb, holdUsage)
	var db dbFlags
	db.register(fs, env)
	asJSON := fs.Bool("json", false, "print JSON for scripts")
	var h holds.Hold
	var all bool
	switch verb {
	case "add":
		fs.StringVar(&h.Key, "key", "", "ordering key to hold")
		fs.StringVar(&h.Tenant, "tenant", "", "tenant to hold (the value of --tenant-header)")
		fs.StringVar(&h.TenantHeader, "tenant-header", holds.TenantHeaderDefault, "header that carries the tenant (exact name)")
		fs.StringVar(&h.Topic, "topic", "", "only this topic (default every topic)")
	case "list":
		fs.BoolVar(&all, "all", false, "released holds too")
	case "release":
	default:
		return usageError("unknown verb %q: use add, list or release", verb)
	}
	if verb != "list" {
		fs.StringVar(&h.Actor, "actor", env.Getenv("OUTBOXKIT_ACTOR"), "who acts, for the audit log ($OUTBOXKIT_ACTOR, else the OS user)")
		fs.StringVar(&h.Reason, "reason", "", "why: the case or matter reference (required)")
	}
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	var id int64
	switch verb {
	case "release":
		if len(pos) != 1 {
			return usageError("release takes one hold ID (outboxkit hold list shows them)")
		}
		if id, err = strconv.ParseInt(pos[0], 10, 64); err != nil || id <= 0 {
			return usageError("hold ID %q: use the number outboxkit hold list shows", pos[0])
		}
	default:
		if len(pos) > 0 {
			return usageError("unexpected argument %q", pos[0])
		}
	}
	if verb != "list" {
		// Checked before connecting, so a mistake costs no database trip.
		if strings.TrimSpace(h.Reason) == "" {
			return usageError("a reason is required (the case or matter reference): pass --reason")
		}
		if verb == "add" && (h.Key == "") == (h.Tenant == "") {
			return usageError("give --key or --tenant (one of them; place two holds to hold both)")
		}
		if h.Actor == "" {
			if u, err := user.Current(); err == nil {
				h.Actor = u.Username
			}
		}
		if h.Actor == "" {
			return usageError("an actor is required: pass --actor or set OUTBOXKIT_ACTOR")
		}
	}

	pool, err := db.openPool(ctx, env, fixedConns(2))
	if err != nil {
		return err
	}
	defer pool.Close()
	store, err := holds.New(pool, db.outboxSchema)
	if err != nil {
		return usageError("%v", err)
	}

	out := env.Stdout
	switch verb {
	case "add":
		added, err := store.Add(ctx, h)
		if err != nil {
			return holdError(err)
		}
		if *asJSON {
			return printJSON(out, added)
		}
		fmt.Fprintf(out, "hold %d placed on %s: retention and redaction skip its rows from now on\n", added.ID, holdSubject(added))
		return nil
	case "release":
		released, err := store.Release(ctx, id, h.Actor, h.Reason)
		if err != nil {
			return holdError(err)
		}
		if *asJSON {
			return printJSON(out, released)
		}
		fmt.Fprintf(out, "hold %d on %s released: retention and redaction take its rows at their next runs\n", released.ID, holdSubject(released))
		return nil
	}
	list, err := store.List(ctx, all)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(out, list)
	}
	if len(list) == 0 {
		fmt.Fprintln(out, "no active legal hold")
		return nil
	}
	tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHOLDS\tSINCE\tBY\tREASON\tRELEASED")
	for _, x := range list {
		released := "-"
		if x.ReleasedAt != nil {
			released = fmt.Sprintf("%s by %s: %s", x.ReleasedAt.Local().Format("2006-01-02 15:04"), x.ReleasedBy, oneLine(x.ReleaseReason, 40))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", x.ID, safetext.Escape(holdSubject(x)), x.CreatedAt.Local().Format("2006-01-02 15:04"),
			safetext.Escape(x.Actor), oneLine(x.Reason, 50), released)
	}
	return tw.Flush()
}

// holdSubject says what a hold holds, e.g. key acct-1 in every topic.
func holdSubject(h holds.Hold) string {
	s := "key " + h.Key
	if h.Tenant != "" {
		s = fmt.Sprintf("tenant %s (header %s)", h.Tenant, h.TenantHeader)
	}
	if h.Topic == "" {
		return s + " in every topic"
	}
	return s + " in topic " + h.Topic
}

// holdError turns the store's refusals into usage errors (exit status 2)
// that say what to do.
func holdError(err error) error {
	if errors.Is(err, holds.ErrInvalid) || errors.Is(err, holds.ErrNotFound) || errors.Is(err, holds.ErrReleased) {
		return usageError("%v", err)
	}
	return err
}
