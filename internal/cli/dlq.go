package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/outboxkit/outboxkit/internal/ops"
	"github.com/outboxkit/outboxkit/internal/safetext"
)

const dlqUsage = `dlq <list|show|replay|redrive|drop|restore|edit|ingest> [flags] [refs...]

Parked outbox events (o:<id>) and inbox dead letters (i:<id>), in one place.

  list                   failed events matching the filters, in key order
  show REF               everything about one: headers, error, attempts, payload
  replay REF...          put parked events back to pending (fresh attempts);
                         a blocked key follows its head once it is published
  redrive                replay everything matching the filters, in key order,
                         rate-limited (--rate); --dry-run says what would happen
  drop REF...            soft delete with a reason (never published); undo: restore
  restore REF...         undo a drop
  edit REF --payload-file F
                         publish a corrected copy in the original's place; the
                         original is kept (status dropped, payload untouched)
  ingest --rabbitmq-queue Q | --kafka-topic T
                         copy messages the brokers dead-lettered themselves
                         into the dead letters (see dlq ingest -h)
  approvals [--all]      approvals waiting for a second operator (two-person rule)
  approve ID             approve and run one (not your own; before it expires)
  reject ID              refuse one (or withdraw your own)
  settings               show the settings; the tables' owner changes them:
                         --two-person-rule on|off --approval-ttl 1h
                         --distinct-logins on|off

With the two-person rule on, redrive (without --dry-run), drop and edit do not
run: they record exactly what would run as a pending approval, print its id
and exit; a second operator runs it with "dlq approve ID --reason R".

Inbox dead letters are applied by their consumer, where the handlers are:
replay and edit of i:<id> (and redrive --kind inbox) record a request that
the running consumer applies within seconds, in key order; dlq show and list
show each request's outcome, and --wait waits for it. A drop of the head of
a blocked key moves the key past it and asks the consumer to apply the
events that waited behind it.

Broker dead letters (copied by dlq ingest) have no consumer to ask: replay
and redrive send the original message back to where it came from (RabbitMQ:
the queue that dead-lettered it, through the default exchange, so no other
queue gets it again; Kafka: the original topic, read again by every consumer
group, so only where consumers deduplicate by event id), edit sends the
corrected payload there as a new message (an event id derived from the dead
letter and the corrected bytes, the same on a retry; header
outboxkit-edit-of) and keeps the original row (status edited); a Kafka edit
needs --kafka-retry-topic. They need the broker's flags: --rabbitmq-url or
--kafka-brokers (or RABBITMQ_URL, KAFKA_BROKERS), and the TLS or SASL flags
the relay takes. --replay-allow lists the queues and topics they may go to.
A replay of several REFs is a bulk action: rate-limited (--rate), and under
the two-person rule an approval. "outcome unknown" or "sent, not recorded"
means the message may be at its broker: do not retry before looking.

Every action needs --reason and an actor (--actor, $OUTBOXKIT_ACTOR, else your
OS user name) and is written to outbox.audit_log with before and after.
REF is o:<id>, i:<id>, or an event id.`

// opsFlags are the flags of every operator command.
type opsFlags struct {
	db      dbFlags
	json    bool
	actor   string
	reason  string
	filter  ops.Filter
	from    string
	to      string
	kind    string
	limit   int
	dryRun  bool
	rate    float64
	payload string
	ctype   string
	brokers brokerConnFlags // replay, redrive and edit of broker dead letters (dlq ingest)
	pool    *pgxpool.Pool   // set by openStore
	wait    time.Duration
}

func (o *opsFlags) register(fs *flag.FlagSet, env *Env) {
	o.db.register(fs, env)
	fs.BoolVar(&o.json, "json", false, "print JSON for scripts")
	fs.StringVar(&o.actor, "actor", env.Getenv("OUTBOXKIT_ACTOR"), "who acts, for the audit log ($OUTBOXKIT_ACTOR, else the OS user)")
	fs.StringVar(&o.reason, "reason", "", "why, for the audit log (required for actions)")
}

func (o *opsFlags) registerFilter(fs *flag.FlagSet) {
	fs.StringVar(&o.kind, "kind", "", "outbox or inbox (default both)")
	fs.StringVar(&o.filter.Topic, "topic", "", "only this topic")
	fs.StringVar(&o.filter.Key, "key", "", "only this key")
	fs.StringVar(&o.filter.Consumer, "consumer", "", "only this consumer's dead letters")
	fs.StringVar(&o.filter.Class, "class", "", "only this error class (transient, unroutable, poison_format, ...)")
	fs.StringVar(&o.filter.ErrorText, "error", "", "only errors containing this text")
	fs.StringVar(&o.from, "from", "", "only events created at or after this time (RFC 3339, or a duration ago like 2h)")
	fs.StringVar(&o.to, "to", "", "only events created before this time (RFC 3339, or a duration ago)")
	fs.BoolVar(&o.filter.Dropped, "dropped", false, "list dropped events instead of parked ones")
	fs.IntVar(&o.limit, "limit", 100, "at most this many")
}

// parseWhen accepts RFC 3339, a date, or a duration meaning "that long ago".
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: use a positive duration (how long ago)", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil && validOffset(s, layout) {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: use RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23) or a duration ago (2h)", s)
}

// validOffset reports whether an RFC 3339 time's zone offset is one RFC 3339
// allows (hours 00-23, minutes 00-59). Go's parser takes "+24:60" as a zone
// 25 hours east, a time that no longer prints as what was meant.
func validOffset(s, layout string) bool {
	if layout != time.RFC3339Nano || strings.HasSuffix(s, "Z") || strings.HasSuffix(s, "z") || len(s) < 6 {
		return true
	}
	off := s[len(s)-6:]
	hh, err1 := strconv.Atoi(off[1:3])
	mm, err2 := strconv.Atoi(off[4:6])
	return err1 == nil && err2 == nil && hh < 24 && mm < 60
}

func (o *opsFlags) resolveFilter(now time.Time) (ops.Filter, error) {
	f := o.filter
	f.Limit = o.limit
	switch o.kind {
	case "":
	case "outbox":
		f.Kind = ops.KindOutbox
	case "inbox":
		f.Kind = ops.KindInbox
	default:
		return f, usageError("--kind %q: use outbox or inbox", o.kind)
	}
	var err error
	if f.From, err = parseWhen(o.from, now); err != nil {
		return f, usageError("--from %v", err)
	}
	if f.To, err = parseWhen(o.to, now); err != nil {
		return f, usageError("--to %v", err)
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		return f, usageError("--from must be before --to")
	}
	return f, nil
}

func (o *opsFlags) action() (ops.Action, error) {
	a := ops.Action{Actor: o.actor, Reason: strings.TrimSpace(o.reason)}
	if a.Actor == "" {
		if u, err := user.Current(); err == nil {
			a.Actor = u.Username
		}
	}
	if a.Actor == "" {
		return a, usageError("%v", ops.ErrNoActor)
	}
	if a.Reason == "" {
		return a, usageError("%v", ops.ErrNoReason)
	}
	return a, nil
}

// openStore connects and returns the operator store and a close function.
func (o *opsFlags) openStore(ctx context.Context, env *Env) (*ops.Store, func(), error) {
	pool, err := o.db.openPool(ctx, env, fixedConns(4))
	if err != nil {
		return nil, nil, err
	}
	s, err := ops.New(pool, o.db.outboxSchema, o.db.inboxSchema)
	if err != nil {
		pool.Close()
		return nil, nil, usageError("%v", err)
	}
	o.pool = pool
	return s, pool.Close, nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runDLQ(ctx context.Context, env *Env, args []string) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintf(env.Stderr, "Usage: outboxkit %s\n", dlqUsage)
		return usageError("expected a verb: list, show, replay, redrive, drop, restore, edit, ingest, approvals, approve, reject or settings")
	}
	verb, args := args[0], args[1:]
	if verb == "ingest" {
		return runDLQIngest(ctx, env, args)
	}
	switch verb {
	case "approve", "approvals", "reject", "settings":
		return runApprovals(ctx, env, verb, args) // the two-person rule (approvals.go)
	}
	fs := newFlagSet(env, "dlq "+verb, dlqUsage)
	var o opsFlags
	o.register(fs, env)
	switch verb {
	case "list", "redrive":
		o.registerFilter(fs)
	}
	if verb == "redrive" {
		fs.BoolVar(&o.dryRun, "dry-run", false, "say what would be replayed, change nothing")
	}
	if verb == "redrive" || verb == "replay" {
		fs.Float64Var(&o.rate, "rate", 50, "events per second")
	}
	// Only these may send broker dead letters back (a drop sends nothing).
	sends := verb == "replay" || verb == "redrive" || verb == "edit"
	if sends {
		o.brokers.register(fs, env)
		o.brokers.registerReplay(fs, env)
	}
	switch verb {
	case "replay", "redrive", "drop", "edit":
		fs.DurationVar(&o.wait, "wait", 0, "inbox dead letters: wait up to this long for the consumer to run the requests, and print their outcomes")
	}
	if verb == "edit" {
		fs.StringVar(&o.payload, "payload-file", "", "file with the corrected payload (- for stdin)")
		fs.StringVar(&o.ctype, "content-type", "", "content type of the corrected payload (default: the original's)")
	}
	refs, err := parse(fs, args)
	if err != nil {
		return err
	}
	switch verb {
	case "list", "show", "replay", "redrive", "drop", "restore", "edit":
	default:
		return usageError("unknown verb %q: use list, show, replay, redrive, drop, restore or edit", verb)
	}
	store, closeStore, err := o.openStore(ctx, env)
	if err != nil {
		return err
	}
	defer closeStore()
	if sends {
		if store, err = o.withBrokers(env, store); err != nil {
			return err
		}
		defer o.brokers.closeTransports()
	}
	out := env.Stdout

	switch verb {
	case "list":
		f, err := o.resolveFilter(time.Now())
		if err != nil {
			return err
		}
		items, err := store.List(ctx, f)
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(out, items)
		}
		if len(items) == 0 {
			fmt.Fprintln(out, "nothing parked matches")
			return nil
		}
		tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "REF\tSTATUS\tTOPIC\tKEY\tSEQ\tTYPE\tCONSUMER\tATTEMPTS\tCLASS\tERROR\tWAITING\tREQUEST")
		for _, it := range items {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s v%d\t%s\t%d\t%s\t%s\t%d\t%s\n", it.Ref, it.Status, it.Topic,
				safetext.Escape(it.Key), it.Sequence, it.Type, it.Version, it.Consumer, it.Attempts, it.ErrorClass,
				oneLine(it.Error, 60), it.Waiting, requestSummary(it.Request))
		}
		return tw.Flush()
	case "show":
		if len(refs) != 1 {
			return usageError("show takes one REF")
		}
		ref, err := store.ParseRef(ctx, refs[0])
		if err != nil {
			return usageError("%v", err)
		}
		d, err := store.Show(ctx, ref)
		if err != nil {
			return err
		}
		if o.json {
			return printJSON(out, d)
		}
		printDetail(out, d)
		return nil
	case "redrive":
		a, err := o.action()
		if err != nil && !o.dryRun {
			return err
		}
		if o.dryRun && a.Actor == "" {
			a.Actor = "dry-run"
		}
		if o.dryRun && a.Reason == "" {
			a.Reason = "dry run"
		}
		f, err := o.resolveFilter(time.Now())
		if err != nil {
			return err
		}
		if !o.dryRun {
			if asked, err := o.approvalInstead(ctx, env, store, a, ops.ApprovalSpec{Verb: "redrive", Filter: &f, PerSec: o.rate}); asked || err != nil {
				return err
			}
		}
		opt := ops.RedriveOptions{DryRun: o.dryRun, PerSec: o.rate}
		if !o.json && !o.dryRun {
			opt.Progress = func(done, total int) { fmt.Fprintf(env.Stderr, "\rredrive: %d/%d", done, total) }
		}
		outs, err := store.Redrive(ctx, a, f, opt)
		if opt.Progress != nil && len(outs) > 0 {
			fmt.Fprintln(env.Stderr)
		}
		if errors.Is(err, ops.ErrNoBroker) {
			return usageError("%v: nothing ran", err)
		}
		if err != nil {
			return err
		}
		return o.printOutcomesWaiting(ctx, env, store, outs)
	}
	// The single-event actions.
	a, err := o.action()
	if err != nil {
		return err
	}
	if len(refs) == 0 {
		return usageError("%s takes one or more REFs", verb)
	}
	var payload []byte
	if verb == "edit" {
		if len(refs) != 1 || o.payload == "" {
			return usageError("edit takes one REF and --payload-file")
		}
		if o.payload == "-" {
			payload, err = io.ReadAll(os.Stdin)
		} else {
			payload, err = os.ReadFile(o.payload)
		}
		if err != nil {
			return err
		}
	}
	parsed := make([]ops.Ref, 0, len(refs))
	for _, text := range refs {
		ref, err := store.ParseRef(ctx, text)
		if err != nil {
			return usageError("%v", err)
		}
		parsed = append(parsed, ref)
	}
	if verb == "drop" || verb == "edit" || (verb == "replay" && len(parsed) > 1) {
		// A replay of several refs is a bulk action, as a redrive is.
		spec := ops.ApprovalSpec{Verb: verb, Refs: parsed, Payload: payload, ContentType: o.ctype}
		if verb == "replay" {
			spec = ops.ApprovalSpec{Verb: "redrive", Refs: parsed, PerSec: o.rate}
		}
		if asked, err := o.approvalInstead(ctx, env, store, a, spec); asked || err != nil {
			return err
		}
	}
	if verb == "replay" {
		outs, err := store.ReplayRefs(ctx, a, parsed, ops.RedriveOptions{PerSec: o.rate})
		if errors.Is(err, ops.ErrNoBroker) && len(outs) == 0 {
			return usageError("%v: nothing ran", err)
		}
		if perr := o.printOutcomesWaiting(ctx, env, store, outs); perr != nil {
			return perr
		}
		return err
	}
	var outs []ops.Outcome
	var failed error
	for _, ref := range parsed {
		var o2 ops.Outcome
		var err error
		switch verb {
		case "drop":
			o2, err = store.Drop(ctx, a, ref)
		case "restore":
			o2, err = store.Restore(ctx, a, ref)
		case "edit":
			o2, err = store.Edit(ctx, a, ref, payload, o.ctype)
		}
		o2, stop := ops.OutcomeOf(ref, o2, err)
		failed = errors.Join(failed, err)
		outs = append(outs, o2)
		if stop {
			break
		}
	}
	if err := o.printOutcomesWaiting(ctx, env, store, outs); err != nil {
		return err
	}
	return failed
}

func printOutcomes(out io.Writer, outs []ops.Outcome, asJSON bool) error {
	if asJSON {
		return printJSON(out, outs)
	}
	if len(outs) == 0 {
		fmt.Fprintln(out, "nothing matches")
	}
	for _, o := range outs {
		line := fmt.Sprintf("%s %s", o.Ref, o.Result)
		if o.NewRef != nil {
			line += " as " + o.NewRef.String()
		}
		if o.Note != "" {
			line += ": " + safetext.Escape(o.Note)
		}
		fmt.Fprintln(out, line)
	}
	return nil
}

func oneLine(s string, n int) string {
	s = safetext.Escape(strings.Join(strings.Fields(s), " "))
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

func printDetail(out io.Writer, d *ops.Detail) {
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(out, "%-16s %s\n", k, safetext.Escape(v))
		}
	}
	row("ref", d.Ref.String())
	row("event id", d.EventID)
	row("status", d.Status)
	row("topic", d.Topic)
	if d.Key != "" {
		row("key", fmt.Sprintf("%s (sequence %d)", d.Key, d.Sequence))
	}
	row("type", fmt.Sprintf("%s v%d", d.Type, d.Version))
	row("consumer", d.Consumer)
	row("consumer version", d.ConsumerVersion)
	row("correlation id", d.CorrelationID)
	row("causation id", d.CausationID)
	row("traceparent", d.TraceParent)
	row("attempts", fmt.Sprint(d.Attempts))
	row("error class", d.ErrorClass)
	row("error", d.Error)
	if !d.CreatedAt.IsZero() {
		row("created", d.CreatedAt.Format(time.RFC3339Nano))
	}
	if !d.FirstFailedAt.IsZero() {
		row("first failure", d.FirstFailedAt.Format(time.RFC3339Nano))
	}
	if !d.LastFailedAt.IsZero() {
		row("last failure", d.LastFailedAt.Format(time.RFC3339Nano))
	}
	if d.BlockedBy != 0 {
		row("waits for", fmt.Sprintf("i:%d", d.BlockedBy))
	}
	row("content type", d.ContentType)
	if len(d.Headers) > 0 {
		fmt.Fprintln(out, "headers")
		names := make([]string, 0, len(d.Headers))
		for k := range d.Headers {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			fmt.Fprintf(out, "  %s: %s\n", safetext.Escape(k), safetext.Escape(d.Headers[k]))
		}
	}
	if d.IngestedFrom != "" {
		row("ingested from", d.IngestedFrom+" (a broker dead letter; replay republishes it to where it came from)")
		printOrigin(out, d.Origin)
	}
	if len(d.History) > 0 {
		fmt.Fprintln(out, "attempts")
		for _, a := range d.History {
			line := fmt.Sprintf("  #%d %s %s", a.Attempt, a.At.Format(time.RFC3339), a.Outcome)
			if a.ErrorClass != "" {
				line += fmt.Sprintf(" [%s] %s", a.ErrorClass, a.Error)
			}
			if a.BrokerAck != "" {
				line += " " + a.BrokerAck
			}
			fmt.Fprintln(out, safetext.Escape(line))
		}
	}
	if len(d.Requests) > 0 {
		fmt.Fprintln(out, "requests")
		for _, r := range d.Requests {
			fmt.Fprintln(out, "  "+safetext.Escape(requestLine(r)))
		}
	}
	fmt.Fprintf(out, "payload (%d bytes)\n%s\n", d.PayloadBytes, renderPayload(d.Payload))
}

// requestSummary is the short form of an inbox request for dlq list.
func requestSummary(r *ops.Request) string {
	if r == nil {
		return ""
	}
	return fmt.Sprintf("#%d %s %s", r.ID, r.Action, r.Status)
}

// requestLine is one inbox request with who, when and its outcome.
func requestLine(r ops.Request) string {
	line := fmt.Sprintf("#%d %s %s: requested by %s at %s (%s)", r.ID, r.Action, r.Status, r.RequestedBy,
		r.RequestedAt.Format(time.RFC3339), oneLine(r.Reason, 80))
	if r.PayloadBytes != nil {
		line += fmt.Sprintf(", corrected payload %d bytes", *r.PayloadBytes)
	}
	if r.DoneAt != nil {
		line += fmt.Sprintf("; done at %s by %s", r.DoneAt.Format(time.RFC3339), r.DoneBy)
	}
	if r.Outcome != "" {
		line += ": " + oneLine(r.Outcome, 200)
	}
	return line
}

// withBrokers returns store sending broker dead letters back through the
// brokers the flags name.
func (o *opsFlags) withBrokers(env *Env, store *ops.Store) (*ops.Store, error) {
	rep, err := o.brokers.republisher(env)
	if err != nil {
		return nil, err
	}
	return store.WithRepublisher(rep), nil
}

// printOutcomesWaiting prints the outcomes of an action; with --wait it
// then waits for the inbox requests it made and prints how they ended.
func (o *opsFlags) printOutcomesWaiting(ctx context.Context, env *Env, store *ops.Store, outs []ops.Outcome) error {
	var ids []int64
	for _, out := range outs {
		if out.Request != 0 {
			ids = append(ids, out.Request)
		}
	}
	if o.wait <= 0 || len(ids) == 0 {
		return printOutcomes(env.Stdout, outs, o.json)
	}
	if !o.json {
		if err := printOutcomes(env.Stdout, outs, false); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, o.wait)
	defer cancel()
	reqs, err := store.WaitRequests(wctx, ids, 250*time.Millisecond)
	if err != nil {
		return err
	}
	if o.json {
		return printJSON(env.Stdout, map[string]any{"outcomes": outs, "requests": reqs})
	}
	var unsettled error
	for _, r := range reqs {
		fmt.Fprintln(env.Stdout, safetext.Escape(requestLine(r)))
		switch r.Status {
		case "pending":
			unsettled = errors.Join(unsettled, fmt.Errorf("request #%d is still pending after %s: is consumer %s running? (it runs requests while its Run is active)", r.ID, o.wait, r.Consumer))
		case "failed", "refused":
			unsettled = errors.Join(unsettled, fmt.Errorf("request #%d %s: %s", r.ID, r.Status, r.Outcome))
		}
	}
	return unsettled
}
