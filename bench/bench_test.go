package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"
)

// TestQuickMode runs the smoke mode (go run . -events 2000 -quick) against
// the local services, so that `go test ./...` in bench/ proves the tool
// still builds against outboxkit and still measures every scenario.
func TestQuickMode(t *testing.T) {
	if testing.Short() {
		t.Skip("needs PostgreSQL and RabbitMQ; skipped with -short")
	}
	o, err := parseFlags([]string{"-events", "2000", "-quick", "-out", ""}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	if err := run(ctx, o, &out, tlogWriter{t}); err != nil {
		t.Fatal(err)
	}
	t.Logf("quick mode took %s", time.Since(start).Round(time.Millisecond))
	report := out.String()
	for _, want := range []string{
		"## 1. Drain to Kafka", "watermill-sql v3 forwarder", "bare SQL claim + mark", "outboxkit relay + relay/kafka",
		"## 2. RabbitMQ with publisher confirms", "bare amqp091-go publisher", "outboxkit relay + relay/rabbitmq",
		"## 3. Latency at 1,000 events/s", "## Goals",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestWorkloadPayloads(t *testing.T) {
	evs := workload(500, 10, 100)
	keys := map[string]bool{}
	for i, ev := range evs {
		if len(ev.payload) != 100 {
			t.Fatalf("event %d: payload is %d bytes, want 100", i, len(ev.payload))
		}
		if !json.Valid(ev.payload) {
			t.Fatalf("event %d: payload is not JSON: %s", i, ev.payload)
		}
		keys[ev.key] = true
	}
	if len(keys) != 10 {
		t.Errorf("%d distinct keys, want 10", len(keys))
	}
	again := workload(500, 10, 100)
	for i := range evs {
		if evs[i].key != again[i].key || !bytes.Equal(evs[i].payload, again[i].payload) {
			t.Fatalf("workload is not deterministic at event %d", i)
		}
	}
}

func TestPercentiles(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	p50, p90, p99, pmax := percentiles(d)
	if p50 != 50*time.Millisecond || p90 != 90*time.Millisecond || p99 != 99*time.Millisecond || pmax != 100*time.Millisecond {
		t.Errorf("percentiles = %v %v %v %v, want 50ms 90ms 99ms 100ms", p50, p90, p99, pmax)
	}
	if median([]float64{3, 1, 2}) != 2 || median([]float64{4, 1, 2, 3}) != 2.5 {
		t.Error("median is wrong")
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-tuned", "1000/4", "-quick"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.tuned.batch != 1000 || o.tuned.workers != 4 || o.reps != 1 || o.out != "" || o.latencyDuration != 2*time.Second {
		t.Errorf("unexpected options %+v", o)
	}
	if !o.wants("relay") || o.wants("tune") {
		t.Error("-scenarios all must include relay and exclude tune")
	}
	for _, bad := range [][]string{{"-tuned", "x"}, {"-events", "0"}, {"extra"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted bad input", bad)
		}
	}
}
