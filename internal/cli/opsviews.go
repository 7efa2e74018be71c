package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

const lanesUsage = `lanes [retry-head|skip-head|release --topic T --key K --reason R] [flags]

Without an action: the keys held back behind a failed event, e.g.
  payouts/payout-123 blocked since 10:02 by event o:7 (parked, class poison_format), 14 events waiting
Actions (audited):
  retry-head  replay the parked head; the key's waiting events follow it
  skip-head   drop the head (reversible with dlq restore); waiting events go on
  release     let waiting events go on; the head stays parked`

func runLanes(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "lanes", lanesUsage)
	var o opsFlags
	o.register(fs, env)
	topic := fs.String("topic", "", "topic of the lane")
	key := fs.String("key", "", "key of the lane")
	limit := fs.Int("limit", 100, "at most this many lanes")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError("at most one action: retry-head, skip-head or release")
	}
	store, closeStore, err := o.openStore(ctx, env)
	if err != nil {
		return err
	}
	defer closeStore()
	if len(pos) == 1 {
		verb := ops.LaneAction(pos[0])
		if verb != ops.LaneRetryHead && verb != ops.LaneSkipHead && verb != ops.LaneRelease {
			return usageError("unknown lane action %q: use retry-head, skip-head or release", pos[0])
		}
		if *topic == "" || *key == "" {
			return usageError("%s needs --topic and --key", verb)
		}
		a, err := o.action()
		if err != nil {
			return err
		}
		out, err := store.ActOnLane(ctx, a, *topic, *key, verb)
		if err != nil {
			return err
		}
		return printOutcomes(env.Stdout, []ops.Outcome{out}, o.json)
	}
	lanes, err := store.Lanes(ctx, *topic, *key, *limit)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(env.Stdout, lanes)
	}
	if len(lanes) == 0 {
		fmt.Fprintln(env.Stdout, "no key is held back")
	}
	for _, l := range lanes {
		fmt.Fprintln(env.Stdout, safetext.Escape(l.Describe()))
	}
	return nil
}

const traceUsage = `trace (--key K | --event ID | --correlation C) [flags]

One business key's (or event's, or flow's) whole story: enqueued, each
publish attempt and broker ack, each consumer that applied it, dead letters
and operator actions, in time order.`

func runTrace(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "trace", traceUsage)
	var o opsFlags
	o.register(fs, env)
	var q ops.TraceQuery
	fs.StringVar(&q.Key, "key", "", "business key")
	fs.StringVar(&q.EventID, "event", "", "event id")
	fs.StringVar(&q.Correlation, "correlation", "", "correlation id")
	fs.IntVar(&q.Limit, "limit", 1000, "at most this many events")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if countSet(q.Key, q.EventID, q.Correlation) != 1 {
		return usageError("give exactly one of --key, --event, --correlation")
	}
	store, closeStore, err := o.openStore(ctx, env)
	if err != nil {
		return err
	}
	defer closeStore()
	entries, err := store.Trace(ctx, q)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(env.Stdout, entries)
	}
	if len(entries) == 0 {
		fmt.Fprintln(env.Stdout, "nothing recorded")
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 2, 2, ' ', 0)
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05.000"), e.Where, shortID(e.EventID), safetext.Escape(e.What))
	}
	return tw.Flush()
}

func countSet(v ...string) int {
	n := 0
	for _, s := range v {
		if s != "" {
			n++
		}
	}
	return n
}

func shortID(id string) string {
	if len(id) > 13 {
		return id[:8] + "…" + id[len(id)-4:]
	}
	return id
}

const statsUsage = `stats [--watch 2s] [flags]

Backlog per topic and status with the oldest age, publish rate, parked
events and dead letters, partitions with their owners, relays.`

func runStats(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "stats", statsUsage)
	var o opsFlags
	o.register(fs, env)
	watch := fs.Duration("watch", 0, "refresh at this interval until interrupted")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	store, closeStore, err := o.openStore(ctx, env)
	if err != nil {
		return err
	}
	defer closeStore()
	for {
		st, err := store.Stats(ctx)
		if err != nil {
			return err
		}
		if o.json {
			if err := printJSON(env.Stdout, st); err != nil {
				return err
			}
		} else {
			if *watch > 0 {
				fmt.Fprint(env.Stdout, "\033[H\033[2J")
			}
			printStats(env.Stdout, st)
		}
		if *watch <= 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*watch):
		}
	}
}

func printStats(w io.Writer, st *ops.Stats) {
	fmt.Fprintf(w, "outboxkit stats at %s\n\n", st.At.Format("2006-01-02 15:04:05"))
	fmt.Fprintf(w, "published: %d in the last minute, %d in the last 15 minutes\n\n", st.PerMinute, st.Per15Min)
	tw := tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tSTATUS\tEVENTS\tOLDEST AGE")
	if len(st.Backlog) == 0 {
		fmt.Fprintln(tw, "(empty)\t\t\t")
	}
	for _, b := range st.Backlog {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", b.Topic, b.Status, b.Events, (time.Duration(b.OldestSecs) * time.Second).String())
	}
	tw.Flush()
	if len(st.DeadLetters) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "CONSUMER\tDEAD LETTERS\tCOUNT")
		for _, d := range st.DeadLetters {
			fmt.Fprintf(tw, "%s\t%s\t%d\n", d.Consumer, d.Status, d.Count)
		}
		tw.Flush()
	}
	fmt.Fprintln(w)
	owners := map[string][]string{}
	var expired []string
	for _, p := range st.Partitions {
		o := p.Owner
		if o == "" {
			o = "(no owner)"
		}
		owners[o] = append(owners[o], fmt.Sprint(p.Partition))
		if p.Expired {
			expired = append(expired, fmt.Sprint(p.Partition))
		}
	}
	tw = tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "RELAY\tHOST\tALIVE\tIDLE\tPARTITIONS")
	for _, r := range st.Relays {
		fmt.Fprintf(tw, "%s\t%s:%d\t%v\t%v\t%s\n", r.ID, r.Hostname, r.PID, r.Alive, r.Idle, strings.Join(owners[r.ID], ","))
		delete(owners, r.ID)
	}
	for o, parts := range owners {
		fmt.Fprintf(tw, "%s\t\t\t\t%s\n", o, strings.Join(parts, ","))
	}
	tw.Flush()
	if len(expired) > 0 {
		fmt.Fprintf(w, "\nWARNING: expired leases on partitions %s (a relay died; another takes them within one lease period)\n", strings.Join(expired, ","))
	}
}

const auditUsage = `audit [--actor A] [--action ACTION] [--since 24h] [flags]

The audit log, newest first: who did what, when, why, before and after.`

func runAudit(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "audit", auditUsage)
	var o opsFlags
	o.db.register(fs, env)
	fs.BoolVar(&o.json, "json", false, "print JSON for scripts")
	actor := fs.String("actor", "", "only this actor")
	action := fs.String("action", "", "only this action (park, replay, drop, restore, edit, lane_release, ...)")
	since := fs.String("since", "", "only entries since (RFC 3339 or a duration ago)")
	limit := fs.Int("limit", 100, "at most this many")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	from, err := parseWhen(*since, time.Now())
	if err != nil {
		return usageError("--since %v", err)
	}
	store, closeStore, err := o.openStore(ctx, env)
	if err != nil {
		return err
	}
	defer closeStore()
	entries, err := store.Audit(ctx, *actor, *action, from, *limit)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(env.Stdout, entries)
	}
	tw := tabwriter.NewWriter(env.Stdout, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tACTOR\tACTION\tTARGETS\tREASON")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05"), safetext.Escape(e.Actor), e.Action,
			strings.Join(e.Targets, ","), oneLine(e.Reason, 80))
	}
	return tw.Flush()
}

const replayUsage = `replay --topic T --from TIME --to TIME [--key K] [--consumer C] [--dry-run] --reason R

Sends already published events of a topic and time range (their enqueue
time) to the broker again, with their original event ids and sequences, in
their original order. Every consumer's inbox deduplicates, so nothing is
applied twice: a replay reaches consumers that never got the events (a new
consumer, offsets reset past them). With --consumer, only that consumer
applies them; the others acknowledge and ignore them. Events older than the
sweeper's retention window are gone.`

func runReplay(ctx context.Context, env *Env, args []string) error {
	fs := newFlagSet(env, "replay", replayUsage)
	var o opsFlags
	o.register(fs, env)
	var q ops.RangeReplay
	fs.StringVar(&q.Topic, "topic", "", "topic (required)")
	fs.StringVar(&q.Key, "key", "", "only this key")
	fs.StringVar(&q.Consumer, "consumer", "", "only this consumer applies them")
	from := fs.String("from", "", "start of the range (RFC 3339, date, or a duration ago)")
	to := fs.String("to", "", "end of the range, exclusive (default now)")
	fs.BoolVar(&q.DryRun, "dry-run", false, "count the events, change nothing")
	fs.IntVar(&q.Limit, "limit", 100000, "at most this many events")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	now := time.Now()
	var err error
	if q.From, err = parseWhen(*from, now); err != nil || q.From.IsZero() {
		return usageError("--from is required: RFC 3339, a date, or a duration ago like 2h")
	}
	q.To = now
	if *to != "" {
		if q.To, err = parseWhen(*to, now); err != nil {
			return usageError("--to %v", err)
		}
	}
	if q.Topic == "" || !q.From.Before(q.To) {
		return usageError("give --topic and --from before --to")
	}
	a := ops.Action{Actor: "dry-run", Reason: "dry run"}
	if !q.DryRun {
		if a, err = o.action(); err != nil {
			return err
		}
	}
	store, closeStore, err := o.openStore(ctx, env)
	if err != nil {
		return err
	}
	defer closeStore()
	res, err := store.ReplayRange(ctx, a, q)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(env.Stdout, res)
	}
	verb := "sent again"
	if q.DryRun {
		verb = "would be sent again"
	}
	target := "every consumer"
	if q.Consumer != "" {
		target = "consumer " + q.Consumer
	}
	fmt.Fprintf(env.Stdout, "%d published events of %s %s to %s\n", res.Events, q.Topic, verb, target)
	if res.Redacted > 0 {
		fmt.Fprintf(env.Stdout, "%d events of the range were left out: their payload was redacted (sweeper redact job), they cannot be sent again\n", res.Redacted)
	}
	return nil
}
