package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

// approvalInstead records spec as a pending approval when the two-person
// rule is on, prints it, and reports true: the caller then stops.
func (o *opsFlags) approvalInstead(ctx context.Context, env *Env, store *ops.Store, a ops.Action, spec ops.ApprovalSpec) (bool, error) {
	st, err := store.Settings(ctx)
	if err != nil {
		return false, err
	}
	if !st.TwoPersonRule {
		return false, nil
	}
	ap, err := store.RequestApproval(ctx, a, spec)
	if err != nil {
		return true, err
	}
	if o.json {
		return true, printJSON(env.Stdout, ap)
	}
	fmt.Fprintf(env.Stdout, "approval #%d pending (two-person rule): %s\n", ap.ID, approvalWhat(ap))
	fmt.Fprintf(env.Stdout, "nothing ran; another operator runs it with: outboxkit dlq approve %d --reason \"...\" (before %s)\n",
		ap.ID, ap.ExpiresAt.Local().Format(time.RFC3339))
	return true, nil
}

// approvalWhat says what an approval runs.
func approvalWhat(ap *ops.Approval) string {
	what := ap.Verb + " " + strings.Join(ap.Refs, " ")
	if len(ap.Refs) > 8 {
		what = fmt.Sprintf("%s %s … (%d in all)", ap.Verb, strings.Join(ap.Refs[:8], " "), len(ap.Refs))
	}
	if ap.PayloadBytes != nil {
		what += fmt.Sprintf(" with a payload of %d bytes, sha256 %s", *ap.PayloadBytes, ap.PayloadSHA256)
	}
	if len(ap.Filter) > 0 {
		what += fmt.Sprintf(" (filter %s, %g per second)", ap.Filter, ap.PerSec)
	}
	return safetext.Escape(what)
}

func runApprovals(ctx context.Context, env *Env, verb string, args []string) error {
	fs := newFlagSet(env, "dlq "+verb, dlqUsage)
	var o opsFlags
	o.register(fs, env)
	var all bool
	var twoPerson, distinct string
	var ttl time.Duration
	switch verb {
	case "approvals":
		fs.BoolVar(&all, "all", false, "also the decided ones")
		fs.IntVar(&o.limit, "limit", 100, "at most this many")
	case "approve":
		o.brokers.register(fs, env) // a redrive or edit of broker dead letters sends them back
		o.brokers.registerReplay(fs, env)
	case "settings":
		fs.StringVar(&twoPerson, "two-person-rule", "", "on: bulk redrive, drop and edit wait for a second operator's approval; off")
		fs.DurationVar(&ttl, "approval-ttl", 0, "how long an approval can be approved (e.g. 1h)")
		fs.StringVar(&distinct, "distinct-logins", "", "on: the approver must also use another database login; off")
	}
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	store, closeStore, err := o.openStore(ctx, env)
	if err != nil {
		return err
	}
	defer closeStore()
	if verb == "approve" {
		if store, err = o.withBrokers(env, store); err != nil {
			return err
		}
		defer o.brokers.closeTransports()
	}
	out := env.Stdout
	switch verb {
	case "approvals":
		if len(rest) != 0 {
			return usageError("approvals takes no arguments")
		}
		aps, err := store.Approvals(ctx, all, o.limit)
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(out, aps)
		}
		if len(aps) == 0 {
			fmt.Fprintln(out, "no approval is pending")
			return nil
		}
		tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATUS\tREQUESTED BY\tAT\tEXPIRES\tWHAT\tREASON\tDECIDED BY")
		for _, ap := range aps {
			status := ap.Status
			if status == "pending" && ap.Expired {
				status = "expired"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ap.ID, status, safetext.Escape(ap.RequestedBy),
				ap.RequestedAt.Local().Format(time.RFC3339), ap.ExpiresAt.Local().Format(time.RFC3339), approvalWhat(ap),
				oneLine(ap.Reason, 60), safetext.Escape(ap.DecidedBy))
		}
		return tw.Flush()
	case "approve", "reject":
		if len(rest) != 1 {
			return usageError("%s takes one approval ID", verb)
		}
		id, err := strconv.ParseInt(strings.TrimPrefix(rest[0], "#"), 10, 64)
		if err != nil || id <= 0 {
			return usageError("%q is not an approval id (dlq approvals lists them)", rest[0])
		}
		a, err := o.action()
		if err != nil {
			return err
		}
		if verb == "reject" {
			if err := store.Reject(ctx, a, id); err != nil {
				return err
			}
			fmt.Fprintf(out, "approval #%d rejected: nothing runs\n", id)
			return nil
		}
		var opt ops.RedriveOptions
		if !o.json {
			opt.Progress = func(done, total int) { fmt.Fprintf(env.Stderr, "\rapproval #%d: %d/%d", id, done, total) }
		}
		outs, err := store.Approve(ctx, a, id, opt)
		if opt.Progress != nil && len(outs) > 1 {
			fmt.Fprintln(env.Stderr)
		}
		if errors.Is(err, ops.ErrNoBroker) {
			return usageError("%v", err)
		}
		if err != nil && len(outs) == 0 {
			return err
		}
		if !o.json {
			fmt.Fprintf(out, "approval #%d approved by %s and run:\n", id, a.Actor)
		}
		if perr := printOutcomes(out, outs, o.json); perr != nil {
			return perr
		}
		return err
	case "settings":
		if len(rest) != 0 {
			return usageError("settings takes no arguments")
		}
		var c ops.SettingsChange
		onOff := func(name, v string) (*bool, error) {
			switch v {
			case "":
				return nil, nil
			case "on", "true":
				t := true
				return &t, nil
			case "off", "false":
				f := false
				return &f, nil
			}
			return nil, usageError("--%s %q: use on or off", name, v)
		}
		if c.TwoPersonRule, err = onOff("two-person-rule", twoPerson); err != nil {
			return err
		}
		if c.DistinctLogins, err = onOff("distinct-logins", distinct); err != nil {
			return err
		}
		if ttl != 0 {
			c.ApprovalTTL = &ttl
		}
		var st ops.Settings
		if c.TwoPersonRule == nil && c.DistinctLogins == nil && c.ApprovalTTL == nil {
			st, err = store.Settings(ctx)
		} else {
			a, aerr := o.action()
			if aerr != nil {
				return aerr
			}
			st, err = store.SetSettings(ctx, a, c)
		}
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(out, st)
		}
		printSettings(out, st)
		return nil
	}
	return usageError("unknown verb %q", verb)
}

func printSettings(out io.Writer, st ops.Settings) {
	onOff := map[bool]string{true: "on", false: "off"}
	fmt.Fprintf(out, "two-person rule   %s\n", onOff[st.TwoPersonRule])
	fmt.Fprintf(out, "approval ttl      %s\n", st.ApprovalTTL)
	fmt.Fprintf(out, "distinct logins   %s\n", onOff[st.DistinctLogins])
	fmt.Fprintf(out, "updated           %s by %s\n", st.UpdatedAt.Local().Format(time.RFC3339), safetext.Escape(st.UpdatedBy))
}
