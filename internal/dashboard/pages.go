package dashboard

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/outboxkit/outboxkit/internal/failure"
	"github.com/outboxkit/outboxkit/internal/ops"
)

// pageTimeout bounds the database work of one page.
const pageTimeout = 30 * time.Second

type topicRow struct {
	Topic                              string
	Pending, Blocked, Parked, Schedule int64
	OldestPending                      float64 // seconds
}

type deadLetterRow struct {
	Consumer        string
	Parked, Blocked int64
}

type overviewData struct {
	Stats                               *ops.Stats
	Topics                              []topicRow
	Pending, Blocked, Parked, Scheduled int64
	Waiting                             int64 // pending + blocked
	OldestPending                       float64
	OldestTopic                         string
	DeadLetters                         []deadLetterRow
	DeadTotal                           int64
	HeldLanes, RetryingLanes            int
	RelaysAlive, ExpiredLeases          int
	Backlog, Rate                       chart
	HasSampler                          bool
	SampleEvery                         string
}

func (s *server) overview(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	st, err := s.store.Stats(ctx)
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	lanes, err := s.store.Lanes(ctx, "", "", 10000)
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	d := overviewData{Stats: st}
	topics := map[string]*topicRow{}
	for _, b := range st.Backlog {
		t := topics[b.Topic]
		if t == nil {
			t = &topicRow{Topic: b.Topic}
			topics[b.Topic] = t
		}
		switch b.Status {
		case "pending":
			t.Pending += b.Events
			t.OldestPending = b.OldestSecs
			d.Pending += b.Events
			if b.OldestSecs > d.OldestPending {
				d.OldestPending, d.OldestTopic = b.OldestSecs, b.Topic
			}
		case "blocked":
			t.Blocked += b.Events
			d.Blocked += b.Events
		case "parked":
			t.Parked += b.Events
			d.Parked += b.Events
		case "scheduled":
			t.Schedule += b.Events
			d.Scheduled += b.Events
		}
	}
	d.Waiting = d.Pending + d.Blocked
	for _, t := range topics {
		d.Topics = append(d.Topics, *t)
	}
	sort.Slice(d.Topics, func(i, j int) bool { return d.Topics[i].Topic < d.Topics[j].Topic })
	dls := map[string]*deadLetterRow{}
	for _, c := range st.DeadLetters {
		x := dls[c.Consumer]
		if x == nil {
			x = &deadLetterRow{Consumer: c.Consumer}
			dls[c.Consumer] = x
		}
		if c.Status == "blocked" {
			x.Blocked += c.Count
		} else {
			x.Parked += c.Count
		}
		d.DeadTotal += c.Count
	}
	for _, x := range dls {
		d.DeadLetters = append(d.DeadLetters, *x)
	}
	sort.Slice(d.DeadLetters, func(i, j int) bool { return d.DeadLetters[i].Consumer < d.DeadLetters[j].Consumer })
	for _, l := range lanes {
		if l.HoldUntil == nil {
			d.HeldLanes++
		} else {
			d.RetryingLanes++
		}
	}
	for _, rl := range st.Relays {
		if rl.Alive {
			d.RelaysAlive++
		}
	}
	for _, p := range st.Partitions {
		if p.Expired {
			d.ExpiredLeases++
		}
	}
	if s.cfg.Sampler != nil {
		samples := s.cfg.Sampler.Samples()
		d.HasSampler = true
		d.SampleEvery = s.cfg.Sampler.Every().String()
		d.Backlog, d.Rate = backlogChart(samples), rateChart(samples)
	}
	p := s.pd(rc, "Overview", "overview", d)
	p.Refresh = 30
	s.render(w, r, http.StatusOK, "overview.html", p)
}

// filterForm is the filter of the event list and the redrive, as typed.
type filterForm struct {
	Kind, Topic, Key, Consumer, Class, Error, From, To string
	Dropped                                            bool
	Limit                                              int
}

// Query is the filter as URL query parameters.
func (f filterForm) Query() string {
	v := url.Values{}
	for k, x := range map[string]string{"kind": f.Kind, "topic": f.Topic, "key": f.Key, "consumer": f.Consumer,
		"class": f.Class, "error": f.Error, "from": f.From, "to": f.To} {
		if x != "" {
			v.Set(k, x)
		}
	}
	if f.Dropped {
		v.Set("dropped", "1")
	}
	return v.Encode()
}

func readFilter(v url.Values, defLimit int) filterForm {
	f := filterForm{Kind: v.Get("kind"), Topic: strings.TrimSpace(v.Get("topic")), Key: strings.TrimSpace(v.Get("key")),
		Consumer: strings.TrimSpace(v.Get("consumer")), Class: strings.TrimSpace(v.Get("class")),
		Error: strings.TrimSpace(v.Get("error")), From: strings.TrimSpace(v.Get("from")), To: strings.TrimSpace(v.Get("to")),
		Dropped: v.Get("dropped") != "", Limit: defLimit}
	if n, err := strconv.Atoi(v.Get("limit")); err == nil && n > 0 {
		f.Limit = min(n, 10000)
	}
	return f
}

// forRedrive narrows f to what one bulk redrive covers: parked outbox
// events (the default), or the inbox dead letters of one consumer or of all
// (a consumer named implies inbox). Dropped rows are restored, not redriven.
func (f filterForm) forRedrive() filterForm {
	if f.Consumer != "" {
		f.Kind = "inbox"
	}
	if f.Kind != "inbox" {
		f.Kind, f.Consumer = "outbox", ""
	}
	f.Dropped = false
	return f
}

// opsFilter turns the typed filter into an ops.Filter, or says what is wrong.
func (f filterForm) opsFilter(now time.Time) (ops.Filter, error) {
	of := ops.Filter{Topic: f.Topic, Key: f.Key, Consumer: f.Consumer, Class: f.Class, ErrorText: f.Error,
		Dropped: f.Dropped, Limit: f.Limit}
	switch f.Kind {
	case "", "all":
	case "outbox":
		of.Kind = ops.KindOutbox
	case "inbox":
		of.Kind = ops.KindInbox
	default:
		return of, fmt.Errorf("kind %q: choose outbox or inbox", f.Kind)
	}
	var err error
	if of.From, err = parseWhen(f.From, now); err != nil {
		return of, fmt.Errorf("from: %w", err)
	}
	if of.To, err = parseWhen(f.To, now); err != nil {
		return of, fmt.Errorf("to: %w", err)
	}
	if !of.From.IsZero() && !of.To.IsZero() && !of.From.Before(of.To) {
		return of, errors.New("from must be before to")
	}
	return of, nil
}

// parseWhen accepts RFC 3339, a date, a local date and time, or a duration
// meaning "that long ago" (as the CLI does).
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
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q: use RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23) or a duration ago (2h)", s)
}

type listData struct {
	Filter  filterForm
	Items   []ops.Item
	Err     string
	Classes []failure.Class
	Heading string
	More    bool
}

func (s *server) events(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	f := readFilter(r.URL.Query(), 100)
	d := listData{Filter: f, Classes: failure.Classes}
	nav := "events"
	switch {
	case f.Kind == "inbox" || f.Consumer != "":
		d.Heading, nav = "Dead letters", "deadletters"
	case f.Kind == "outbox":
		d.Heading = "Parked events"
	default:
		d.Heading = "Parked events and dead letters"
	}
	if f.Dropped {
		d.Heading = "Dropped: " + strings.ToLower(d.Heading)
	}
	of, err := f.opsFilter(time.Now())
	if err != nil {
		d.Err = err.Error()
		s.render(w, r, http.StatusBadRequest, "events.html", s.pd(rc, d.Heading, nav, d))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	of.Limit++
	items, err := s.store.List(ctx, of)
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	if len(items) > f.Limit {
		items, d.More = items[:f.Limit], true
	}
	d.Items = items
	s.render(w, r, http.StatusOK, "events.html", s.pd(rc, d.Heading, nav, d))
}

type header struct{ Name, Value string }

type eventData struct {
	D       *ops.Detail
	Payload payloadView
	Headers []header
	Lane    *ops.Lane
	Replay  bool // parked: replay and edit
	Drop    bool // parked or blocked
	Restore bool // dropped
	Inbox   bool // an inbox dead letter: replay and edit are requests its consumer runs
	// A broker dead letter (dlq ingest): replay and edit send it (or a
	// corrected copy, to EditDest) to Dest, unless NoBroker says why they
	// cannot; EditRefused says why an edit would be refused.
	Ingested    bool
	Dest        string
	EditDest    string
	EditRefused string
	NoBroker    string
}

func (s *server) event(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	ref, err := s.store.ParseRef(ctx, r.PathValue("ref"))
	if err != nil {
		if errors.Is(err, ops.ErrNotFound) || errors.Is(err, ops.ErrBadRef) {
			s.errorPage(w, r, rc, http.StatusNotFound, err.Error())
			return
		}
		s.internalError(w, r, rc, err)
		return
	}
	det, err := s.store.Show(ctx, ref)
	if errors.Is(err, ops.ErrNotFound) {
		s.errorPage(w, r, rc, http.StatusNotFound, fmt.Sprintf("%s: no such event.", ref))
		return
	}
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	d := eventData{D: det, Payload: renderPayload(det.Payload)}
	for k, v := range det.Headers {
		d.Headers = append(d.Headers, header{k, v})
	}
	sort.Slice(d.Headers, func(i, j int) bool { return d.Headers[i].Name < d.Headers[j].Name })
	if ref.Kind == ops.KindInbox {
		d.Inbox = true
		d.Replay = det.Status == "parked"
		d.Drop = det.Status == "parked"
		d.Restore = det.Status == "dropped"
	}
	if det.IngestedFrom != "" {
		d.Ingested = true
		if dest, err := s.store.BrokerTarget(ctx, ref, false); err == nil {
			d.Dest = dest.String()
		} else if !errors.Is(err, ops.ErrNoBroker) {
			d.Dest = "nowhere known: " + err.Error()
		}
		if dest, err := s.store.BrokerTarget(ctx, ref, true); err == nil {
			d.EditDest = dest.String()
		} else if !errors.Is(err, ops.ErrNoBroker) {
			d.EditRefused = "Edit refused: " + err.Error()
		}
		if err := s.store.BrokerReady(det.IngestedFrom); err != nil {
			d.NoBroker = noBrokerText(err)
		}
	}
	if ref.Kind == ops.KindOutbox {
		d.Replay = det.Status == "parked"
		d.Drop = det.Status == "parked" || det.Status == "blocked"
		d.Restore = det.Status == "dropped"
		if det.Key != "" {
			lanes, err := s.store.Lanes(ctx, det.Topic, det.Key, 1)
			if err != nil {
				s.internalError(w, r, rc, err)
				return
			}
			if len(lanes) == 1 && lanes[0].Topic == det.Topic && lanes[0].Key == det.Key {
				d.Lane = &lanes[0]
			}
		}
	}
	s.render(w, r, http.StatusOK, "event.html", s.pd(rc, ref.String(), "events", d))
}

type redriveData struct {
	Filter    filterForm
	Err       string
	Previewed bool
	Preview   []ops.Outcome
	Results   []ops.Outcome
	Done      bool
	Reason    string
	Rate      float64
	Counts    []header
	Classes   []failure.Class
}

// redrivePreview shows the redrive filter and, once it is submitted, what a
// redrive would do (a dry run: nothing changes, nothing is audited).
func (s *server) redrivePreview(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	q := r.URL.Query()
	f := readFilter(q, 100).forRedrive()
	d := redriveData{Filter: f, Rate: 50, Classes: failure.Classes}
	if q.Get("preview") == "" {
		s.render(w, r, http.StatusOK, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
		return
	}
	of, err := f.opsFilter(time.Now())
	if err != nil {
		d.Err = err.Error()
		s.render(w, r, http.StatusBadRequest, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	outs, err := s.store.Redrive(ctx, ops.Action{Actor: rc.sess.user, Reason: "dry run"}, of, ops.RedriveOptions{DryRun: true})
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	d.Previewed, d.Preview = true, outs
	s.render(w, r, http.StatusOK, "redrive.html", s.pd(rc, "Bulk redrive", "redrive", d))
}

type lanesData struct {
	Topic, Key string
	Lanes      []ops.Lane
}

func (s *server) lanes(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	d := lanesData{Topic: strings.TrimSpace(r.URL.Query().Get("topic")), Key: strings.TrimSpace(r.URL.Query().Get("key"))}
	lanes, err := s.store.Lanes(ctx, d.Topic, d.Key, 500)
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	d.Lanes = lanes
	s.render(w, r, http.StatusOK, "lanes.html", s.pd(rc, "Lanes", "lanes", d))
}

type auditData struct {
	Actor, Action, Since string
	Err                  string
	Entries              []ops.AuditEntry
}

func (s *server) audit(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	q := r.URL.Query()
	d := auditData{Actor: strings.TrimSpace(q.Get("actor")), Action: strings.TrimSpace(q.Get("action")), Since: strings.TrimSpace(q.Get("since"))}
	since, err := parseWhen(d.Since, time.Now())
	if err != nil {
		d.Err = "since: " + err.Error()
		s.render(w, r, http.StatusBadRequest, "audit.html", s.pd(rc, "Audit log", "audit", d))
		return
	}
	limit := 200
	if n, err := strconv.Atoi(q.Get("limit")); err == nil && n > 0 {
		limit = min(n, 5000)
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	d.Entries, err = s.store.Audit(ctx, d.Actor, d.Action, since, limit)
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	s.render(w, r, http.StatusOK, "audit.html", s.pd(rc, "Audit log", "audit", d))
}

type systemData struct {
	Stats  *ops.Stats
	Owners map[string][]int
}

func (s *server) system(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	st, err := s.store.Stats(ctx)
	if err != nil {
		s.internalError(w, r, rc, err)
		return
	}
	d := systemData{Stats: st, Owners: map[string][]int{}}
	for _, p := range st.Partitions {
		d.Owners[p.Owner] = append(d.Owners[p.Owner], p.Partition)
	}
	p := s.pd(rc, "Partitions and relays", "system", d)
	p.Refresh = 30
	s.render(w, r, http.StatusOK, "system.html", p)
}

type traceData struct {
	Key, Event, Correlation string
	Err                     string
	Asked                   bool
	Entries                 []ops.TraceEntry
}

func (s *server) trace(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	q := r.URL.Query()
	d := traceData{Key: strings.TrimSpace(q.Get("key")), Event: strings.TrimSpace(q.Get("event")),
		Correlation: strings.TrimSpace(q.Get("correlation"))}
	n := 0
	for _, v := range []string{d.Key, d.Event, d.Correlation} {
		if v != "" {
			n++
		}
	}
	if n == 0 {
		s.render(w, r, http.StatusOK, "trace.html", s.pd(rc, "Trace", "trace", d))
		return
	}
	d.Asked = true
	if n > 1 {
		d.Err = "give exactly one of key, event id or correlation id"
		s.render(w, r, http.StatusBadRequest, "trace.html", s.pd(rc, "Trace", "trace", d))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	entries, err := s.store.Trace(ctx, ops.TraceQuery{Key: d.Key, EventID: d.Event, Correlation: d.Correlation})
	if err != nil {
		if d.Event != "" && strings.Contains(err.Error(), "not an event id") {
			d.Err = "event: not an event id (a UUID)"
			s.render(w, r, http.StatusBadRequest, "trace.html", s.pd(rc, "Trace", "trace", d))
			return
		}
		s.internalError(w, r, rc, err)
		return
	}
	d.Entries = entries
	s.render(w, r, http.StatusOK, "trace.html", s.pd(rc, "Trace", "trace", d))
}
